# k-shot splits: one file per (dataset, shots, seed), shared by every method.


rule few_shot_split:
    input:
        data=lambda wildcards: dataset_dir(wildcards.dataset),
    output:
        "resources/splits/{dataset}/shots{shots}_seed{seed}.json",
    params:
        code=CODE["few_shot_split"],
        split_file=lambda wildcards: dataset_split_file(wildcards.dataset),
    conda:
        "../envs/complora.yaml"
    log:
        "logs/splits/{dataset}/shots{shots}_seed{seed}.log",
    shell:
        "complora split --split-file {params.split_file} --dataset {wildcards.dataset}"
        " --shots {wildcards.shots} --seed {wildcards.seed} --out {output} > {log} 2>&1"
