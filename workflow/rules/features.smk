# Feature-level methods: each dataset's feature store built once (frozen towers), then one job per (dataset,
# method) fitting the method on every k-shot split's stored features and classifying the test features.


rule features:
    input:
        data=lambda wildcards: ancient(dataset_dir(wildcards.dataset)),
        model=ancient(MODEL_DIR),
        eval_cache=lambda wildcards: [ancient(path) for path in eval_caches([wildcards.dataset])],
        splits=lambda wildcards: [ancient(path) for path in few_shot_splits(wildcards.dataset)],
        records=lambda wildcards: upstream_records(wildcards.dataset, GRID, [wildcards.dataset]),
        request=lambda wildcards: artifact_request_file(features_job(wildcards.dataset)),
    output:
        store=feature_files("{dataset}"),
        answered=f"{features_dir('{dataset}')}.request.json",
    params:
        code=CODE["features"],
        libraries=IMAGE_LIBRARIES,
        model=BACKBONE,
        checkpoint=CHECKPOINT,
        root=lambda wildcards: dataset_root(wildcards.dataset),
        split_file=lambda wildcards: dataset_split_file(wildcards.dataset),
        eval_cache=lambda wildcards: eval_cache_flag(wildcards.dataset),
        few_shot=lambda wildcards, input: " ".join(f"--few-shot {path}" for path in input.splits),
        templates=lambda wildcards: " ".join(
            f"--template {shlex.quote(t)}"
            for t in dict.fromkeys([config["prompt_template"], *coop_templates(wildcards.dataset)])
        ),
        views=" ".join(f"--views {aug}={count}" for aug, count in STORE_VIEWS.items()),
        out=lambda wildcards: features_dir(wildcards.dataset),
        device=device_flag(ZERO_SHOT_GPUS),
    threads: 2
    resources:
        gpu=ZERO_SHOT_GPUS,
        eval_batch_size=256,
        train_memory_mib=2048,
    conda:
        "../envs/complora.yaml"
    log:
        f"logs/{split_key()}features/{{dataset}}.log",
    shell:
        "complora features --dataset {wildcards.dataset} --data {params.root} --split-file {params.split_file}"
        " --model {params.model} --pretrained {params.checkpoint} {params.eval_cache} {params.few_shot}"
        " {params.templates} {params.views} --eval-batch-size {resources.eval_batch_size}"
        " --train-memory-mib {resources.train_memory_mib} {params.device} --threads {threads}"
        " --out {params.out} > {log} 2>&1 && cp {input.request} {output.answered}"


rule fit:
    wildcard_constraints:
        method=name_pattern(FEATURE_METHODS),
    input:
        features=lambda wildcards: [ancient(path) for path in feature_files(wildcards.dataset)],
        splits=lambda wildcards: [ancient(path) for path in few_shot_splits(wildcards.dataset)],
        zero_shot=lambda wildcards: ancient(zero_shot_metrics(wildcards.dataset)),
        model=ancient(MODEL_DIR),
        records=lambda wildcards: upstream_records(
            wildcards.dataset, GRID, zero_shot=[wildcards.dataset], features=True
        ),
        # One per split, in the order of `splits`.
        requests=lambda wildcards: [
            run_request_file(wildcards.dataset, wildcards.method, k, s) for k in SHOTS for s in SEEDS
        ],
    output:
        expand(f"{RESULTS}/runs/{{{{dataset}}}}/{{{{method}}}}/shots{{shots}}/seed{{seed}}/metrics.json", shots=SHOTS, seed=SEEDS),
    params:
        code=lambda wildcards: FIT_CODE[wildcards.method],
        family=lambda wildcards: METHODS[wildcards.method].family,
        settings=lambda wildcards: json.dumps(METHODS[wildcards.method].settings, sort_keys=True),
        model=BACKBONE,
        checkpoint=CHECKPOINT,
        root=lambda wildcards: dataset_root(wildcards.dataset),
        split_file=lambda wildcards: dataset_split_file(wildcards.dataset),
        few_shot=lambda wildcards, input: " ".join(f"--few-shot {path}" for path in input.splits),
        template=config["prompt_template"],
        coop=lambda wildcards: " ".join(f"--coop-template {shlex.quote(t)}" for t in coop_templates(wildcards.dataset)),
        features=lambda wildcards: features_dir(wildcards.dataset),
        out_root=lambda wildcards: f"{RESULTS}/runs/{wildcards.dataset}/{wildcards.method}",
        requests=lambda wildcards, input: " ".join(f"--request {path}" for path in input.requests),
    threads: 1
    conda:
        "../envs/complora.yaml"
    log:
        f"{RESULTS}/runs/{{dataset}}/{{method}}/fit.log",
    shell:
        "complora fit --dataset {wildcards.dataset} --data {params.root} --split-file {params.split_file}"
        " --family {params.family} --name {wildcards.method} --settings {params.settings:q}"
        " --model {params.model} --pretrained {params.checkpoint} --model-metadata {input.model}/metadata.json"
        " --features {params.features} {params.few_shot} --zero-shot {input.zero_shot}"
        " --template {params.template:q} {params.coop} {params.requests} --threads {threads}"
        " --out-root {params.out_root} > {log} 2>&1"
