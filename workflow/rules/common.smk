# The experiment grid and paths, computed once from the checked config.
import json
import re
import shlex
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from complora.configcheck import check_config, load_schema
from complora.data.imagelibs import library_versions
from complora.data.registry import load_registry
from complora.demo.tasks import TASKS
from complora.errors import ComploraError
from complora.methods.families import ADAPTER, FEATURE, PROMPT, store_views, views_needed
from complora.methods.registry import study_methods
from complora.runrequest import (
    REQUESTS_DIR,
    answered_path,
    digest,
    read_json,
    request_path,
    settle_artifact,
    settle_run,
    sha256_if_present,
)
from complora.sourcehash import source_fingerprint

CONFIG_SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
CONFIG_SOURCE = ", ".join(str(path) for path in workflow.configfiles) or "the config"

try:
    REGISTRY = load_registry(config.get("data", {}).get("registry"))
    check_config(config, load_schema(CONFIG_SCHEMA), source=CONFIG_SOURCE, datasets=[*TASKS, *REGISTRY])
except ComploraError as error:
    raise WorkflowError(str(error)) from None

# Each rule's jobs record the fingerprint of the complora code they run, as a parameter: editing that code
# reruns them (Snakemake by itself reruns on changed inputs, parameters or commands, not on package code).
CODE = {
    "demo_world": source_fingerprint("complora.demo.datasets"),
    "demo_pretrain": source_fingerprint("complora.demo.pretrain"),
    "dataset": source_fingerprint("complora.data.prepare"),
    "weights": source_fingerprint("complora.weights"),
    "few_shot_split": source_fingerprint("complora.data.splits"),
    "eval_cache": source_fingerprint("complora.data.evalcache", "complora.models"),
    "projector": source_fingerprint("complora.subspace"),
    "evaluate": source_fingerprint("complora.experiment", "complora.methods.lora"),
    "prompt": source_fingerprint("complora.experiment", "complora.methods.prompt_learning"),
    "features": source_fingerprint("complora.features.store"),
    "aggregate": source_fingerprint("complora.aggregate"),
}
ZERO_SHOT = "zeroshot"
# The methods by name (complora.methods.registry): adapter families train one job per run, feature-level
# families fit one job per (dataset, method) over every shot and seed, on the dataset's feature store.
METHODS = study_methods(config)
ADAPTER_METHODS = [name for name, method in METHODS.items() if method.kind == ADAPTER]
FEATURE_METHODS = [name for name, method in METHODS.items() if method.kind == FEATURE]
PROMPT_METHODS = [name for name, method in METHODS.items() if method.kind == PROMPT]
TRAINED_METHODS = ADAPTER_METHODS + FEATURE_METHODS + PROMPT_METHODS
# Editing a family's module reruns that family's jobs only.
FIT_CODE = {
    name: source_fingerprint("complora.fitting", f"complora.methods.{METHODS[name].spec.module}")
    for name in FEATURE_METHODS
}
# The protocol (complora.data.base_to_new): a base-to-new study keeps its k-shot splits, feature stores and
# results apart from the all-class study's, so both live in one checkout (and in dvc.yaml).
PROTOCOL = config["protocol"]
BASE_TO_NEW = PROTOCOL == "base_to_new"
RESULTS = "results/base_to_new" if BASE_TO_NEW else "results"
STUDY_RESOURCES = "resources/base_to_new" if BASE_TO_NEW else "resources"
DATASETS = config["datasets"]
SHOTS = config["shots"]
SEEDS = config["seeds"]
GRID = [(shots, seed) for shots in SHOTS for seed in SEEDS]
BACKBONE = config["backbone"]["model"]
PRETRAINED = config["backbone"]["pretrained"]
DEMO_WEIGHTS = PRETRAINED == "demo"
WORLD = "resources/data/demo_world"
# One folder per (architecture, weights): a tag by name, a local checkpoint by its file name.
BACKBONE_ID = BACKBONE if DEMO_WEIGHTS else f"{BACKBONE}_{Path(PRETRAINED).stem}"
MODEL_DIR = f"resources/models/{BACKBONE_ID}"
CHECKPOINT = f"{MODEL_DIR}/open_clip_model.safetensors"
PROJECTOR = f"resources/projectors/{BACKBONE_ID}.safetensors"
CUSTOM = config["custom_datasets"]
ALL_DATASETS = sorted(set(DATASETS) | set(config["retention_datasets"]))
NOTHING = "(?!x)x"  # a wildcard pattern that matches no name
EVAL_CACHE = config["data"]["eval_cache"]
if not EVAL_CACHE:
    # dvc.yaml declares the caches' folder whatever the config, and DVC refuses an output that is missing.
    Path("resources/evalcache").mkdir(parents=True, exist_ok=True)
