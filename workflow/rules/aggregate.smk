# Tables, comparisons, plots and the summary, from exactly the runs of the configured grid (each checked
# against what the config asks of it today). The outputs marked report() make `snakemake --report`.


rule aggregate:
    input:
        metrics=TABLE_METRICS,
        requests=REQUESTS,
        # Ancient: the tables' request names the published numbers by content; the weights are checked run by
        # run. The runs' metrics are not ancient, so the tables follow every run redone.
        model=ancient(MODEL_DIR),
        reference=[ancient(config["reference_table"])] if config["reference_table"] else [],
        request=artifact_request_file(aggregate_job()),
    output:
        runs_csv=f"{RESULTS}/tables/runs.csv",
        runs=table_report(f"{RESULTS}/tables/runs.html", "runs_table", "Runs", "every run"),
        accuracy_csv=f"{RESULTS}/tables/accuracy.csv",
        accuracy_md=f"{RESULTS}/tables/accuracy.md",
        accuracy=table_report(f"{RESULTS}/tables/accuracy.html", "accuracy_table", "Accuracy", "top-1 table"),
        retention_csv=f"{RESULTS}/tables/retention.csv",
        retention_md=f"{RESULTS}/tables/retention.md",
        retention=table_report(f"{RESULTS}/tables/retention.html", "retention_table", "Retention", "retention table"),
        comparisons_csv=f"{RESULTS}/tables/comparisons.csv",
        comparisons=table_report(
            f"{RESULTS}/tables/comparisons.html", "comparisons_table", "Comparisons", f"paired vs {COMPARE_TO}"
        ),
        accuracy_vs_shots=figure_report(
            f"{RESULTS}/plots/accuracy_vs_shots.png", "accuracy_vs_shots", "Accuracy", "accuracy vs shots"
        ),
        by_dataset=[
            figure_report(f"{RESULTS}/plots/accuracy_{d}.png", "accuracy_by_dataset", "Accuracy", "accuracy vs shots", d)
            for d in DATASETS
        ],
        accuracy_vs_retention=figure_report(
            f"{RESULTS}/plots/accuracy_vs_retention.png", "accuracy_vs_retention", "Comparisons", "accuracy vs retention"
        ),
        retention_vs_shots=figure_report(
            f"{RESULTS}/plots/retention.png", "retention_vs_shots", "Retention", "retention vs shots"
        ),
        training_curves=[
            figure_report(
                f"{RESULTS}/plots/training_curves.png", "training_curves", "Runs", "training loss", "all", "largest"
            )
        ]
        if ADAPTER_METHODS or PROMPT_METHODS
        else [],
        base_to_new=[f"{RESULTS}/tables/base_to_new.{kind}" for kind in ("csv", "md")]
        + [table_report(f"{RESULTS}/tables/base_to_new.html", "base_to_new_table", "Base-to-new", "base-to-new table")]
        if BASE_TO_NEW
        else [],
        summary=f"{RESULTS}/summary.md",
        metrics=f"{RESULTS}/metrics.json",
    conda:
        "../envs/complora.yaml"
    params:
        code=CODE["aggregate"],
        reference=lambda wildcards, input: f"--reference {input.reference}" if input.reference else "",
        compare=f"--compare-to {COMPARE_TO} --level {config['comparisons']['level']}",
        # Its record is no output: dated to the epoch while answered, it would make the tables look older
        # than the runs they are made of (the runs' metrics are the tables' inputs, not ancient).
        answered=aggregate_job()[2],
        out=lambda wildcards, output: Path(output.summary).parent,
    log:
        f"logs/{split_key()}aggregate.log",
    shell:
        "complora aggregate {input.metrics} --requests {input.requests} --model-metadata {input.model}/metadata.json"
        " {params.reference} {params.compare} --out {params.out} > {log} 2>&1 && cp {input.request} {params.answered}"
