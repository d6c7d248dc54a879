# The experiment grid and paths, computed once from the checked config.
from pathlib import Path

from snakemake.exceptions import WorkflowError

from complora.configcheck import check_config, load_schema
from complora.errors import ComploraError
from complora.sourcehash import source_fingerprint

CONFIG_SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
CONFIG_SOURCE = ", ".join(str(path) for path in workflow.configfiles) or "the config"

try:
    check_config(config, load_schema(CONFIG_SCHEMA), source=CONFIG_SOURCE)
except ComploraError as error:
    raise WorkflowError(str(error)) from None

# Each rule's jobs record the fingerprint of the complora code they run, as a parameter: editing that code
# reruns them (Snakemake by itself reruns on changed inputs, parameters or commands, not on package code).
CODE = {
    "demo_world": source_fingerprint("complora.demo.datasets"),
    "demo_pretrain": source_fingerprint("complora.demo.pretrain"),
    "few_shot_split": source_fingerprint("complora.splitfile"),
    "projector": source_fingerprint("complora.subspace"),
    "evaluate": source_fingerprint("complora.experiment"),
    "aggregate": source_fingerprint("complora.aggregate"),
}
ZERO_SHOT = "zeroshot"
TRAINED_METHODS = [method for method in config["methods"] if method != ZERO_SHOT]
DATASETS = config["datasets"]
SHOTS = config["shots"]
SEEDS = config["seeds"]
BACKBONE = config["backbone"]["model"]
WORLD = "resources/data/demo_world"
MODEL_DIR = f"resources/models/{BACKBONE}"
CHECKPOINT = f"{MODEL_DIR}/open_clip_model.safetensors"
PROJECTOR = f"resources/projectors/{BACKBONE}.safetensors"


wildcard_constraints:
    dataset="|".join(sorted(set(DATASETS) | set(config["retention_datasets"]))),
    method="|".join(TRAINED_METHODS) or "no-trained-method",
    shots=r"\d+",
    seed=r"\d+",


def dataset_root(dataset):
    return f"{WORLD}/{dataset}"


def dataset_split_file(dataset):
    return f"{dataset_root(dataset)}/split.json"


def retention_datasets(dataset):
    """Datasets whose zero-shot accuracy a run adapted on `dataset` re-measures."""
    return [other for other in config["retention_datasets"] if other != dataset]


def zero_shot_metrics(dataset):
    return f"results/runs/{dataset}/{ZERO_SHOT}/metrics.json"


def run_dir(dataset, method, shots, seed):
    return f"results/runs/{dataset}/{method}/shots{shots}/seed{seed}"


def method_flags(method):
    """The `complora train` flags for one method's hyperparameters (the rule's params: a change reruns that
    method's jobs only)."""
    settings = dict(config["hyperparameters"][method])
    settings.pop("iterations_per_shot")
    flags = []
    for name, value in sorted(settings.items()):
        values = value if isinstance(value, list) else [value]
        flags.append(f"--{name.replace('_', '-')} " + " ".join(str(item) for item in values))
    return " ".join(flags)


def train_inputs(wildcards):
    inputs = {
        "world": WORLD,
        "model": MODEL_DIR,
        "split": f"resources/splits/{wildcards.dataset}/shots{wildcards.shots}_seed{wildcards.seed}.json",
        "zero_shot": [zero_shot_metrics(d) for d in [wildcards.dataset, *retention_datasets(wildcards.dataset)]],
    }
    if wildcards.method == "complora":
        inputs["projector"] = PROJECTOR
    return inputs


RUN_METRICS = [
    f"{run_dir(dataset, method, shots, seed)}/metrics.json"
    for dataset in DATASETS
    for method in TRAINED_METHODS
    for shots in SHOTS
    for seed in SEEDS
]
TABLE_METRICS = (
    [zero_shot_metrics(dataset) for dataset in DATASETS] if ZERO_SHOT in config["methods"] else []
) + RUN_METRICS
AGGREGATE_OUTPUTS = [
    "results/tables/accuracy.csv",
    "results/tables/retention.csv",
    "results/tables/accuracy.md",
    "results/tables/retention.md",
    *[f"results/plots/accuracy_{dataset}.png" for dataset in DATASETS],
    "results/plots/retention.png",
    "results/summary.md",
    "results/metrics.json",
]
