# Tables, plots and the summary, from exactly the runs of the configured grid.


rule aggregate:
    input:
        TABLE_METRICS,
    output:
        AGGREGATE_OUTPUTS,
    conda:
        "../envs/complora.yaml"
    params:
        code=CODE["aggregate"],
    log:
        "logs/aggregate.log",
    shell:
        "complora aggregate {input} --out results > {log} 2>&1"