# The libraries that decide decoded pixels (from the package metadata: no torch import here); a new version
# rebuilds the evaluation caches.
IMAGE_LIBRARIES = library_versions()
TRAINING_GPUS = config["gpus_per_training_job"]
ZERO_SHOT_GPUS = min(1, TRAINING_GPUS)



def is_demo(dataset):
    return dataset in TASKS


def dataset_dir(dataset):
    """The folder written for a dataset (the whole demo world, or resources/data/<name>)."""
    return WORLD if is_demo(dataset) else f"resources/data/{dataset}"


def dataset_root(dataset):
    """The folder the split file's relative image paths start from."""
    return f"{WORLD}/{dataset}" if is_demo(dataset) else f"resources/data/{dataset}/images"


def dataset_split_file(dataset):
    return f"{WORLD}/{dataset}/split.json" if is_demo(dataset) else f"resources/data/{dataset}/split.json"


def benchmark_templates(dataset):
    """CoOp's zero-shot prompt(s) for a benchmark (none for the demo's and custom datasets)."""
    return list(REGISTRY[dataset].templates) if dataset in REGISTRY else []


def coop_template_flags(dataset):
    """CoOp's prompts as flags: their accuracy is recorded beside the single-prompt accuracy."""
    return " ".join(f"--coop-template {shlex.quote(template)}" for template in benchmark_templates(dataset))


def device_flag(gpus):
    """A job given no GPU keeps off the GPUs: a cluster may not fence them off, and on a workstation they
    belong to the jobs Snakemake counts."""
    return "--device auto" if gpus else "--device cpu"


def name_pattern(names):
    return "|".join(re.escape(name) for name in sorted(names)) or NOTHING


def retention_datasets(dataset):
    """Datasets whose zero-shot accuracy a run adapted on `dataset` re-measures."""
    return [other for other in config["retention_datasets"] if other != dataset]


def eval_cache_dir(dataset):
    """The test split's evaluation cache: one per (dataset, backbone), whose preprocessing it holds."""
    return f"resources/evalcache/{dataset}/{BACKBONE_ID}"


def eval_caches(datasets):
    return [eval_cache_dir(dataset) for dataset in datasets] if EVAL_CACHE else []


def eval_cache_flag(dataset):
    return f"--eval-cache {eval_cache_dir(dataset)}" if EVAL_CACHE else ""


def zero_shot_metrics(dataset):
    return f"{RESULTS}/runs/{dataset}/{ZERO_SHOT}/metrics.json"


def zero_shot_answered(dataset):
    """The zero-shot job's copy of its request: what the runs that read its accuracy wait on."""
    return answered_path(zero_shot_metrics(dataset), directory=False)


def split_path(dataset, shots, seed):
    return f"{STUDY_RESOURCES}/splits/{dataset}/shots{shots}_seed{seed}.json"


def run_dir(dataset, method, shots, seed):
    return f"{RESULTS}/runs/{dataset}/{method}/shots{shots}/seed{seed}"


def method_datasets(method):
    return list(METHODS[method].datasets or DATASETS)


def method_shots(method):
    return list(METHODS[method].shots or SHOTS)


def method_flags(method):
    """The `complora train` flags for one method's hyperparameters (the rule's params: a change reruns that
    method's jobs only)."""
    settings = dict(METHODS[method].settings)
    settings.pop("iterations_per_shot")
    flags = []
    for name, value in sorted(settings.items()):
        values = value if isinstance(value, list) else [value]
        flags.append(f"--{name.replace('_', '-')} " + " ".join(str(item) for item in values))
    return " ".join(flags)


