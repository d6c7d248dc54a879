# k-shot splits: one file per (dataset, shots, seed), shared by every method.


rule few_shot_split:
    input:
        data=lambda wildcards: ancient(dataset_dir(wildcards.dataset)),
        record=lambda wildcards: data_job(wildcards.dataset)[2],
        request=lambda wildcards: artifact_request_file(split_job(wildcards.dataset, wildcards.shots, wildcards.seed)),
    output:
        split=split_path("{dataset}", "{shots}", "{seed}"),
        answered=answered_path(split_path("{dataset}", "{shots}", "{seed}"), directory=False),
    params:
        code=CODE["few_shot_split"],
        split_file=lambda wildcards: dataset_split_file(wildcards.dataset),
        protocol=PROTOCOL,
    conda:
        "../envs/complora.yaml"
    log:
        f"logs/{split_key()}splits/{{dataset}}/shots{{shots}}_seed{{seed}}.log",
    shell:
        "complora split --split-file {params.split_file} --dataset {wildcards.dataset}"
        " --shots {wildcards.shots} --seed {wildcards.seed} --protocol {params.protocol} --out {output.split}"
        " > {log} 2>&1 && cp {input.request} {output.answered}"
