# The principal singular bases of every matrix Comp-LoRA adapts: computed once per backbone, shared by all runs.


rule projector:
    input:
        model=ancient(MODEL_DIR),
        records=upstream_records(),
        request=artifact_request_file(projector_job()),
    output:
        projector=PROJECTOR,
        stats=PROJECTOR.replace(".safetensors", ".stats.json"),
        answered=projector_job()[2],
    params:
        code=CODE["projector"],
        model=BACKBONE,
        checkpoint=CHECKPOINT,
        k_max=PROJECTOR_K,
        targets=" ".join(PROJECTOR_TARGETS),
        towers=" ".join(PROJECTOR_TOWERS),
    conda:
        "../envs/complora.yaml"
    log:
        f"logs/projectors/{BACKBONE}.log",
    shell:
        "complora projector --model {params.model} --pretrained {params.checkpoint} --k-max {params.k_max}"
        " --targets {params.targets} --towers {params.towers} --out {output.projector} > {log} 2>&1"
        " && cp {input.request} {output.answered}"
