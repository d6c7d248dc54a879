# The principal singular bases of every matrix Comp-LoRA adapts: computed once per backbone, shared by all runs.


rule projector:
    input:
        model=ancient(MODEL_DIR),
        redo=redo_marker(PROJECTOR),
    output:
        projector=PROJECTOR,
        stats=PROJECTOR.replace(".safetensors", ".stats.json"),
        seal=str(seal_path(PROJECTOR)),
    params:
        code=CODE["projector"],
        model=shlex.quote(BACKBONE),
        checkpoint=shlex.quote(CHECKPOINT),
        k_max=PROJECTOR_K,
        targets=" ".join(PROJECTOR_TARGETS),
        towers=" ".join(PROJECTOR_TOWERS),
        request=request_flag(projector_request()),
    conda:
        "../envs/complora.yaml"
    log:
        f"logs/projectors/{BACKBONE_ID}.log",
    shell:
        "complora projector --model {params.model} --pretrained {params.checkpoint} --k-max {params.k_max}"
        " --targets {params.targets} --towers {params.towers} --out {output.projector:q} > {log:q} 2>&1"
        " && complora-seal {output.projector:q} {params.request}"
