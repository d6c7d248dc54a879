# complora: from the demo world (or real datasets) to the tables. `snakemake --cores all` runs the study that
# config.yaml describes; the rules call `complora` verbs and live in workflow/rules/ by stage.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    dataset=name_pattern(ALL_DATASETS),
    method=name_pattern(TRAINED_METHODS),
    shots=r"\d+",
    seed=r"\d+",


include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/evalcache.smk"
include: "workflow/rules/splits.smk"
include: "workflow/rules/projectors.smk"
include: "workflow/rules/runs.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/aggregate.smk"


# Seconds of work each: on a cluster they run beside Snakemake instead of waiting in the queue.
localrules:
    all,
    prepare,
    few_shot_split,
    aggregate,


rule all:
    input:
        rules.aggregate.output,
        # Built even when only LoRA runs, so the DVC stage's outputs do not depend on the method list.
        PROJECTOR,
    default_target: True


# The datasets and the pretrained model alone (the first DVC stage).
rule prepare:
    input:
        sorted({dataset_dir(dataset) for dataset in ALL_DATASETS}),
        MODEL_DIR,