def train_inputs(wildcards):
    """The inputs are ancient (complora.runrequest): their time never triggers a run; the request and the
    records of the artifacts read (``records``) carry it."""
    datasets = [wildcards.dataset, *retention_datasets(wildcards.dataset)]
    inputs = {
        "data": ancient(dataset_dir(wildcards.dataset)),
        "model": ancient(MODEL_DIR),
        "split": ancient(split_path(wildcards.dataset, wildcards.shots, wildcards.seed)),
        "zero_shot": [ancient(zero_shot_metrics(d)) for d in datasets],
        "eval_caches": [ancient(path) for path in eval_caches(datasets)],
        "request": run_request_file(wildcards.dataset, wildcards.method, wildcards.shots, wildcards.seed),
    }
    projector = METHODS[wildcards.method].spec.needs_projector
    if projector:
        inputs["projector"] = ancient(PROJECTOR)
    split = [(wildcards.shots, wildcards.seed)]
    inputs["records"] = upstream_records(wildcards.dataset, split, datasets, datasets, projector)
    return inputs


def prompt_inputs(wildcards):
    """A prompt-learning run's inputs: its dataset's alone (the towers stay the pretrained ones: no retention)."""
    split = [(wildcards.shots, wildcards.seed)]
    return {
        "data": ancient(dataset_dir(wildcards.dataset)),
        "model": ancient(MODEL_DIR),
        "split": ancient(split_path(wildcards.dataset, wildcards.shots, wildcards.seed)),
        "zero_shot": ancient(zero_shot_metrics(wildcards.dataset)),
        "eval_caches": [ancient(path) for path in eval_caches([wildcards.dataset])],
        "request": run_request_file(wildcards.dataset, wildcards.method, wildcards.shots, wildcards.seed),
        "records": upstream_records(wildcards.dataset, split, [wildcards.dataset], [wildcards.dataset]),
    }


def few_shot_splits(dataset):
    return [split_path(dataset, shots, seed) for shots in SHOTS for seed in SEEDS]


def features_dir(dataset):
    """A dataset's feature store: frozen-tower features for every feature-level method and seed."""
    return f"{STUDY_RESOURCES}/features/{dataset}/{BACKBONE_ID}"


def feature_files(dataset):
    support = [f"support_shots{shots}_seed{seed}.safetensors" for shots in SHOTS for seed in SEEDS]
    return [f"{features_dir(dataset)}/{name}" for name in ["test.safetensors", "text.safetensors", *support]]


def coop_templates(dataset):
    """CoOp's prompt(s) for a benchmark; the study's prompt for the demo's and custom datasets."""
    return list(REGISTRY[dataset].templates) if dataset in REGISTRY else [config["prompt_template"]]


# Augmented views per k-shot image the store keeps: the official counts, or more where a method reads more
# (view i is the same whatever the count, so a method reading fewer sees the same views).
STORE_VIEWS = store_views([views_needed(METHODS[name].family, METHODS[name].settings) for name in FEATURE_METHODS])
FEATURE_DATASETS = sorted({dataset for name in FEATURE_METHODS for dataset in method_datasets(name)})
if not FEATURE_DATASETS:
    # dvc.yaml declares the store's folder whatever the config, and DVC refuses an output that is missing.
    Path(f"{STUDY_RESOURCES}/features").mkdir(parents=True, exist_ok=True)
COMPLORA_METHODS = [method for method in METHODS.values() if method.family == "complora"]
# The projector holds the bases of every matrix any Comp-LoRA method adapts, up to k = 64 or the largest k
# asked for: a variant with k <= 64 leaves it, and every other Comp-LoRA run, alone.
PROJECTOR_K = max([64, *(method.settings["k"] for method in COMPLORA_METHODS)])
PROJECTOR_TARGETS = sorted({t for method in COMPLORA_METHODS for t in method.settings["targets"]} or {"q", "k", "v"})
PROJECTOR_TOWERS = sorted({t for method in COMPLORA_METHODS for t in method.settings["towers"]} or {"vision", "text"})


