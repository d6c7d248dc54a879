# Evaluation caches: each test split decoded once, by open_clip's evaluation transform for the backbone,
# into uint8 pixels that every zero-shot and training job on that dataset streams from.


rule eval_cache:
    input:
        data=lambda wildcards: ancient(dataset_dir(wildcards.dataset)),
        model=ancient(MODEL_DIR),
        records=lambda wildcards: upstream_records(wildcards.dataset),
        request=lambda wildcards: artifact_request_file(eval_cache_job(wildcards.dataset)),
    output:
        cache=directory(eval_cache_dir("{dataset}")),
        answered=f"{eval_cache_dir('{dataset}')}.request.json",
    params:
        code=CODE["eval_cache"],
        libraries=IMAGE_LIBRARIES,
        model=BACKBONE,
        checkpoint=CHECKPOINT,
        root=lambda wildcards: dataset_root(wildcards.dataset),
        split_file=lambda wildcards: dataset_split_file(wildcards.dataset),
    # Decoding threads; capped by --cores locally, a profile's set-threads on a cluster.
    threads: 8
    conda:
        "../envs/complora.yaml"
    log:
        "logs/evalcache/{dataset}.log",
    shell:
        "complora eval-cache --dataset {wildcards.dataset} --data {params.root} --split-file {params.split_file}"
        " --model {params.model} --pretrained {params.checkpoint} --threads {threads} --out {output.cache}"
        " > {log} 2>&1 && cp {input.request} {output.answered}"
