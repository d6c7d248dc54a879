# complora: from the demo world (or real datasets) to the tables. `snakemake --cores all` runs the study that
# config.yaml describes; the rules call `complora` verbs and live in workflow/rules/ by stage.
from snakemake.utils import min_version

min_version("9.0")


# config.yaml under the files given with --configfile (theirs win, key by key, as with Snakemake's
# `configfile:`), read by complora so that a YAML error names the file and the line.
include: "workflow/rules/config.smk"


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
        # Asked for here so that Snakemake makes them: each redoes a stale job (common.smk).
        REDO_MARKERS,
    default_target: True


# The datasets and the pretrained model alone (the first DVC stage).
rule prepare:
    input:
        sorted({dataset_dir(dataset) for dataset in ALL_DATASETS}),
        MODEL_DIR,
        PREPARE_MARKERS,


# The redo markers have done their work when the run ends (a failed run's are named anew by the next one).
onsuccess:
    remove_redo_markers()


onerror:
    remove_redo_markers()