RUN_METRICS = [
    f"{run_dir(dataset, method, shots, seed)}/metrics.json"
    for method in TRAINED_METHODS
    for dataset in method_datasets(method)
    for shots in method_shots(method)
    for seed in SEEDS
]
TABLE_METRICS = (
    [zero_shot_metrics(dataset) for dataset in DATASETS] if ZERO_SHOT in config["methods"] else []
) + RUN_METRICS
REQUESTS = [request_path(path) for path in TABLE_METRICS]


# The aggregation's outputs shown by `snakemake --report`, with their caption, category and labels.
def table_report(path, caption, category, table, subcategory="tables"):
    return report(path, caption=f"../report/{caption}.rst", category=category, subcategory=subcategory,
                  labels={"content": table, "dataset": "all", "shots": "all"})  # fmt: skip


def figure_report(path, caption, category, figure, dataset="average", shots="all"):
    return report(path, caption=f"../report/{caption}.rst", category=category, subcategory="figures",
                  labels={"content": figure, "dataset": dataset, "shots": shots})  # fmt: skip


# The reference of the paired comparisons (complora.results.comparisons).
COMPARE_TO = config["comparisons"]["reference"]


# What each job is asked for (complora.runrequest): written to resources/requests/, recorded by the job in its
# metrics.json. A finished run whose record differs (or whose split or weights are not today's) is redone,
# with or without Snakemake's job records: a fresh clone after `dvc pull` and a `dvc exp run` copy lack them.
BACKBONE_REQUEST = {"model": BACKBONE, "pretrained": CHECKPOINT}


# A job's request names its inputs by their requests' digests: every input but the request is ancient, so a
# change upstream reaches the jobs downstream through their requests.
def evaluation_inputs(datasets):
    """What decides the test pixels a job evaluates: the image libraries (where a job decodes the images
    itself) and, with the evaluation caches, each cache's request."""
    inputs = {"libraries": IMAGE_LIBRARIES}
    if EVAL_CACHE:
        inputs["eval_caches"] = {name: digest(eval_cache_job(name)[1]) for name in datasets}
    return inputs


def zero_shot_request(dataset):
    return {"dataset": dataset, "method": ZERO_SHOT, "template": config["prompt_template"], "protocol": PROTOCOL,
            "coop_templates": benchmark_templates(dataset), "backbone": BACKBONE_REQUEST,
            "device": device_flag(ZERO_SHOT_GPUS), "code": CODE["evaluate"],
            "inputs": {"data": data_digest(dataset), "model": digest(model_job()[1]),
                       **evaluation_inputs([dataset])}}  # fmt: skip


def run_request(dataset, method, shots, seed):
    spec = METHODS[method]
    inputs = {"data": data_digest(dataset), "model": digest(model_job()[1]),
              "split": digest(split_job(dataset, shots, seed)[1])}  # fmt: skip
    request = {"dataset": dataset, "method": method, "family": spec.family, "shots": shots, "seed": seed,
               "hyperparameters": spec.settings, "template": config["prompt_template"],
               "backbone": BACKBONE_REQUEST}  # fmt: skip
    if spec.kind == PROMPT:
        inputs["zero_shot"] = digest(zero_shot_request(dataset))
        inputs |= evaluation_inputs([dataset])
        request |= {"coop_templates": coop_templates(dataset), "device": device_flag(TRAINING_GPUS),
                    "code": CODE["prompt"]}  # fmt: skip
    elif spec.kind == ADAPTER:
        references = [dataset, *retention_datasets(dataset)]
        inputs["zero_shot"] = {name: digest(zero_shot_request(name)) for name in references}
        inputs |= evaluation_inputs(references)
        request |= {"retention_datasets": retention_datasets(dataset), "device": device_flag(TRAINING_GPUS),
                    "code": CODE["evaluate"]}  # fmt: skip
        if spec.spec.needs_projector:
            request["projector"] = {"k_max": PROJECTOR_K, "targets": PROJECTOR_TARGETS, "towers": PROJECTOR_TOWERS}
            inputs["projector"] = digest(projector_job()[1])
    else:
        inputs |= {"zero_shot": digest(zero_shot_request(dataset)), "features": digest(features_job(dataset)[1])}
        request |= {"coop_templates": coop_templates(dataset), "code": FIT_CODE[method]}
    return request | {"inputs": inputs}


