"""One cell of the study: zero-shot evaluation of the pretrained model, or few-shot training and evaluation.

Each writes a ``metrics.json`` holding every field of the results contract (docs/design.md). A trained run
reads the zero-shot runs of its dataset and of the retention datasets: their accuracies are the
reference for the gain and the retention, and their records say where each test split lives. Those
records must come from the same weights and prompt, so a stale zero-shot run is refused, not reused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .adapters import AdapterConfig, inject, save_adapter, trainable_parameters
from .atomic import atomic_path, write_json
from .checkpoint import CHECKPOINT_FILE, Checkpointing
from .data.base_to_new import ALL, BASE_TO_NEW, groups_for, scores
from .data.images import normalize
from .data.splits import file_sha256, read_few_shot_split, split_protocol
from .data.testset import DatasetRef, TestSplit, open_test_split
from .data.training import DEFAULT_MEMORY_LIMIT_MIB, TrainingImages
from .devices import select_device
from .errors import ComploraError
from .evaluation import DEFAULT_BATCH_SIZE, DEFAULT_TEMPLATE, Top1, top1_accuracies, zero_shot_accuracies
from .finetune import SGD_DASSL, FinetuneSettings, dassl_epoch_steps, finetune, train_loop
from .fingerprint import weights_sha256
from .methods.families import ENCODERS_UNCHANGED
from .methods.registry import implementation
from .runinfo import package_versions, peak_gpu_memory_mib, peak_rss_mib
from .runrecord import (
    METRICS_FILE,
    ZERO_SHOT,
    Backbone,
    common_record,
    config_hash,
    data_record,
    load_backbone,
    read_zero_shot_run,
)
from .sourcehash import source_fingerprint
from .stopping import StopSignals
from .subspace import load_projector
from .tensorfile import save_tensors

ADAPTER_DIR = "adapter"
CURVE_FILE = "curve.csv"
log = logging.getLogger(__name__)


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
    name: str = ""  # the method's name in the study; default the family's
    zero_shot_runs: list[Path] = field(default_factory=list)
    projector: Path | None = None
    request: dict[str, Any] | None = None  # what the workflow asked for (complora.runrequest), recorded as is

    @property
    def method(self) -> str:
        return self.name or self.adapter.method


def _scores(protocol: str, top1: Top1) -> dict[str, float | None]:
    return scores(protocol, top1.accuracy, top1.groups)


def _read_split(few_shot_file: Path, dataset: DatasetRef) -> dict[str, Any]:
    """The k-shot split, checked to be drawn from the dataset's split file as it is today."""
    split = read_few_shot_split(few_shot_file)
    if not dataset.split_file.is_file():
        raise ComploraError(f"split file {dataset.split_file} of {dataset.name} does not exist; check --split-file")
    if split["dataset"] != dataset.name or split["source_split"]["sha256"] != file_sha256(dataset.split_file):
        raise ComploraError(
            f"k-shot split {few_shot_file} was drawn for {split['dataset']} from a split file with sha256 "
            f"{split['source_split']['sha256'][:12]}, not from {dataset.split_file} of {dataset.name}; redraw it "
            "with `complora split`"
        )
    return split


def _references(
    paths: Sequence[Path], base_sha256: str, template: str, transform: Any, dataset: str, protocol: str
) -> dict[str, dict[str, Any]]:
    """The zero-shot runs by dataset, each checked to come from these weights, prompt, preprocessing and
    protocol; the dataset's own must be among them."""
    references = {}
    for path in paths:
        run = read_zero_shot_run(path, base_sha256, template, transform.sha256)
        if run.get("protocol", ALL) != protocol:
            raise ComploraError(
                f"{path} was evaluated under the {run.get('protocol', ALL)} protocol and the k-shot split was "
                f"drawn under {protocol}; rerun `complora evaluate` with --protocol {protocol}"
            )
        references[run["dataset"]] = run
    if dataset not in references:
        raise ComploraError(f"no zero-shot run of {dataset} was given (--zero-shot); it is the gain's reference")
    return references


def _check_classes(split: dict[str, Any], few_shot_file: Path, test: TestSplit) -> None:
    """The split's classes are the test split's (under base-to-new: its first ones, the base classes)."""
    expected = test.classnames[: split["base_classes"]] if split_protocol(split) == BASE_TO_NEW else test.classnames
    total = split.get("all_classes", len(split["classnames"]))
    if split["classnames"] != expected or total != len(test.classnames):
        raise ComploraError(
            f"k-shot split {few_shot_file}: its classes are not those of {test.name}'s test split; redraw it with "
            "`complora split`"
        )


