"""One cell of the study: zero-shot evaluation of the pretrained model, or few-shot training and evaluation.

Each writes a ``metrics.json`` holding every field of the results contract (design.md). A trained run
reads the zero-shot runs of its dataset and of the retention datasets: their accuracies are the
reference for the gain and the retention, and their records say where each test split lives. Those
records must come from the same weights and prompt, so a stale zero-shot run is refused, not reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch

from .adapters import AdapterConfig, inject, save_adapter, trainable_parameters
from .atomic import write_json
from .checkpoint import CHECKPOINT_FILE, Checkpointing
from .data.images import EvalTransform
from .data.splits import file_sha256, read_few_shot_split
from .data.testset import DatasetRef, open_test_split
from .data.training import DEFAULT_MEMORY_LIMIT_MIB, TrainingImages
from .devices import select_device
from .errors import ComploraError
from .evaluation import DEFAULT_BATCH_SIZE, DEFAULT_TEMPLATE, zero_shot_accuracies
from .finetune import FinetuneSettings, finetune
from .fingerprint import weights_sha256
from .models import load_clip
from .runinfo import package_versions, peak_gpu_memory_mib, peak_rss_mib
from .sourcehash import source_fingerprint
from .stopping import StopSignals
from .subspace import load_projector

METRICS_FILE = "metrics.json"
ADAPTER_DIR = "adapter"
ZERO_SHOT = "zeroshot"
RESULTS_FORMAT_VERSION = 1
# Scheduler facts recorded with every run (which GPU a cluster gave it, which job it was).
ENVIRONMENT_VARIABLES = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_JOB_PARTITION")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backbone:
    """An open_clip architecture and where its weights come from (tag or checkpoint path)."""

    model: str
    pretrained: str


@dataclass(frozen=True)
class DataSettings:
    """How a job reads its images; none of it changes a result."""

    threads: int = 1
    eval_batch_size: int = DEFAULT_BATCH_SIZE
    train_memory_limit_mib: float = DEFAULT_MEMORY_LIMIT_MIB

    def __post_init__(self) -> None:
        if self.threads < 1 or self.eval_batch_size < 1 or self.train_memory_limit_mib < 0:
            raise ComploraError(
                f"threads and eval batch size must be >= 1 and the training-image memory limit >= 0, got {self}"
            )


@dataclass(frozen=True)
class TrainSpec:
    dataset: DatasetRef
    few_shot_file: Path
    backbone: Backbone
    adapter: AdapterConfig
    settings: FinetuneSettings
    seed: int
    zero_shot_runs: list[Path] = field(default_factory=list)
    projector: Path | None = None


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the run's settings in canonical JSON: equal hashes mean equal experiments."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _environment(device: torch.device) -> dict[str, Any]:
    info = {name: os.environ.get(name) for name in ENVIRONMENT_VARIABLES}
    info["hostname"] = platform.node()
    info["torch_threads"] = torch.get_num_threads()
    if device.type == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name(device)
    return info


def _load_backbone(backbone: Backbone, device: torch.device) -> tuple[torch.nn.Module, Any, EvalTransform]:
    model = load_clip(backbone.model, backbone.pretrained).to(device).eval()
    return model, open_clip.get_tokenizer(backbone.model), EvalTransform.for_model(model)


def _data_record(dataset: DatasetRef) -> dict[str, Any]:
    cache = str(dataset.eval_cache) if dataset.eval_cache else None
    return {"root": str(dataset.root), "split_file": str(dataset.split_file), "eval_cache": cache}


def _common_record(backbone: Backbone, base_sha256: str, device: torch.device) -> dict[str, Any]:
    return {
        "format_version": RESULTS_FORMAT_VERSION,
        "backbone": {**asdict(backbone), "weights_sha256": base_sha256},
        "device": str(device),
        "environment": _environment(device),
        "versions": package_versions(),
    }


def evaluate_zero_shot(
    dataset: DatasetRef,
    backbone: Backbone,
    out: Path,
    *,
    template: str = DEFAULT_TEMPLATE,
    device: str = "auto",
    coop_templates: Sequence[str] = (),
    data: DataSettings | None = None,
) -> dict[str, Any]:
    """Zero-shot top-1 of the pretrained model on the dataset's test split; writes ``out`` (metrics.json).

    ``accuracy`` uses ``template``, as training and retention do. With ``coop_templates`` (CoOp's prompt or
    prompt ensemble for the dataset) their accuracy is recorded as well: the published zero-shot CLIP
    numbers used those prompts."""
    start = time.perf_counter()
    data = data or DataSettings()
    chosen = select_device(device)
    model, tokenizer, transform = _load_backbone(backbone, chosen)
    test = open_test_split(dataset, transform, data.threads)
    split_sha256 = file_sha256(dataset.split_file)
    base_sha256 = weights_sha256(model)
    eval_start = time.perf_counter()
    with_coop = bool(coop_templates) and list(coop_templates) != [template]
    templates = [template, list(coop_templates)] if with_coop else [template]
    results = zero_shot_accuracies(model, tokenizer, test, templates, transform, data.eval_batch_size)
    accuracy = round(results[0].accuracy, 2)
    coop_prompts = {"templates": list(coop_templates), "accuracy": round(results[1].accuracy, 2)} if with_coop else None
    eval_seconds = time.perf_counter() - eval_start
    settings = {
        "dataset": dataset.name,
        "method": ZERO_SHOT,
        "template": template,
        "coop_templates": list(coop_templates),
        "weights_sha256": base_sha256,
        "preprocessing_sha256": transform.sha256,
    }
    metrics = {
        **_common_record(backbone, base_sha256, chosen),
        "dataset": dataset.name,
        "method": ZERO_SHOT,
        "shots": 0,
        "seed": None,
        "accuracy": accuracy,
        "zero_shot_accuracy": accuracy,
        "test_size": len(test.labels),
        "classes": len(test.classnames),
        "template": template,
        "coop_prompts": coop_prompts,
        "predictions_sha256": results[0].predictions_sha256,
        "preprocessing": transform.describe(),
        "retention": {},
        "mean_retention": None,
        "trainable_parameters": 0,
        "iterations": 0,
        "train_seconds": 0.0,
        "eval_seconds": round(eval_seconds, 2),
        "wall_seconds": round(time.perf_counter() - start, 2),
        "peak_memory_mib": peak_rss_mib(),
        "peak_gpu_memory_mib": peak_gpu_memory_mib(),
        "config": settings,
        "config_hash": config_hash(settings),
        "split_hash": split_sha256,
        "data": _data_record(dataset),
    }
    write_json(out, metrics)
    log.info("zero-shot %s: %.2f%% on %d test images", dataset.name, accuracy, len(test.labels))
    return metrics


def _read_zero_shot_run(path: Path, base_sha256: str, template: str, transform: EvalTransform) -> dict[str, Any]:
    try:
        run = json.loads(path.read_text())
        fields = (run["method"], run["backbone"]["weights_sha256"], run["template"], run["split_hash"])
        method, run_sha256, run_template, split_hash = fields
        split_file, root = Path(run["data"]["split_file"]), Path(run["data"]["root"])
        cache = Path(run["data"]["eval_cache"]) if run["data"]["eval_cache"] else None
        preprocessing = run["config"]["preprocessing_sha256"]
    except FileNotFoundError:
        raise ComploraError(f"zero-shot run {path} does not exist; run `complora evaluate` for it first") from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ComploraError(f"{path} is not a zero-shot metrics file ({error!r}); rerun `complora evaluate`") from None
    if method != ZERO_SHOT:
        raise ComploraError(f"{path}: method is {method!r}, expected a {ZERO_SHOT!r} run")
    if run_sha256 != base_sha256:
        raise ComploraError(
            f"{path} was evaluated with weights {run_sha256[:12]}, this run loads {base_sha256[:12]}: the zero-shot "
            "run is stale; rerun `complora evaluate` for it"
        )
    if run_template != template:
        raise ComploraError(f"{path} used the prompt {run_template!r}, this run uses {template!r}; rerun it")
    if preprocessing != transform.sha256:
        raise ComploraError(f"{path} was evaluated with other image preprocessing than this model's; rerun it")
    if not split_file.is_file() or file_sha256(split_file) != split_hash:
        raise ComploraError(f"{path}: its split file {split_file} is missing or changed since; rerun the zero-shot run")
    return {**run, "dataset_ref": DatasetRef(run["dataset"], root, split_file, cache)}


def train_and_evaluate(
    spec: TrainSpec,
    out_dir: Path,
    *,
    device: str = "auto",
    checkpoint_every: int = 0,
    stop: StopSignals | None = None,
    data: DataSettings | None = None,
) -> dict[str, Any]:
    """Few-shot training of ``spec.adapter`` on the k-shot split, then top-1 on the test split and zero-shot
    retention on every other dataset that has a zero-shot run. Writes ``adapter/`` and, last, metrics.json.

    With ``checkpoint_every`` > 0, training keeps ``checkpoint.pt`` in ``out_dir`` (every that many steps and
    at the end) and a rerun of the same run resumes from it; it is removed once metrics.json is written."""
    start = time.perf_counter()
    data = data or DataSettings()
    chosen = select_device(device)
    split = read_few_shot_split(spec.few_shot_file)
    dataset = spec.dataset
    if not dataset.split_file.is_file():
        raise ComploraError(f"split file {dataset.split_file} of {dataset.name} does not exist; check --split-file")
    if split["dataset"] != dataset.name or split["source_split"]["sha256"] != file_sha256(dataset.split_file):
        raise ComploraError(
            f"k-shot split {spec.few_shot_file} was drawn for {split['dataset']} from a split file with sha256 "
            f"{split['source_split']['sha256'][:12]}, not from {dataset.split_file} of {dataset.name}; redraw it "
            "with `complora split`"
        )
    if checkpoint_every < 0:
        raise ComploraError(f"--checkpoint-every {checkpoint_every}: must be 0 (no checkpoints) or more")
    model, tokenizer, transform = _load_backbone(spec.backbone, chosen)
    base_sha256 = weights_sha256(model)
    template = spec.settings.template
    references = {}
    for path in spec.zero_shot_runs:
        run = _read_zero_shot_run(path, base_sha256, template, transform)
        references[run["dataset"]] = run
    if dataset.name not in references:
        raise ComploraError(f"no zero-shot run of {dataset.name} was given (--zero-shot); it is the gain's reference")

    adapter = spec.adapter.to_dict()
    if spec.adapter.method == "lora":  # k and side do not act on LoRA; keep them out of its identity
        adapter.pop("k")
        adapter.pop("side")
    settings = {
        "dataset": dataset.name,
        "method": spec.adapter.method,
        "shots": split["shots"],
        "seed": spec.seed,
        "backbone": {**asdict(spec.backbone), "weights_sha256": base_sha256},
        "adapter": adapter,
        "training": asdict(spec.settings),
        "preprocessing_sha256": transform.sha256,
        "retention_datasets": sorted(name for name in references if name != dataset.name),
    }
    split_hash = file_sha256(spec.few_shot_file)
    projector_sha256 = file_sha256(spec.projector) if spec.projector else None
    # The code and library versions too: a checkpoint written by other training code is no state to go on from.
    run_identity = config_hash(
        {
            "config": settings,
            "split_hash": split_hash,
            "projector_sha256": projector_sha256,
            "code": source_fingerprint(__name__),
            "versions": package_versions(),
        }
    )
    checkpointing = None
    if checkpoint_every:
        checkpointing = Checkpointing(out_dir / CHECKPOINT_FILE, checkpoint_every, run_identity)

    projector = load_projector(spec.projector) if spec.projector else None
    torch.manual_seed(spec.seed)  # the A initialisation
    inject(model, spec.adapter, projector)
    # Every test split is opened (its cache checked) before training, so a missing or stale one stops the job
    # now, not after hours of training.
    tests = {dataset.name: open_test_split(dataset, transform, data.threads)}
    for name in settings["retention_datasets"]:
        tests[name] = open_test_split(references[name]["dataset_ref"], transform, data.threads)
    images = TrainingImages(
        dataset.root, split["train"], transform.size, memory_limit_mib=data.train_memory_limit_mib, threads=data.threads
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).unlink(missing_ok=True)
    figures = finetune(
        model,
        tokenizer,
        images,
        split["classnames"],
        spec.settings,
        seed=spec.seed,
        transform=transform,
        checkpointing=checkpointing,
        stop=stop,
    )

    eval_start = time.perf_counter()
    test = tests[dataset.name]
    (result,) = zero_shot_accuracies(model, tokenizer, test, [template], transform, data.eval_batch_size)
    accuracy = round(result.accuracy, 2)
    retention_accuracy, retention = {}, {}
    for name in settings["retention_datasets"]:
        (top1,) = zero_shot_accuracies(model, tokenizer, tests[name], [template], transform, data.eval_batch_size)
        value = top1.accuracy
        retention_accuracy[name] = round(value, 2)
        retention[name] = round(value - references[name]["accuracy"], 2)
    eval_seconds = time.perf_counter() - eval_start

    if stop:
        stop.disarm()  # the results are complete: a signal from here on would only throw them away
    save_adapter(model, out_dir / ADAPTER_DIR)
    zero_shot = references[dataset.name]["accuracy"]
    metrics = {
        **_common_record(spec.backbone, base_sha256, chosen),
        "dataset": dataset.name,
        "method": spec.adapter.method,
        "shots": split["shots"],
        "seed": spec.seed,
        "accuracy": accuracy,
        "zero_shot_accuracy": zero_shot,
        "gain": round(accuracy - zero_shot, 2),
        "test_size": len(test.labels),
        "classes": len(test.classnames),
        "template": template,
        "predictions_sha256": result.predictions_sha256,
        "preprocessing": transform.describe(),
        "training_images": {
            "count": len(images),
            "decoded_mib": round(images.decoded_mib, 1),
            "in_memory": images.in_memory,
        },
        "retention": retention,
        "retention_accuracy": retention_accuracy,
        "mean_retention": round(sum(retention.values()) / len(retention), 2) if retention else None,
        "trainable_parameters": trainable_parameters(model),
        "iterations": spec.settings.iterations,
        "final_loss": round(figures["final_loss"], 4),
        "resumed_at_step": figures["resumed_at_step"],
        "train_seconds": round(figures["train_seconds"], 2),
        "eval_seconds": round(eval_seconds, 2),
        "wall_seconds": round(time.perf_counter() - start, 2),
        "peak_memory_mib": peak_rss_mib(),
        "peak_gpu_memory_mib": peak_gpu_memory_mib(),
        "config": settings,
        "config_hash": config_hash(settings),
        "split_hash": split_hash,
        "data": {**_data_record(dataset), "few_shot": str(spec.few_shot_file)},
        "projector_sha256": projector_sha256,
    }
    write_json(out_dir / METRICS_FILE, metrics)
    if checkpointing:
        checkpointing.remove()
    log.info(
        "%s %s %d-shot seed %d: %.2f%% (zero-shot %.2f%%), mean retention %s, %.1f s",
        dataset.name,
        spec.adapter.method,
        split["shots"],
        spec.seed,
        accuracy,
        zero_shot,
        metrics["mean_retention"],
        metrics["wall_seconds"],
    )
    return metrics
