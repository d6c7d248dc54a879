# Tables, comparisons, plots and the summary, from exactly the runs of the configured grid (each checked
# against what the config asks of it today). The outputs marked report() make `snakemake --report`.


# Every run's request in one file (written when a job runs, never while parsing): what `complora aggregate`
# checks each run against, so that the tables never show a run made with other settings.
rule run_requests:
    input:
        redo=redo_marker(REQUESTS_FILE),
    output:
        REQUESTS_FILE,
    params:
        requests=STUDY_REQUESTS,
    localrule: True
    log:
        f"logs/{split_key()}run_requests.log",
    run:
        write_json(output[0], params.requests)


rule aggregate:
    input:
        metrics=ancient_all(TABLE_METRICS),
        requests=ancient(REQUESTS_FILE),
        model=ancient(MODEL_DIR),
        # The tables' request names the published numbers by content.
        reference=ancient_all([config["reference_table"]] if config["reference_table"] else []),
        redo=redo_marker(TABLES),
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
        seal=str(seal_path(TABLES)),
    conda:
        "../envs/complora.yaml"
    params:
        code=CODE["aggregate"],
        reference=lambda wildcards, input: repeated_flag("--reference", input.reference),
        compare=f"--compare-to {shlex.quote(COMPARE_TO)} --level {config['comparisons']['level']}",
        out=lambda wildcards, output: shlex.quote(str(Path(output.summary).parent)),
        tables=lambda wildcards, output: shlex.quote(str(Path(output.runs_csv).parent)),
        request=request_flag(aggregate_request()),
    log:
        f"logs/{split_key()}aggregate.log",
    shell:
        "complora aggregate {input.metrics:q} --requests {input.requests:q}"
        " --model-metadata {input.model:q}/metadata.json {params.reference} {params.compare} --out {params.out}"
        " > {log} 2>&1 && complora-seal {params.tables} {params.request}"