# Artifacts answer requests too: each job copies its request beside what it made when it succeeds.
def artifact_request(rule_name, key, request):
    return f"{REQUESTS_DIR}/{rule_name}/{key}.json", {"rule": rule_name, **request}


def world_job():
    request = {"code": CODE["demo_world"], "world": config["demo"]["world"]}
    return (*artifact_request("demo_world", "world", request), answered_path(WORLD, directory=True))


def model_job():
    if DEMO_WEIGHTS:
        name, request = "demo_pretrain", {"code": CODE["demo_pretrain"], "pretraining": config["demo"]["pretraining"]}
        request["inputs"] = {"world": digest(world_job()[1])}
    else:
        name, request = "pretrained_weights", {"code": CODE["weights"], "model": BACKBONE, "pretrained": PRETRAINED}
    return (*artifact_request(name, BACKBONE_ID, request), answered_path(MODEL_DIR, directory=True))


def dataset_job(dataset):
    if dataset in CUSTOM:
        request = {"code": CODE["dataset"], "custom": CUSTOM[dataset]}
    else:
        # Downloads are verified by checksum wherever they are cached; the registry counts by its content.
        registry = config["data"]["registry"]
        request = {"code": CODE["dataset"], "root": config["data"]["root"],
                   "registry": sha256_if_present(registry) if registry else None}  # fmt: skip
    path, request = artifact_request("dataset", dataset, request)
    return path, request, answered_path(f"resources/data/{dataset}", directory=True)


def data_job(dataset):
    """The job that made a dataset's folder: the demo world's, for a demo task."""
    return world_job() if is_demo(dataset) else dataset_job(dataset)


def data_digest(dataset):
    return digest(data_job(dataset)[1])


def split_key():
    """The requests' key prefix of the artifacts made per protocol (k-shot splits, feature stores)."""
    return "base_to_new/" if BASE_TO_NEW else ""


def split_job(dataset, shots, seed):
    request = {"code": CODE["few_shot_split"], "split_file": dataset_split_file(dataset), "protocol": PROTOCOL,
               "inputs": {"data": data_digest(dataset)}}  # fmt: skip
    path, request = artifact_request("few_shot_split", f"{split_key()}{dataset}/shots{shots}_seed{seed}", request)
    return path, request, answered_path(split_path(dataset, shots, seed), directory=False)


def projector_job():
    request = {"code": CODE["projector"], "backbone": BACKBONE_REQUEST, "k_max": PROJECTOR_K,
               "targets": PROJECTOR_TARGETS, "towers": PROJECTOR_TOWERS, "inputs": {"model": digest(model_job()[1])}}  # fmt: skip
    return (*artifact_request("projector", BACKBONE_ID, request), answered_path(PROJECTOR, directory=False))


def eval_cache_job(dataset):
    request = {"code": CODE["eval_cache"], "backbone": BACKBONE_REQUEST, "libraries": IMAGE_LIBRARIES,
               "inputs": {"data": data_digest(dataset), "model": digest(model_job()[1])}}  # fmt: skip
    path, request = artifact_request("eval_cache", f"{dataset}/{BACKBONE_ID}", request)
    return path, request, answered_path(eval_cache_dir(dataset), directory=True)


def features_job(dataset):
    splits = [digest(split_job(dataset, k, s)[1]) for k in SHOTS for s in SEEDS]
    request = {"code": CODE["features"], "backbone": BACKBONE_REQUEST, "libraries": IMAGE_LIBRARIES,
               "shots": SHOTS, "seeds": SEEDS, "views": STORE_VIEWS,
               "templates": list(dict.fromkeys([config["prompt_template"], *coop_templates(dataset)])),
               "device": device_flag(ZERO_SHOT_GPUS),
               "inputs": {"data": data_digest(dataset), "model": digest(model_job()[1]), "splits": splits,
                          **evaluation_inputs([dataset])}}  # fmt: skip
    path, request = artifact_request("features", f"{split_key()}{dataset}/{BACKBONE_ID}", request)
    return path, request, answered_path(features_dir(dataset), directory=True)


