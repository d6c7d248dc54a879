# The experiment grid and paths, computed once from the checked config.
import json
import re
import shlex
import shutil
from functools import cache
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
from complora.artifacts import seal_path
from complora.atomic import write_json
from complora.runrequest import artifact_verdict, digest, read_json, run_verdict, sha256_if_present
from complora.sourcehash import source_fingerprint

CONFIG_SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
CONFIG_SOURCE = ", ".join([BASE_CONFIG, *(str(path) for path in workflow.configfiles)])

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
    return repeated_flag("--coop-template", benchmark_templates(dataset))


def repeated_flag(flag, values):
    """``flag value`` for each value, quoted for the shell (user input never reaches it unquoted)."""
    return " ".join(f"{flag} {shlex.quote(str(value))}" for value in values)


def request_flag(request):
    return f"--request {shlex.quote(json.dumps(request, sort_keys=True))}"


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
    return f"--eval-cache {shlex.quote(eval_cache_dir(dataset))}" if EVAL_CACHE else ""


def zero_shot_metrics(dataset):
    return f"{RESULTS}/runs/{dataset}/{ZERO_SHOT}/metrics.json"


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
        flags.append(f"--{name.replace('_', '-')} " + " ".join(shlex.quote(str(item)) for item in values))
    return " ".join(flags)


def ancient_all(paths):
    """Inputs whose time never triggers a job: the verdict reads their records (judge() below)."""
    return [ancient(path) for path in paths]


def train_inputs(wildcards):
    made = run_dir(wildcards.dataset, wildcards.method, wildcards.shots, wildcards.seed)
    datasets = [wildcards.dataset, *retention_datasets(wildcards.dataset)]
    inputs = {
        "data": ancient(dataset_dir(wildcards.dataset)),
        "model": ancient(MODEL_DIR),
        "split": ancient(split_path(wildcards.dataset, wildcards.shots, wildcards.seed)),
        "zero_shot": ancient_all(zero_shot_metrics(d) for d in datasets),
        "eval_caches": ancient_all(eval_caches(datasets)),
        "redo": redo_marker(made),
    }
    if METHODS[wildcards.method].spec.needs_projector:
        inputs["projector"] = ancient(PROJECTOR)
    return inputs


