# Tables, plots and the summary, from exactly the runs of the configured grid.


rule aggregate:
    input:
        metrics=TABLE_METRICS,
        requests=REQUESTS,
        model=MODEL_DIR,
        reference=[config["reference_table"]] if config["reference_table"] else [],
    output:
        AGGREGATE_OUTPUTS,
    conda:
        "../envs/complora.yaml"
    params:
        code=CODE["aggregate"],
        reference=lambda wildcards, input: f"--reference {input.reference}" if input.reference else "",
    log:
        "logs/aggregate.log",
    shell:
        "complora aggregate {input.metrics} --requests {input.requests} --model-metadata {input.model}/metadata.json"
        " {params.reference} --out results > {log} 2>&1"