def aggregate_job():
    """The tables' request: the runs they are made of, the comparisons' settings, the published numbers."""
    table = config["reference_table"]
    request = {"code": CODE["aggregate"], "runs": digest({"metrics": TABLE_METRICS}),
               "comparisons": config["comparisons"], "reference_table": sha256_if_present(table) if table else None}  # fmt: skip
    return (*artifact_request("aggregate", RESULTS, request), f"{RESULTS}/tables/aggregate.request.json")


def upstream_records(dataset=None, splits=(), caches=(), zero_shot=(), projector=False, features=False):
    """The records (``*.request.json``) of the artifacts a job reads: its inputs' time, where the artifacts
    themselves are ancient, so that Snakemake redoes the job after the artifact's job in one run."""
    records = [model_job()[2]]
    if dataset is not None:
        records.append(data_job(dataset)[2])
    records += [split_job(dataset, k, s)[2] for k, s in splits]
    records += [eval_cache_job(d)[2] for d in caches] if EVAL_CACHE else []
    records += [zero_shot_answered(d) for d in zero_shot]
    if projector:
        records.append(projector_job()[2])
    if features:
        records.append(features_job(dataset)[2])
    return records


def artifact_jobs():
    jobs = [model_job()]
    if any(is_demo(dataset) for dataset in ALL_DATASETS):
        jobs.append(world_job())
    jobs += [dataset_job(d) for d in ALL_DATASETS if not is_demo(d)]
    jobs += [split_job(d, k, s) for d in DATASETS for k in SHOTS for s in SEEDS]
    jobs.append(projector_job())
    jobs += [eval_cache_job(d) for d in ALL_DATASETS] if EVAL_CACHE else []
    jobs += [features_job(d) for d in FEATURE_DATASETS]
    jobs.append(aggregate_job())
    return jobs


# Each request is settled once per parse: the grid's below, a job outside it (a target of its own) when
# Snakemake asks for its inputs.
MODEL_METADATA = read_json(Path(MODEL_DIR) / "metadata.json")
WEIGHTS_SHA256 = MODEL_METADATA.get("weights_sha256") if isinstance(MODEL_METADATA, dict) else None
SETTLED = {}


def settle_once(request_file, settle, made):
    # Only the main Snakemake process judges: a job's own process (on a cluster node) finds its request
    # written, and must not re-time the records of jobs finishing beside it.
    if request_file not in SETTLED and workflow.is_main_process:
        SETTLED[request_file] = (made, settle())
    return request_file


def artifact_request_file(job):
    path, request, answered = job
    return settle_once(path, lambda: settle_artifact(path, request, answered), answered.removesuffix(".request.json"))


def zero_shot_request_file(dataset):
    metrics = zero_shot_metrics(dataset)

    def settle():
        split = sha256_if_present(dataset_split_file(dataset))
        return settle_run(request_path(metrics), zero_shot_request(dataset), metrics, split, WEIGHTS_SHA256,
                          zero_shot_answered(dataset))  # fmt: skip

    return settle_once(request_path(metrics), settle, str(Path(metrics).parent))


def run_request_file(dataset, method, shots, seed):
    metrics = f"{run_dir(dataset, method, shots, seed)}/metrics.json"

    def settle():
        split = sha256_if_present(split_path(dataset, shots, seed))
        request = run_request(dataset, method, int(shots), int(seed))
        return settle_run(request_path(metrics), request, metrics, split, WEIGHTS_SHA256)

    return settle_once(request_path(metrics), settle, str(Path(metrics).parent))


def settle_requests():
    """Write the grid's requests and mark what is stale for redoing; says which and why."""
    for job in artifact_jobs():
        artifact_request_file(job)
    for dataset in ALL_DATASETS:
        zero_shot_request_file(dataset)
    for method in TRAINED_METHODS:
        for dataset in method_datasets(method):
            for shots in method_shots(method):
                for seed in SEEDS:
                    run_request_file(dataset, method, shots, seed)
    stale = [(made, reasons) for made, reasons in SETTLED.values() if reasons]
    if stale:
        shown = [f"  {made}: " + "; ".join(reasons[:3]) for made, reasons in stale[:10]]
        more = [f"  ... and {len(stale) - 10} more"] if len(stale) > 10 else []
        logger.warning(
            f"{len(stale)} finished job(s) were made with other settings than this config asks for; they will be "
            "redone:\n" + "\n".join(shown + more)
        )


settle_requests()
