"""One feature-level method on one dataset: fitted on each k-shot split's stored features (complora.features),
then classifying the stored test features. Each family (complora.methods) fits through the same code; its
fit sees the k-shot split's train and val features and the prompts' text features, never the test split.

Under the base-to-new protocol the fit sees the base classes' prompts only; the base classes' test images
are classified among them, and the new classes' images among the new classes by the family's
``new_classes`` classifier where it has one (none: no new-class accuracy).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .atomic import write_json
from .data.base_to_new import ALL, BASE, NEW, scores
from .data.splits import file_sha256, read_few_shot_split, split_protocol
from .data.testset import DatasetRef
from .errors import ComploraError
from .evaluation import DEFAULT_TEMPLATE, predictions_sha256
from .features.store import FeatureStore, StoreKey, TestFeatures, TextFeatures
from .methods.families import ENCODERS_UNCHANGED
from .methods.feature import FeatureTask
from .methods.registry import implementation
from .runinfo import peak_rss_mib
from .runrecord import METRICS_FILE, Backbone, common_record, config_hash, data_record, read_zero_shot_run
from .runrequest import weights_of_artifact
from .tensorfile import save_tensors

CLASSIFIER_FILE = "classifier.safetensors"
TEST_BATCH = 4096
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitSpec:
    """One feature-level method on one dataset, for every k-shot split given."""

    dataset: DatasetRef
    name: str
    family: str
    settings: dict[str, Any]
    backbone: Backbone
    features: Path  # the dataset's feature store folder
    few_shot_files: list[Path]
    zero_shot_run: Path
    model_metadata: Path  # metadata.json of the weights artifact: the weights every input must come from
    template: str = DEFAULT_TEMPLATE
    coop_templates: Sequence[str] = ()
    # What the workflow asked for each k-shot split (complora.runrequest), recorded as is; none, or one per split.
    requests: Sequence[dict[str, Any]] = ()


def fit_and_evaluate(spec: FitSpec, out_root: Path) -> list[dict[str, Any]]:
    """Fit the method on each k-shot split's stored features, then classify the test features; writes
    ``<out_root>/shots<k>/seed<s>/`` (classifier.safetensors, then metrics.json) per split. The family's fit
    sees the k-shot split's train and val features and the prompts' text features, never the test split.

    Every input is checked first: the zero-shot run and every store file must come from the weights of
    ``spec.model_metadata``, the same preprocessing, and today's split files."""
    start = time.perf_counter()
    if spec.requests and len(spec.requests) != len(spec.few_shot_files):
        raise ComploraError(
            f"{len(spec.requests)} requests for {len(spec.few_shot_files)} k-shot splits: give one --request per "
            "--few-shot, in the same order"
        )
    base_sha256 = weights_of_artifact(spec.model_metadata)
    reference = read_zero_shot_run(spec.zero_shot_run, base_sha256, spec.template, None)
    preprocessing = reference["config"]["preprocessing_sha256"]  # the store must share it
    if reference["dataset"] != spec.dataset.name:
        raise ComploraError(
            f"{spec.zero_shot_run} is the zero-shot run of {reference['dataset']}, not {spec.dataset.name}"
        )
    store = FeatureStore(
        spec.features, StoreKey(spec.dataset.name, base_sha256, preprocessing), spec.dataset.split_file
    )
    text, test = store.text(), store.test()
    family = implementation(spec.family)
    splits = [(path, read_few_shot_split(path)) for path in spec.few_shot_files]
    for path, _ in splits:  # every split's features checked before any fitting, then read one at a time
        store.support(path, load=False)
    results = []
    for index, (path, split) in enumerate(splits):
        support = store.support(path)
        missing = sorted(set(range(len(split["classnames"]))) - set(support.train_labels.tolist()))
        if missing:
            raise ComploraError(
                f"k-shot split {path} has no training image of class(es) {missing}; every class needs one (the "
                "dataset's train split lacks them: add images of those classes)"
            )
        protocol = split_protocol(split)
        if reference.get("protocol", ALL) != protocol:
            raise ComploraError(
                f"{spec.zero_shot_run} was evaluated under the {reference.get('protocol', ALL)} protocol and {path} "
                f"was drawn under {protocol}; rerun `complora evaluate` with --protocol {protocol}"
            )
        base = split.get("base_classes", len(text.classnames))
        if text.classnames[:base] != split["classnames"] or split.get("all_classes", base) != len(text.classnames):
            raise ComploraError(f"{spec.features}: the text features' classes are not those of {path}; rebuild them")
        task = _task(spec, split, support, text, 0, base)
        fit_start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(split["seed"])
            fitted = family.fit(spec.family, task, dict(spec.settings))
        fit_seconds = time.perf_counter() - fit_start
        eval_start = time.perf_counter()
        base_test = _classes_of(test, 0, base)
        predicted = _predict(fitted.classifier.eval(), base_test)
        correct = 100.0 * ((predicted == base_test.labels).sum().float() / len(base_test.labels)).item()
        groups = {BASE: correct}
        if base < len(text.classnames) and hasattr(family, "new_classes"):
            new_test = _classes_of(test, base, len(text.classnames))
            new_task = _task(spec, split, support, text, base, len(text.classnames))
            new_predicted = _predict(family.new_classes(spec.family, fitted, new_task), new_test)
            groups[NEW] = 100.0 * ((new_predicted == new_test.labels).sum().float() / len(new_test.labels)).item()
            # Back in test-split order, each image's prediction among its own half's classes.
            in_order = torch.empty_like(test.labels)
            in_order[test.labels < base], in_order[test.labels >= base] = predicted, new_predicted + base
            predicted = in_order
        outcome = _Outcome(
            scores=scores(protocol, correct if base == len(text.classnames) else None, groups),
            protocol=protocol,
            predicted=predicted,
            test_size=len(test.labels),
            classes=len(text.classnames),
            fit_seconds=fit_seconds,
            eval_seconds=time.perf_counter() - eval_start,
            wall_seconds=time.perf_counter() - start,
        )
        request = spec.requests[index] if spec.requests else None
        results.append(_write_fit_run(spec, out_root, split, path, fitted, reference, base_sha256, outcome, request))
    return results


