# Evaluation caches: each test split decoded once, by open_clip's evaluation transform for the backbone,
# into uint8 pixels that every zero-shot and training job on that dataset streams from.


rule eval_cache:
    input:
        data=lambda wildcards: ancient(dataset_dir(wildcards.dataset)),
        model=ancient(MODEL_DIR),
        redo=lambda wildcards: redo_marker(eval_cache_dir(wildcards.dataset)),
    output:
        cache=directory(eval_cache_dir("{dataset}")),
        seal=str(seal_path(eval_cache_dir("{dataset}"))),
    params:
        code=CODE["eval_cache"],
        libraries=IMAGE_LIBRARIES,
        model=shlex.quote(BACKBONE),
        checkpoint=shlex.quote(CHECKPOINT),
        root=lambda wildcards: shlex.quote(dataset_root(wildcards.dataset)),
        split_file=lambda wildcards: shlex.quote(dataset_split_file(wildcards.dataset)),
        request=lambda wildcards: request_flag(eval_cache_request(wildcards.dataset)),
    # Decoding threads; capped by --cores locally, a profile's set-threads on a cluster.
    threads: 8
    conda:
        "../envs/complora.yaml"
    log:
        "logs/evalcache/{dataset}.log",
    shell:
        "complora eval-cache --dataset {wildcards.dataset} --data {params.root} --split-file {params.split_file}"
        " --model {params.model} --pretrained {params.checkpoint} --threads {threads} --out {output.cache:q}"
        " > {log} 2>&1 && complora-seal {output.cache:q} {params.request}"
