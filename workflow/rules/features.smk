# Feature-level methods: each dataset's feature store built once (frozen towers), then one job per (dataset,
# method) fitting the method on every k-shot split's stored features and classifying the test features.


rule features:
    input:
        data=lambda wildcards: ancient(dataset_dir(wildcards.dataset)),
        model=ancient(MODEL_DIR),
        eval_cache=lambda wildcards: ancient_all(eval_caches([wildcards.dataset])),
        splits=lambda wildcards: ancient_all(few_shot_splits(wildcards.dataset)),
        redo=lambda wildcards: redo_marker(features_dir(wildcards.dataset)),
    output:
        store=feature_files("{dataset}"),
        seal=str(seal_path(features_dir("{dataset}"))),
    params:
        code=CODE["features"],
        libraries=IMAGE_LIBRARIES,
        model=shlex.quote(BACKBONE),
        checkpoint=shlex.quote(CHECKPOINT),
        root=lambda wildcards: shlex.quote(dataset_root(wildcards.dataset)),
        split_file=lambda wildcards: shlex.quote(dataset_split_file(wildcards.dataset)),
        eval_cache=lambda wildcards: eval_cache_flag(wildcards.dataset),
        few_shot=lambda wildcards, input: repeated_flag("--few-shot", input.splits),
        templates=lambda wildcards: repeated_flag(
            "--template", dict.fromkeys([config["prompt_template"], *coop_templates(wildcards.dataset)])
        ),
        views=" ".join(f"--views {aug}={count}" for aug, count in STORE_VIEWS.items()),
        out=lambda wildcards: shlex.quote(features_dir(wildcards.dataset)),
        device=device_flag(ZERO_SHOT_GPUS),
        request=lambda wildcards: request_flag(features_request(wildcards.dataset)),
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
        " --out {params.out} > {log} 2>&1 && complora-seal {params.out} {params.request}"


rule fit:
    wildcard_constraints:
        method=name_pattern(FEATURE_METHODS),
    input:
        features=lambda wildcards: ancient_all(feature_files(wildcards.dataset)),
        splits=lambda wildcards: ancient_all(few_shot_splits(wildcards.dataset)),
        zero_shot=lambda wildcards: ancient(zero_shot_metrics(wildcards.dataset)),
        model=ancient(MODEL_DIR),
        redo=lambda wildcards: fit_redo_markers(wildcards.dataset, wildcards.method),
    output:
        expand(f"{RESULTS}/runs/{{{{dataset}}}}/{{{{method}}}}/shots{{shots}}/seed{{seed}}/metrics.json", shots=SHOTS, seed=SEEDS),
    params:
        code=lambda wildcards: FIT_CODE[wildcards.method],
        family=lambda wildcards: METHODS[wildcards.method].family,
        settings=lambda wildcards: shlex.quote(json.dumps(METHODS[wildcards.method].settings, sort_keys=True)),
        model=shlex.quote(BACKBONE),
        checkpoint=shlex.quote(CHECKPOINT),
        root=lambda wildcards: shlex.quote(dataset_root(wildcards.dataset)),
        split_file=lambda wildcards: shlex.quote(dataset_split_file(wildcards.dataset)),
        few_shot=lambda wildcards, input: repeated_flag("--few-shot", input.splits),
        template=shlex.quote(config["prompt_template"]),
        coop=lambda wildcards: repeated_flag("--coop-template", coop_templates(wildcards.dataset)),
        features=lambda wildcards: shlex.quote(features_dir(wildcards.dataset)),
        out_root=lambda wildcards: shlex.quote(f"{RESULTS}/runs/{wildcards.dataset}/{wildcards.method}"),
        # One per split, in the order of `splits`.
        requests=lambda wildcards: " ".join(
            request_flag(run_request(wildcards.dataset, wildcards.method, k, s)) for k in SHOTS for s in SEEDS
        ),
    threads: 1
    conda:
        "../envs/complora.yaml"
    log:
        f"{RESULTS}/runs/{{dataset}}/{{method}}/fit.log",
    shell:
        "complora fit --dataset {wildcards.dataset} --data {params.root} --split-file {params.split_file}"
        " --family {params.family} --name {wildcards.method} --settings {params.settings}"
        " --model {params.model} --pretrained {params.checkpoint} --model-metadata {input.model:q}/metadata.json"
        " --features {params.features} {params.few_shot} --zero-shot {input.zero_shot:q}"
        " --template {params.template} {params.coop} {params.requests} --threads {threads}"
        " --out-root {params.out_root} > {log:q} 2>&1"
