# The study's cells: zero-shot evaluation per dataset, and one train+eval job per (dataset, method, shots, seed)
# for the adapter and the prompt-learning methods.


rule zero_shot:
    input:
        data=lambda wildcards: ancient(dataset_dir(wildcards.dataset)),
        model=ancient(MODEL_DIR),
        eval_cache=lambda wildcards: ancient_all(eval_caches([wildcards.dataset])),
        redo=lambda wildcards: redo_marker(str(Path(zero_shot_metrics(wildcards.dataset)).parent)),
    output:
        metrics=zero_shot_metrics("{dataset}"),
    params:
        code=CODE["evaluate"],
        model=shlex.quote(BACKBONE),
        checkpoint=shlex.quote(CHECKPOINT),
        root=lambda wildcards: shlex.quote(dataset_root(wildcards.dataset)),
        split_file=lambda wildcards: shlex.quote(dataset_split_file(wildcards.dataset)),
        template=shlex.quote(config["prompt_template"]),
        coop=lambda wildcards: coop_template_flags(wildcards.dataset),
        eval_cache=lambda wildcards: eval_cache_flag(wildcards.dataset),
        device=device_flag(ZERO_SHOT_GPUS),
        protocol=PROTOCOL,
        request=lambda wildcards: request_flag(zero_shot_request(wildcards.dataset)),
    threads: 1
    resources:
        gpu=ZERO_SHOT_GPUS,
        # Runtime settings (a profile's set-resources may change them), not parameters: on the CPU they leave
        # the results alone; on a GPU another batch shape may move bf16 features by a rounding step.
        eval_batch_size=256,
    conda:
        "../envs/complora.yaml"
    log:
        f"{RESULTS}/runs/{{dataset}}/zeroshot/evaluate.log",
    shell:
        "complora evaluate --dataset {wildcards.dataset} --data {params.root} --split-file {params.split_file}"
        " --model {params.model} --pretrained {params.checkpoint} --template {params.template}"
        " {params.coop} {params.eval_cache} --eval-batch-size {resources.eval_batch_size} {params.device}"
        " --threads {threads} --protocol {params.protocol} {params.request} --out {output.metrics:q} > {log:q} 2>&1"


rule train:
    wildcard_constraints:
        method=name_pattern(ADAPTER_METHODS),
    input:
        unpack(train_inputs),
    output:
        metrics=f"{RESULTS}/runs/{{dataset}}/{{method}}/shots{{shots}}/seed{{seed}}/metrics.json",
        adapter=directory(f"{RESULTS}/runs/{{dataset}}/{{method}}/shots{{shots}}/seed{{seed}}/adapter"),
        curve=f"{RESULTS}/runs/{{dataset}}/{{method}}/shots{{shots}}/seed{{seed}}/curve.csv",
    params:
        code=CODE["evaluate"],
        model=shlex.quote(BACKBONE),
        checkpoint=shlex.quote(CHECKPOINT),
        root=lambda wildcards: shlex.quote(dataset_root(wildcards.dataset)),
        split_file=lambda wildcards: shlex.quote(dataset_split_file(wildcards.dataset)),
        family=lambda wildcards: METHODS[wildcards.method].family,
        iterations=lambda wildcards: int(wildcards.shots)
        * METHODS[wildcards.method].settings["iterations_per_shot"],
        hyperparameters=lambda wildcards: method_flags(wildcards.method),
        template=shlex.quote(config["prompt_template"]),
        zero_shot=lambda wildcards, input: repeated_flag("--zero-shot", input.zero_shot),
        projector=lambda wildcards, input: repeated_flag("--projector", [input.projector] if "projector" in input.keys() else []),
        out_dir=lambda wildcards, output: shlex.quote(str(Path(output.metrics).parent)),
        request=lambda wildcards: request_flag(
            run_request(wildcards.dataset, wildcards.method, int(wildcards.shots), int(wildcards.seed))
        ),
        eval_cache=lambda wildcards: eval_cache_flag(wildcards.dataset),
        device=device_flag(TRAINING_GPUS),
        compile=lambda wildcards, resources: "--compile" if resources.compile else "",
    threads: 1
    resources:
        gpu=TRAINING_GPUS,
        # Runtime settings (a profile's set-resources may change them), not parameters, so changing them
        # reruns nothing: checkpoints and where the originals are decoded leave the results alone, and so
        # does the evaluation batch on the CPU (on a GPU it may move bf16 features by a rounding step).
        checkpoint_every=100,
        eval_batch_size=256,
        train_memory_mib=2048,
        # 1: the towers through torch.compile (on a GPU, where benchmarks/README.md measured what it gains).
        compile=0,
    conda:
        "../envs/complora.yaml"
    log:
        f"{RESULTS}/runs/{{dataset}}/{{method}}/shots{{shots}}/seed{{seed}}/train.log",
    shell:
        "complora train --dataset {wildcards.dataset} --data {params.root} --split-file {params.split_file}"
        " --few-shot {input.split:q} --seed {wildcards.seed} --method {params.family} --name {wildcards.method}"
        " --model {params.model} --pretrained {params.checkpoint} {params.zero_shot} {params.projector}"
        " --iterations {params.iterations} {params.hyperparameters} --template {params.template}"
        " {params.eval_cache} --eval-batch-size {resources.eval_batch_size}"
        " --train-memory-mib {resources.train_memory_mib}"
        " {params.device} {params.compile} --threads {threads} --checkpoint-every {resources.checkpoint_every}"
        " {params.request} --out-dir {params.out_dir} > {log:q} 2>&1"