def write_curve(path: Path, curve: list[tuple[int, float, float]]) -> None:
    """The training curve as a small CSV: step, loss (mean since the previous row), learning_rate."""
    import pandas as pd

    table = pd.DataFrame(curve, columns=["step", "loss", "learning_rate"])
    with atomic_path(path) as temporary:
        table.to_csv(temporary, index=False, float_format="%.6g")


def evaluate_zero_shot(
    dataset: DatasetRef,
    backbone: Backbone,
    out: Path,
    *,
    template: str = DEFAULT_TEMPLATE,
    device: str = "auto",
    coop_templates: Sequence[str] = (),
    data: DataSettings | None = None,
    request: dict[str, Any] | None = None,
    protocol: str = ALL,
) -> dict[str, Any]:
    """Zero-shot top-1 of the pretrained model on the dataset's test split; writes ``out`` (metrics.json).

    ``accuracy`` uses ``template``, as training and retention do. With ``coop_templates`` (CoOp's prompt or
    prompt ensemble for the dataset) their accuracy is recorded as well: the published zero-shot CLIP
    numbers used those prompts. Under the base-to-new protocol the accuracies are the base classes' with
    the new classes' and the harmonic mean beside them (complora.data.base_to_new)."""
    start = time.perf_counter()
    data = data or DataSettings()
    chosen = select_device(device)
    model, tokenizer, transform = load_backbone(backbone, chosen)
    test = open_test_split(dataset, transform, data.threads)
    split_sha256 = file_sha256(dataset.split_file)
    base_sha256 = weights_sha256(model)
    eval_start = time.perf_counter()
    with_coop = bool(coop_templates) and list(coop_templates) != [template]
    templates = [template, list(coop_templates)] if with_coop else [template]
    groups = groups_for(protocol, len(test.classnames))
    results = zero_shot_accuracies(model, tokenizer, test, templates, transform, data.eval_batch_size, groups)
    fields = _scores(protocol, results[0])
    accuracy = fields["accuracy"]
    coop_prompts = {"templates": list(coop_templates), **_scores(protocol, results[1])} if with_coop else None
    eval_seconds = time.perf_counter() - eval_start
    settings = {
        "dataset": dataset.name,
        "method": ZERO_SHOT,
        "protocol": protocol,
        "template": template,
        "coop_templates": list(coop_templates),
        "weights_sha256": base_sha256,
        "preprocessing_sha256": transform.sha256,
    }
    metrics = {
        **common_record(backbone, base_sha256, chosen),
        "dataset": dataset.name,
        "method": ZERO_SHOT,
        "family": ZERO_SHOT,
        "shots": 0,
        "seed": None,
        "protocol": protocol,
        **fields,
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
        "data": data_record(dataset),
        "request": request,
    }
    write_json(out, metrics)
    log.info("zero-shot %s: %.2f%% on %d test images", dataset.name, accuracy, len(test.labels))
    return metrics


