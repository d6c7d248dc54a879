# Datasets: the demo world (generated), the paper's benchmarks (downloaded or found locally), custom ones.


rule demo_world:
    input:
        request=artifact_request_file(world_job()),
    output:
        world=directory(WORLD),
        answered=world_job()[2],
    conda:
        "../envs/complora.yaml"
    params:
        code=CODE["demo_world"],
        world=config["demo"]["world"],
    log:
        "logs/data/demo_world.log",
    shell:
        "complora demo-data --out {output.world} --seed {params.world[seed]}"
        " --train-per-class {params.world[train_per_class]} --val-per-class {params.world[val_per_class]}"
        " --test-per-class {params.world[test_per_class]} --image-size {params.world[image_size]}"
        " > {log} 2>&1 && cp {input.request} {output.answered}"


rule dataset:
    input:
        request=lambda wildcards: artifact_request_file(dataset_job(wildcards.dataset)),
    output:
        data=directory("resources/data/{dataset}"),
        answered="resources/data/{dataset}.request.json",
    wildcard_constraints:
        dataset=name_pattern(REGISTRY),
    conda:
        "../envs/complora.yaml"
    params:
        code=CODE["dataset"],
        cache=config["data"]["cache"],
        root=f"--data-root {config['data']['root']}" if config["data"]["root"] else "",
        registry=f"--registry {config['data']['registry']}" if config["data"]["registry"] else "",
    log:
        "logs/data/{dataset}.log",
    shell:
        "complora dataset --name {wildcards.dataset} --out {output.data} --cache {params.cache}"
        " {params.root} {params.registry} > {log} 2>&1 && cp {input.request} {output.answered}"


rule custom_dataset:
    input:
        request=lambda wildcards: artifact_request_file(dataset_job(wildcards.dataset)),
    output:
        data=directory("resources/data/{dataset}"),
        answered="resources/data/{dataset}.request.json",
    wildcard_constraints:
        dataset=name_pattern(CUSTOM),
    conda:
        "../envs/complora.yaml"
    params:
        code=CODE["dataset"],
        images=lambda wildcards: CUSTOM[wildcards.dataset]["images"],
        options=lambda wildcards: " ".join(
            f"--{flag} {CUSTOM[wildcards.dataset][key]}"
            for flag, key in (("split-file", "split_file"), ("classnames", "classnames"), ("seed", "seed"))
            if CUSTOM[wildcards.dataset][key] is not None
        ),
    log:
        "logs/data/{dataset}.log",
    shell:
        "complora custom-dataset --name {wildcards.dataset} --images {params.images} --out {output.data}"
        " {params.options} > {log} 2>&1 && cp {input.request} {output.answered}"