def prompt_inputs(wildcards):
    """A prompt-learning run's inputs: its dataset's alone (the towers stay the pretrained ones: no retention)."""
    return {
        "data": ancient(dataset_dir(wildcards.dataset)),
        "model": ancient(MODEL_DIR),
        "split": ancient(split_path(wildcards.dataset, wildcards.shots, wildcards.seed)),
        "zero_shot": ancient(zero_shot_metrics(wildcards.dataset)),
        "eval_caches": ancient_all(eval_caches([wildcards.dataset])),
        "redo": redo_marker(run_dir(wildcards.dataset, wildcards.method, wildcards.shots, wildcards.seed)),
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


# The aggregation's outputs shown by `snakemake --report`, with their caption, category and labels.
def table_report(path, caption, category, table, subcategory="tables"):
    return report(path, caption=f"../report/{caption}.rst", category=category, subcategory=subcategory,
                  labels={"content": table, "dataset": "all", "shots": "all"})  # fmt: skip


def figure_report(path, caption, category, figure, dataset="average", shots="all"):
    return report(path, caption=f"../report/{caption}.rst", category=category, subcategory="figures",
                  labels={"content": figure, "dataset": dataset, "shots": shots})  # fmt: skip


# The reference of the paired comparisons (complora.results.comparisons).
COMPARE_TO = config["comparisons"]["reference"]


# What each job is asked for (complora.runrequest): computed here, handed to the job on its command line,
# recorded by the job (a run in its metrics.json, an artifact in its seal). Nothing is written while the
# workflow is parsed. A request names its inputs by their requests' digests, so a change upstream changes
# every request downstream. Each is built once per parse (cached: the grid, the verdict and the rules'
# parameters ask for the same ones; nobody changes a request once built).
BACKBONE_REQUEST = {"model": BACKBONE, "pretrained": CHECKPOINT}


def evaluation_inputs(datasets):
    """What decides the test pixels a job evaluates: the image libraries (where a job decodes the images
    itself) and, with the evaluation caches, each cache's request."""
    inputs = {"libraries": IMAGE_LIBRARIES}
    if EVAL_CACHE:
        inputs["eval_caches"] = {name: digest(eval_cache_request(name)) for name in datasets}
    return inputs


@cache
def zero_shot_request(dataset):
    return {"dataset": dataset, "method": ZERO_SHOT, "template": config["prompt_template"], "protocol": PROTOCOL,
            "coop_templates": benchmark_templates(dataset), "backbone": BACKBONE_REQUEST,
            "device": device_flag(ZERO_SHOT_GPUS), "code": CODE["evaluate"],
            "inputs": {"data": data_digest(dataset), "model": digest(model_request()),
                       **evaluation_inputs([dataset])}}  # fmt: skip


@cache
def run_request(dataset, method, shots, seed):
    spec = METHODS[method]
    inputs = {"data": data_digest(dataset), "model": digest(model_request()),
              "split": digest(split_request(dataset, shots, seed))}  # fmt: skip
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
            inputs["projector"] = digest(projector_request())
    else:
        inputs |= {"zero_shot": digest(zero_shot_request(dataset)), "features": digest(features_request(dataset))}
        request |= {"coop_templates": coop_templates(dataset), "code": FIT_CODE[method]}
    return request | {"inputs": inputs}


def world_request():
    return {"rule": "demo_world", "code": CODE["demo_world"], "world": config["demo"]["world"]}


def weights_file_sha256():
    """A local checkpoint counts by its content: replaced at the same path, it is a new model."""
    return sha256_if_present(PRETRAINED) if Path(PRETRAINED).is_file() else None


@cache
def model_request():
    if DEMO_WEIGHTS:
        return {"rule": "demo_pretrain", "code": CODE["demo_pretrain"], "pretraining": config["demo"]["pretraining"],
                "inputs": {"world": digest(world_request())}}  # fmt: skip
    return {"rule": "pretrained_weights", "code": CODE["weights"], "model": BACKBONE, "pretrained": PRETRAINED,
            "pretrained_sha256": WEIGHTS_FILE_SHA256}  # fmt: skip


def custom_content(dataset):
    """What a custom dataset is made of: its image files (names and sizes) and its split and class-name
    files (sha256), so that an edit re-prepares it and everything made from it."""
    entry = CUSTOM[dataset]
    images = Path(entry["images"])
    files = sorted(
        (path.relative_to(images).as_posix(), path.stat().st_size) for path in images.rglob("*") if path.is_file()
    ) if images.is_dir() else []  # fmt: skip
    return {"images": digest({"files": files}), "image_count": len(files),
            "split_file": sha256_if_present(entry["split_file"]) if entry["split_file"] else None,
            "classnames": sha256_if_present(entry["classnames"]) if entry["classnames"] else None}  # fmt: skip


@cache
def dataset_request(dataset):
    if dataset in CUSTOM:
        return {"rule": "dataset", "code": CODE["dataset"], "custom": CUSTOM[dataset], "content": CUSTOM_CONTENT[dataset]}
    # Downloads are verified by checksum wherever they are cached; the registry counts by its content.
    registry = config["data"]["registry"]
    return {"rule": "dataset", "code": CODE["dataset"], "root": config["data"]["root"],
            "registry": sha256_if_present(registry) if registry else None}  # fmt: skip


def data_request(dataset):
    """The request of the job that made a dataset's folder: the demo world's, for a demo task."""
    return world_request() if is_demo(dataset) else dataset_request(dataset)


@cache
def data_digest(dataset):
    return digest(data_request(dataset))


def split_key():
    """The log prefix of the artifacts made per protocol (k-shot splits, feature stores)."""
    return "base_to_new/" if BASE_TO_NEW else ""


@cache
def split_request(dataset, shots, seed):
    return {"rule": "few_shot_split", "code": CODE["few_shot_split"], "split_file": dataset_split_file(dataset),
            "protocol": PROTOCOL, "dataset": dataset, "shots": int(shots), "seed": int(seed),
            "inputs": {"data": data_digest(dataset)}}  # fmt: skip


@cache
def projector_request():
    return {"rule": "projector", "code": CODE["projector"], "backbone": BACKBONE_REQUEST, "k_max": PROJECTOR_K,
            "targets": PROJECTOR_TARGETS, "towers": PROJECTOR_TOWERS, "inputs": {"model": digest(model_request())}}  # fmt: skip


@cache
def eval_cache_request(dataset):
    return {"rule": "eval_cache", "code": CODE["eval_cache"], "backbone": BACKBONE_REQUEST,
            "libraries": IMAGE_LIBRARIES, "dataset": dataset,
            "inputs": {"data": data_digest(dataset), "model": digest(model_request())}}  # fmt: skip


@cache
def features_request(dataset):
    splits = [digest(split_request(dataset, k, s)) for k in SHOTS for s in SEEDS]
    return {"rule": "features", "code": CODE["features"], "backbone": BACKBONE_REQUEST, "libraries": IMAGE_LIBRARIES,
            "dataset": dataset, "shots": SHOTS, "seeds": SEEDS, "views": STORE_VIEWS,
            "templates": list(dict.fromkeys([config["prompt_template"], *coop_templates(dataset)])),
            "device": device_flag(ZERO_SHOT_GPUS),
            "inputs": {"data": data_digest(dataset), "model": digest(model_request()), "splits": splits,
                       **evaluation_inputs([dataset])}}  # fmt: skip


def aggregate_request():
    """The tables' request: the runs they are made of, the comparisons' settings, the published numbers."""
    table = config["reference_table"]
    return {"rule": "aggregate", "code": CODE["aggregate"], "runs": digest(STUDY_REQUESTS),
            "comparisons": config["comparisons"], "reference_table": sha256_if_present(table) if table else None}  # fmt: skip




# Deciding what is done, from the files themselves (complora.runrequest): a finished job whose request is
# not today's, or whose output is damaged or unfinished, gets a redo marker: one more input, made by a job
# of this invocation and asked for by `all` (or `prepare`), so Snakemake redoes it and everything made from
# it, with or without its records in .snakemake/. Only the main Snakemake process judges: a job's own
# process (on a cluster node) runs what it was given.
class Job:
    """One job of the grid for judging: what it made, its request, what it reads (what other jobs made), and
    whether its files are checked while parsing (a dataset folder may hold a million images: its seal is
    checked, its files when a job reads them)."""

    def __init__(self, made, request, reads=(), metrics=None, split=None, deep=True):
        self.made, self.request, self.reads, self.deep = made, request, list(reads), deep
        self.metrics, self.split = metrics, split  # a run's metrics.json and today's split file

    def exists(self):
        return Path(self.metrics or self.made).exists()

    def reasons(self, weights):
        if self.metrics:
            return run_verdict(self.request, self.metrics, sha256_if_present(self.split), weights)
        return artifact_verdict(self.request, self.made, deep=self.deep)


def zero_shot_dir(dataset):
    return str(Path(zero_shot_metrics(dataset)).parent)


def run_reads(dataset, method, shots, seed):
    """The artifacts and runs a run is made from."""
    spec = METHODS[method]
    if spec.kind == FEATURE:
        return [features_dir(dataset), *few_shot_splits(dataset), zero_shot_dir(dataset), MODEL_DIR]
    references = [dataset] if spec.kind == PROMPT else [dataset, *retention_datasets(dataset)]
    reads = [dataset_dir(dataset), MODEL_DIR, split_path(dataset, shots, seed), *map(zero_shot_dir, references)]
    reads += [eval_cache_dir(d) for d in references] if EVAL_CACHE else []
    return reads + ([PROJECTOR] if spec.spec.needs_projector else [])


def grid_jobs():
    """Every job of the grid, each after the jobs it reads from."""
    jobs = [Job(WORLD, world_request())] if any(is_demo(d) for d in ALL_DATASETS) else []
    jobs += [Job(dataset_dir(d), dataset_request(d), deep=False) for d in ALL_DATASETS if not is_demo(d)]
    jobs.append(Job(MODEL_DIR, model_request(), [WORLD] if DEMO_WEIGHTS else []))
    jobs += [Job(split_path(d, k, s), split_request(d, k, s), [dataset_dir(d)]) for d in DATASETS for k in SHOTS for s in SEEDS]
    jobs.append(Job(PROJECTOR, projector_request(), [MODEL_DIR]))
    caches = [Job(eval_cache_dir(d), eval_cache_request(d), [dataset_dir(d), MODEL_DIR]) for d in ALL_DATASETS]
    jobs += caches if EVAL_CACHE else []
    for d in ALL_DATASETS:
        reads = [dataset_dir(d), MODEL_DIR, *eval_caches([d])]
        jobs.append(Job(zero_shot_dir(d), zero_shot_request(d), reads, zero_shot_metrics(d), dataset_split_file(d)))
    for d in FEATURE_DATASETS:
        jobs.append(Job(features_dir(d), features_request(d), [dataset_dir(d), MODEL_DIR, *few_shot_splits(d), *eval_caches([d])]))
    for method in TRAINED_METHODS:
        for d in method_datasets(method):
            for k in method_shots(method):
                for s in SEEDS:
                    made = run_dir(d, method, k, s)
                    jobs.append(Job(made, run_request(d, method, k, s), run_reads(d, method, k, s),
                                    f"{made}/metrics.json", split_path(d, k, s)))  # fmt: skip
    jobs.append(Job(REQUESTS_FILE, None))
    runs = [str(Path(metrics).parent) for metrics in TABLE_METRICS]
    jobs.append(Job(TABLES, aggregate_request(), [*runs, REQUESTS_FILE]))
    return jobs


def study_requests():
    """Every table run's request by its metrics file: what the tables check each run against."""
    requests = {zero_shot_metrics(d): zero_shot_request(d) for d in DATASETS}
    for method in TRAINED_METHODS:
        for d in method_datasets(method):
            for k in method_shots(method):
                for s in SEEDS:
                    requests[f"{run_dir(d, method, k, s)}/metrics.json"] = run_request(d, method, k, s)
    return {metrics: requests[metrics] for metrics in TABLE_METRICS}


WEIGHTS_FILE_SHA256 = None if DEMO_WEIGHTS else weights_file_sha256()
CUSTOM_CONTENT = {name: custom_content(name) for name in CUSTOM if name in ALL_DATASETS}
STUDY_REQUESTS = study_requests()
REQUESTS_FILE = f"{RESULTS}/runs/requests.json"  # versioned with the runs by DVC
TABLES = f"{RESULTS}/tables"


UPSTREAM_REASON = "made from "


def judge():
    """Why each finished job of the grid must be redone, by what it made: its own record, a part of a study
    that was built upon gone missing, or something it is made from that is redone. Snakemake never sees a
    file's time (every input is ancient), so the verdict passes down the grid here."""
    jobs = grid_jobs()
    metadata = read_json(Path(MODEL_DIR) / "metadata.json")
    weights = metadata.get("weights_sha256") if isinstance(metadata, dict) else None
    own = {job.made: job.reasons(weights) if job.request is not None else [] for job in jobs}
    if Path(REQUESTS_FILE).exists() and read_json(Path(REQUESTS_FILE)) != STUDY_REQUESTS:
        own[REQUESTS_FILE] = ["the grid's requests changed"]
    existing = {job.made for job in jobs if job.exists()}
    used = {read for job in jobs if job.made in existing for read in job.reads}
    for job in jobs:
        if not own[job.made] and job.made not in existing and job.made in used:
            own[job.made] = ["it is missing"]
    stale = {}
    for job in jobs:
        upstream = next((read for read in job.reads if read in stale), None)
        if own[job.made]:
            stale[job.made] = own[job.made]
        elif upstream and job.made in existing:
            stale[job.made] = [f"{UPSTREAM_REASON}{upstream}, which is redone"]
    return stale


STALE = judge() if workflow.is_main_process else {}
REDO_DIR = "resources/redo"


def redo_marker(made):
    """The redo marker of a stale job ([] for a job that is done or not made yet). Its name holds the
    verdict and the state of what was made, so a marker left by an interrupted run never stands for a new one."""
    if made not in STALE:
        return []
    files = [Path(made), seal_path(made), Path(made) / "metrics.json"]
    state = [(str(path), path.stat().st_mtime_ns, path.stat().st_size) for path in files if path.exists()]
    return [f"{REDO_DIR}/{made}.{digest({'reasons': STALE[made], 'state': state})}.redo"]


def fit_redo_markers(dataset, method):
    """A fit job makes every run of its (dataset, method): it is redone when any of them is stale."""
    return sorted({marker for k in SHOTS for s in SEEDS for marker in redo_marker(run_dir(dataset, method, k, s))})


REDO_MARKERS = sorted(marker for made in STALE for marker in redo_marker(made))
PREPARED = {MODEL_DIR, WORLD, *(dataset_dir(d) for d in ALL_DATASETS)}
PREPARE_MARKERS = sorted(marker for made in STALE if made in PREPARED for marker in redo_marker(made))
def report_stale():
    """One warning: each stale job with its own reasons, and how many are redone because they are made
    from one of them."""
    direct = {made: reasons for made, reasons in STALE.items() if not reasons[0].startswith(UPSTREAM_REASON)}
    shown = [f"  {made}: " + "; ".join(reasons[:3]) for made, reasons in list(direct.items())[:10]]
    more = [f"  ... and {len(direct) - 10} more"] if len(direct) > 10 else []
    logger.warning(
        f"{len(direct)} finished job(s) are stale, damaged or missing; `snakemake` (the default target) redoes "
        f"them and the {len(STALE) - len(direct)} made from them:\n" + "\n".join(shown + more)
    )


if STALE:
    report_stale()


def remove_redo_markers():
    if workflow.is_main_process:
        shutil.rmtree(REDO_DIR, ignore_errors=True)