def train_and_evaluate(
    spec: TrainSpec,
    out_dir: Path,
    *,
    device: str = "auto",
    checkpoint_every: int = 0,
    stop: StopSignals | None = None,
    data: DataSettings | None = None,
    compile_step: bool = False,
) -> dict[str, Any]:
    """Few-shot training of ``spec.adapter`` on the k-shot split, then top-1 on the test split and zero-shot
    retention on every other dataset that has a zero-shot run. Writes ``adapter/``, ``curve.csv`` (the
    training curve) and, last, metrics.json.

    With ``checkpoint_every`` > 0, training keeps ``checkpoint.pt`` in ``out_dir`` (every that many steps and
    at the end) and a rerun of the same run resumes from it; it is removed once metrics.json is written."""
    start = time.perf_counter()
    data = data or DataSettings()
    chosen = select_device(device)
    dataset = spec.dataset
    split = _read_split(spec.few_shot_file, dataset)
    protocol = split_protocol(split)
    if checkpoint_every < 0:
        raise ComploraError(f"--checkpoint-every {checkpoint_every}: must be 0 (no checkpoints) or more")
    model, tokenizer, transform = load_backbone(spec.backbone, chosen)
    base_sha256 = weights_sha256(model)
    template = spec.settings.template
    references = _references(spec.zero_shot_runs, base_sha256, template, transform, dataset.name, protocol)

    adapter = spec.adapter.to_dict()
    if spec.adapter.method == "lora":  # k and side do not act on LoRA; keep them out of its identity
        adapter.pop("k")
        adapter.pop("side")
    settings = {
        "dataset": dataset.name,
        "method": spec.method,
        "family": spec.adapter.method,
        "shots": split["shots"],
        "seed": spec.seed,
        "backbone": {**asdict(spec.backbone), "weights_sha256": base_sha256},
        "adapter": adapter,
        "training": asdict(spec.settings),
        "preprocessing_sha256": transform.sha256,
        "protocol": protocol,
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
    _check_classes(split, spec.few_shot_file, tests[dataset.name])
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
        compile_step=compile_step,
        stop=stop,
    )

    eval_start = time.perf_counter()
    test = tests[dataset.name]

    groups = groups_for(protocol, len(test.classnames))
    (result,) = zero_shot_accuracies(model, tokenizer, test, [template], transform, data.eval_batch_size, groups)
    fields = _scores(protocol, result)
    accuracy = fields["accuracy"]
    retention_accuracy, retention = {}, {}
    for name in settings["retention_datasets"]:
        # Every class of a dataset not trained on, whatever the protocol.
        (top1,) = zero_shot_accuracies(model, tokenizer, tests[name], [template], transform, data.eval_batch_size)
        value = top1.accuracy
        retention_accuracy[name] = round(value, 2)
        reference = references[name]
        retention[name] = round(value - reference.get("all_classes_accuracy", reference["accuracy"]), 2)
    eval_seconds = time.perf_counter() - eval_start

    if stop:
        stop.disarm()  # the results are complete: a signal from here on would only throw them away
    save_adapter(model, out_dir / ADAPTER_DIR)
    write_curve(out_dir / CURVE_FILE, figures["curve"])
    zero_shot = references[dataset.name]["accuracy"]
    metrics = {
        **common_record(spec.backbone, base_sha256, chosen),
        "compiled_step": compile_step,
        "dataset": dataset.name,
        "method": spec.method,
        "family": spec.adapter.method,
        "shots": split["shots"],
        "seed": spec.seed,
        "protocol": protocol,
        **fields,
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
        "data": {**data_record(dataset), "few_shot": str(spec.few_shot_file)},
        "projector_sha256": projector_sha256,
        "request": spec.request,
    }
    write_json(out_dir / METRICS_FILE, metrics)
    if checkpointing:
        checkpointing.remove()
    log.info(
        "%s %s %d-shot seed %d: %.2f%% (zero-shot %.2f%%), mean retention %s, %.1f s",
        dataset.name,
        spec.method,
        split["shots"],
        spec.seed,
        accuracy,
        zero_shot,
        metrics["mean_retention"],
        metrics["wall_seconds"],
    )
    return metrics


PROMPT_FILE = "prompt.safetensors"


@dataclass(frozen=True)
class PromptSpec:
    """One prompt-learning run (complora.methods.prompt_learning): a family, its settings (nulls for the
    official values), one k-shot split and seed."""

    dataset: DatasetRef
    few_shot_file: Path
    backbone: Backbone
    family: str
    settings: dict[str, Any]
    seed: int
    zero_shot_run: Path
    name: str = ""
    template: str = DEFAULT_TEMPLATE  # the study's prompt, the zero-shot reference's
    coop_templates: Sequence[str] = ()  # CoOp's prompt(s) for the dataset (KgCoOp's hand-crafted prompt)
    request: dict[str, Any] | None = None

    @property
    def method(self) -> str:
        return self.name or self.family


