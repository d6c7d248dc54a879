# Pretrained weights. For the demo: contrastive pretraining of the tiny CLIP on the demo world.


rule demo_pretrain:
    input:
        world=WORLD,
    output:
        directory(MODEL_DIR),
    params:
        code=CODE["demo_pretrain"],
        pretraining=config["demo"]["pretraining"],
    # The weights are reproducible for a given thread count; 2 is what the published figures used.
    threads: 2
    conda:
        "../envs/complora.yaml"
    log:
        "logs/models/demo_pretrain.log",
    shell:
        "complora demo-pretrain --data {input.world} --out {output} --threads {threads}"
        " --seed {params.pretraining[seed]} --steps {params.pretraining[steps]}"
        " --batch-size {params.pretraining[batch_size]} --pool-size {params.pretraining[pool_size]}"
        " > {log} 2>&1"
