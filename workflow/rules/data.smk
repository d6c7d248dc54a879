# Datasets: the demo world (generated), the paper's benchmarks (downloaded or found locally), custom ones.
# Every artifact job seals what it made as its last step (complora-seal: the request and each file's sha256).


rule demo_world:
    input:
        redo=redo_marker(WORLD),
    output:
        world=directory(WORLD),
        seal=str(seal_path(WORLD)),
    conda:
        "../envs/complora.yaml"
    params:
        code=CODE["demo_world"],
        world=config["demo"]["world"],
        request=request_flag(world_request()),
    log:
        "logs/data/demo_world.log",
    shell:
        "complora demo-data --out {output.world} --seed {params.world[seed]}"
        " --train-per-class {params.world[train_per_class]} --val-per-class {params.world[val_per_class]}"
        " --test-per-class {params.world[test_per_class]} --image-size {params.world[image_size]}"
        " > {log} 2>&1 && complora-seal {output.world} {params.request}"


rule dataset:
    input:
        redo=lambda wildcards: redo_marker(dataset_dir(wildcards.dataset)),
    output:
        data=directory("resources/data/{dataset}"),
        seal="resources/data/{dataset}.request.json",
    wildcard_constraints:
        dataset=name_pattern(REGISTRY),
    conda:
        "../envs/complora.yaml"
    params:
        code=CODE["dataset"],
        cache=shlex.quote(config["data"]["cache"]),
        root=f"--data-root {shlex.quote(config['data']['root'])}" if config["data"]["root"] else "",
        registry=f"--registry {shlex.quote(config['data']['registry'])}" if config["data"]["registry"] else "",
        request=lambda wildcards: request_flag(dataset_request(wildcards.dataset)),
    log:
        "logs/data/{dataset}.log",
    shell:
        "complora dataset --name {wildcards.dataset} --out {output.data} --cache {params.cache}"
        " {params.root} {params.registry} > {log} 2>&1 && complora-seal {output.data} {params.request}"


rule custom_dataset:
    input:
        redo=lambda wildcards: redo_marker(dataset_dir(wildcards.dataset)),
    output:
        data=directory("resources/data/{dataset}"),
        seal="resources/data/{dataset}.request.json",
    wildcard_constraints:
        dataset=name_pattern(CUSTOM),
    conda:
        "../envs/complora.yaml"
    params:
        code=CODE["dataset"],
        images=lambda wildcards: shlex.quote(CUSTOM[wildcards.dataset]["images"]),
        options=lambda wildcards: " ".join(
            f"--{flag} {shlex.quote(str(CUSTOM[wildcards.dataset][key]))}"
            for flag, key in (("split-file", "split_file"), ("classnames", "classnames"), ("seed", "seed"))
            if CUSTOM[wildcards.dataset][key] is not None
        ),
        request=lambda wildcards: request_flag(dataset_request(wildcards.dataset)),
    log:
        "logs/data/{dataset}.log",
    shell:
        "complora custom-dataset --name {wildcards.dataset} --images {params.images} --out {output.data}"
        " {params.options} > {log} 2>&1 && complora-seal {output.data} {params.request}"


# A marker that makes Snakemake redo a stale job (common.smk); removed when the run ends.
rule redo:
    output:
        temp(f"{REDO_DIR}/{{made}}.redo"),
    wildcard_constraints:
        made=".+",
    localrule: True
    conda:
        "../envs/complora.yaml"
    log:
        f"logs/redo/{{made}}.log",
    shell:
        "touch {output} 2> {log:q}"
