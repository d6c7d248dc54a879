# k-shot splits: one file per (dataset, shots, seed), shared by every method.


rule few_shot_split:
    input:
        data=lambda wildcards: ancient(dataset_dir(wildcards.dataset)),
        redo=lambda wildcards: redo_marker(split_path(wildcards.dataset, wildcards.shots, wildcards.seed)),
    output:
        split=split_path("{dataset}", "{shots}", "{seed}"),
        seal=str(seal_path(split_path("{dataset}", "{shots}", "{seed}"))),
    params:
        code=CODE["few_shot_split"],
        split_file=lambda wildcards: shlex.quote(dataset_split_file(wildcards.dataset)),
        protocol=PROTOCOL,
        request=lambda wildcards: request_flag(split_request(wildcards.dataset, wildcards.shots, wildcards.seed)),
    conda:
        "../envs/complora.yaml"
    log:
        f"logs/{split_key()}splits/{{dataset}}/shots{{shots}}_seed{{seed}}.log",
    shell:
        "complora split --split-file {params.split_file} --dataset {wildcards.dataset}"
        " --shots {wildcards.shots} --seed {wildcards.seed} --protocol {params.protocol} --out {output.split:q}"
        " > {log:q} 2>&1 && complora-seal {output.split:q} {params.request}"