def learn_prompts_and_evaluate(
    spec: PromptSpec,
    out_dir: Path,
    *,
    device: str = "auto",
    checkpoint_every: int = 0,
    stop: StopSignals | None = None,
    data: DataSettings | None = None,
) -> dict[str, Any]:
    """Prompt learning on the k-shot split with the towers frozen, then top-1 on the test split. Writes
    ``prompt.safetensors`` (the context, and CoCoOp's Meta-Net), ``curve.csv`` and, last, metrics.json;
    checkpoints and resume as :func:`train_and_evaluate`. The towers stay the pretrained ones, so there is no
    retention to re-measure (as for the feature-level methods)."""
    start = time.perf_counter()
    data = data or DataSettings()
    chosen = select_device(device)
    dataset = spec.dataset
    split = _read_split(spec.few_shot_file, dataset)
    protocol = split_protocol(split)
    if checkpoint_every < 0:
        raise ComploraError(f"--checkpoint-every {checkpoint_every}: must be 0 (no checkpoints) or more")
    model, tokenizer, transform = load_backbone(spec.backbone, chosen)
    base_sha256 = weights_sha256(model)
    reference = _references([spec.zero_shot_run], base_sha256, spec.template, transform, dataset.name, protocol)
    family = implementation(spec.family)
    coop = list(spec.coop_templates) or [spec.template]
    settings = family.resolve(spec.family, dataset.name, split["shots"], spec.settings, coop)
    test = open_test_split(dataset, transform, data.threads)
    _check_classes(split, spec.few_shot_file, test)
    images = TrainingImages(
        dataset.root, split["train"], transform.size, memory_limit_mib=data.train_memory_limit_mib, threads=data.threads
    )
    epoch_steps = dassl_epoch_steps(len(images), settings["batch_size"])
    training = FinetuneSettings(
        iterations=settings["epochs"] * epoch_steps,
        batch_size=settings["batch_size"],
        learning_rate=settings["learning_rate"],
        weight_decay=settings["weight_decay"],
        logit_scale=settings["logit_scale"],
        template=spec.template,
        optimizer=SGD_DASSL,
        momentum=settings["momentum"],
        warmup_learning_rate=settings["warmup_learning_rate"],
        epoch_steps=epoch_steps,
    )
    config = {
        "dataset": dataset.name,
        "method": spec.method,
        "family": spec.family,
        "shots": split["shots"],
        "seed": spec.seed,
        "backbone": {**asdict(spec.backbone), "weights_sha256": base_sha256},
        "hyperparameters": settings,
        "training": asdict(training),
        "preprocessing_sha256": transform.sha256,
        "protocol": protocol,
    }
    split_hash = file_sha256(spec.few_shot_file)
    checkpointing = None
    if checkpoint_every:
        identity = {"config": config, "split_hash": split_hash, "versions": package_versions()}
        identity["code"] = source_fingerprint(__name__, family.__name__)
        checkpointing = Checkpointing(out_dir / CHECKPOINT_FILE, checkpoint_every, config_hash(identity))
    mean, std = transform.normalization(chosen)
    objective = family.Objective(
        spec.family,
        model,
        tokenizer,
        split["classnames"],
        settings,
        spec.seed,
        normalize=lambda crops: normalize(crops, mean, std),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).unlink(missing_ok=True)
    figures = train_loop(
        objective.learner,
        objective.loss,
        images,
        training,
        spec.seed,
        device=chosen,
        checkpointing=checkpointing,
        stop=stop,
    )

    eval_start = time.perf_counter()
    groups = groups_for(protocol, len(test.classnames))
    classifier = objective.classifier(test.classnames)
    (result,) = top1_accuracies(model, test, [classifier], transform, data.eval_batch_size, groups)
    fields = _scores(protocol, result)
    eval_seconds = time.perf_counter() - eval_start
    if stop:
        stop.disarm()
    save_tensors({name: t.detach() for name, t in objective.learner.state_dict().items()}, out_dir / PROMPT_FILE)
    write_curve(out_dir / CURVE_FILE, figures["curve"])
    zero_shot = reference[dataset.name]["accuracy"]
    trainable = sum(p.numel() for p in objective.learner.parameters())
    metrics = {
        **common_record(spec.backbone, base_sha256, chosen),
        "dataset": dataset.name,
        "method": spec.method,
        "family": spec.family,
        "shots": split["shots"],
        "seed": spec.seed,
        "protocol": protocol,
        **fields,
        "zero_shot_accuracy": zero_shot,
        "gain": round(fields["accuracy"] - zero_shot, 2),
        "test_size": len(test.labels),
        "classes": len(test.classnames),
        "template": spec.template,
        "predictions_sha256": result.predictions_sha256,
        "preprocessing": transform.describe(),
        "training_images": {
            "count": len(images),
            "decoded_mib": round(images.decoded_mib, 1),
            "in_memory": images.in_memory,
        },
        "retention": {},
        "retention_accuracy": {},
        "mean_retention": None,
        "retention_status": ENCODERS_UNCHANGED,
        "trainable_parameters": trainable,
        "iterations": training.iterations,
        "epochs": settings["epochs"],
        "final_loss": round(figures["final_loss"], 4),
        "resumed_at_step": figures["resumed_at_step"],
        "train_seconds": round(figures["train_seconds"], 2),
        "eval_seconds": round(eval_seconds, 2),
        "wall_seconds": round(time.perf_counter() - start, 2),
        "peak_memory_mib": peak_rss_mib(),
        "peak_gpu_memory_mib": peak_gpu_memory_mib(),
        "config": config,
        "config_hash": config_hash(config),
        "split_hash": split_hash,
        "data": {**data_record(dataset), "few_shot": str(spec.few_shot_file)},
        "request": spec.request,
    }
    write_json(out_dir / METRICS_FILE, metrics)
    if checkpointing:
        checkpointing.remove()
    log.info(
        "%s %s %d-shot seed %d: %.2f%% (zero-shot %.2f%%), %.1f s",
        dataset.name,
        spec.method,
        split["shots"],
        spec.seed,
        fields["accuracy"],
        zero_shot,
        metrics["wall_seconds"],
    )
    return metrics
