# Pretrained weights: for the demo, contrastive pretraining of the tiny CLIP on the demo world; otherwise an
# open_clip tag (downloaded once) or a local checkpoint, stored as one artifact.


if DEMO_WEIGHTS:

    rule demo_pretrain:
        input:
            world=ancient(WORLD),
            redo=redo_marker(MODEL_DIR),
        output:
            model=directory(MODEL_DIR),
            seal=str(seal_path(MODEL_DIR)),
        params:
            code=CODE["demo_pretrain"],
            pretraining=config["demo"]["pretraining"],
            request=request_flag(model_request()),
        # The weights are reproducible for a given thread count; 2 is what the published figures used.
        threads: 2
        conda:
            "../envs/complora.yaml"
        log:
            "logs/models/demo_pretrain.log",
        shell:
            "complora demo-pretrain --data {input.world} --out {output.model:q} --threads {threads}"
            " --seed {params.pretraining[seed]} --steps {params.pretraining[steps]}"
            " --batch-size {params.pretraining[batch_size]} --pool-size {params.pretraining[pool_size]}"
            " > {log} 2>&1 && complora-seal {output.model:q} {params.request}"

else:

    rule pretrained_weights:
        input:
            redo=redo_marker(MODEL_DIR),
        output:
            model=directory(MODEL_DIR),
            seal=str(seal_path(MODEL_DIR)),
        conda:
            "../envs/complora.yaml"
        params:
            code=CODE["weights"],
            model=shlex.quote(BACKBONE),
            pretrained=shlex.quote(PRETRAINED),
            request=request_flag(model_request()),
        log:
            f"logs/models/{BACKBONE_ID}.log",
        shell:
            "complora weights --model {params.model} --pretrained {params.pretrained} --out {output.model:q}"
            " --cache resources/open_clip_cache > {log} 2>&1 && complora-seal {output.model:q} {params.request}"