def _task(spec: FitSpec, split: dict[str, Any], support: Any, text: TextFeatures, first: int, stop: int) -> FeatureTask:
    """The task of classes first .. stop - 1 (all of them, or the base or new ones under base-to-new)."""
    classes = TextFeatures(text.templates, text.classnames[first:stop], text.features[:, first:stop])
    coop = list(spec.coop_templates) or [spec.template]
    return FeatureTask(
        spec.dataset.name, split["shots"], split["seed"], classes.classnames, support, classes, spec.template, coop
    )


def _classes_of(test: TestFeatures, first: int, stop: int) -> TestFeatures:
    """The test images of labels first .. stop - 1, labelled from 0."""
    chosen = (test.labels >= first) & (test.labels < stop)
    return TestFeatures(test.features[chosen], test.labels[chosen] - first)


@torch.no_grad()
def _predict(classifier: torch.nn.Module, test: TestFeatures) -> torch.Tensor:
    # In batches: a Tip-Adapter cache on ImageNet is 16,000 keys per test image.
    return torch.cat([classifier(batch).argmax(dim=-1) for batch in test.features.split(TEST_BATCH)])


@dataclass(frozen=True)
class _Outcome:
    """What one cell measured. ``predicted``: in test-split order; under base-to-new each image's among its
    own half's classes, and only the base classes' images where the family has no new-class predictions."""

    scores: dict[str, float | None]
    protocol: str
    predicted: torch.Tensor
    test_size: int
    classes: int
    fit_seconds: float
    eval_seconds: float
    wall_seconds: float


def _write_fit_run(
    spec: FitSpec,
    out_root: Path,
    split: dict[str, Any],
    path: Path,
    fitted: Any,
    reference: dict[str, Any],
    base_sha256: str,
    outcome: _Outcome,
    request: dict[str, Any] | None,
) -> dict[str, Any]:
    out_dir = out_root / f"shots{split['shots']}" / f"seed{split['seed']}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).unlink(missing_ok=True)
    settings = {
        "dataset": spec.dataset.name,
        "method": spec.name,
        "family": spec.family,
        "shots": split["shots"],
        "seed": split["seed"],
        "backbone": {**asdict(spec.backbone), "weights_sha256": base_sha256},
        "hyperparameters": fitted.settings,
        "preprocessing_sha256": reference["config"]["preprocessing_sha256"],
        "template": spec.template,
        "coop_templates": list(spec.coop_templates),
        "protocol": outcome.protocol,
    }
    save_tensors({name: t.detach() for name, t in fitted.classifier.state_dict().items()}, out_dir / CLASSIFIER_FILE)
    zero_shot = reference["accuracy"]
    accuracy = outcome.scores["accuracy"]
    metrics = {
        **common_record(spec.backbone, base_sha256, torch.device("cpu")),
        "dataset": spec.dataset.name,
        "method": spec.name,
        "family": spec.family,
        "shots": split["shots"],
        "seed": split["seed"],
        "protocol": outcome.protocol,
        **outcome.scores,
        "zero_shot_accuracy": zero_shot,
        "gain": round(accuracy - zero_shot, 2),
        "test_size": outcome.test_size,
        "classes": outcome.classes,
        "template": spec.template,
        "predictions_sha256": predictions_sha256(outcome.predicted),
        "retention": {},
        "retention_accuracy": {},
        "mean_retention": None,
        "retention_status": ENCODERS_UNCHANGED,
        "trainable_parameters": fitted.trainable_parameters,
        "iterations": fitted.figures.get("iterations", 0),
        "fit": fitted.figures,
        "train_seconds": round(outcome.fit_seconds, 3),
        "eval_seconds": round(outcome.eval_seconds, 3),
        "wall_seconds": round(outcome.wall_seconds, 2),
        "peak_memory_mib": peak_rss_mib(),
        "peak_gpu_memory_mib": None,
        "config": settings,
        "config_hash": config_hash(settings),
        "split_hash": file_sha256(path),
        "data": {**data_record(spec.dataset), "few_shot": str(path), "features": str(spec.features)},
        "request": request,
    }
    write_json(out_dir / METRICS_FILE, metrics)
    log.info(
        "%s %s %d-shot seed %d: %.2f%% (zero-shot %.2f%%)",
        spec.dataset.name,
        spec.name,
        split["shots"],
        split["seed"],
        accuracy,
        zero_shot,
    )
    return metrics