rule prompt:
    wildcard_constraints:
        method=name_pattern(PROMPT_METHODS),
    input:
        unpack(prompt_inputs),
    output:
        metrics=f"{RESULTS}/runs/{{dataset}}/{{method}}/shots{{shots}}/seed{{seed}}/metrics.json",
        prompt=f"{RESULTS}/runs/{{dataset}}/{{method}}/shots{{shots}}/seed{{seed}}/prompt.safetensors",
        curve=f"{RESULTS}/runs/{{dataset}}/{{method}}/shots{{shots}}/seed{{seed}}/curve.csv",
    params:
        code=CODE["prompt"],
        model=shlex.quote(BACKBONE),
        checkpoint=shlex.quote(CHECKPOINT),
        root=lambda wildcards: shlex.quote(dataset_root(wildcards.dataset)),
        split_file=lambda wildcards: shlex.quote(dataset_split_file(wildcards.dataset)),
        family=lambda wildcards: METHODS[wildcards.method].family,
        settings=lambda wildcards: shlex.quote(json.dumps(METHODS[wildcards.method].settings, sort_keys=True)),
        template=shlex.quote(config["prompt_template"]),
        coop=lambda wildcards: repeated_flag("--coop-template", coop_templates(wildcards.dataset)),
        out_dir=lambda wildcards, output: shlex.quote(str(Path(output.metrics).parent)),
        request=lambda wildcards: request_flag(
            run_request(wildcards.dataset, wildcards.method, int(wildcards.shots), int(wildcards.seed))
        ),
        eval_cache=lambda wildcards: eval_cache_flag(wildcards.dataset),
        device=device_flag(TRAINING_GPUS),
    threads: 1
    resources:
        gpu=TRAINING_GPUS,
        # Runtime settings, as for the train rule.
        checkpoint_every=100,
        eval_batch_size=256,
        train_memory_mib=2048,
    conda:
        "../envs/complora.yaml"
    log:
        f"{RESULTS}/runs/{{dataset}}/{{method}}/shots{{shots}}/seed{{seed}}/prompt.log",
    shell:
        "complora prompt --dataset {wildcards.dataset} --data {params.root} --split-file {params.split_file}"
        " --few-shot {input.split:q} --seed {wildcards.seed} --family {params.family} --name {wildcards.method}"
        " --settings {params.settings} --model {params.model} --pretrained {params.checkpoint}"
        " --zero-shot {input.zero_shot:q} --template {params.template} {params.coop} {params.eval_cache}"
        " --eval-batch-size {resources.eval_batch_size} --train-memory-mib {resources.train_memory_mib}"
        " {params.device} --threads {threads} --checkpoint-every {resources.checkpoint_every}"
        " {params.request} --out-dir {params.out_dir} > {log:q} 2>&1"
