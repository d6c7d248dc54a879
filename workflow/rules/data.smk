# Datasets. The demo world stands in for downloading: six classification tasks in CoOp form.


rule demo_world:
    output:
        directory(WORLD),
    params:
        code=CODE["demo_world"],
        world=config["demo"]["world"],
    conda:
        "../envs/complora.yaml"
    log:
        "logs/data/demo_world.log",
    shell:
        "complora demo-data --out {output} --seed {params.world[seed]}"
        " --train-per-class {params.world[train_per_class]} --val-per-class {params.world[val_per_class]}"
        " --test-per-class {params.world[test_per_class]} --image-size {params.world[image_size]}"
        " > {log} 2>&1"
