"""The feature store: what the frozen towers make of a dataset, computed once and read by every
feature-level method and seed (docs/baselines.md, "The feature store").

One folder per (dataset, backbone) holds
- ``test.safetensors``: raw image features (un-normalised ``encode_image``) of the test split, from the
  evaluation pixels (open_clip's ``preprocess_val``; the evaluation cache where there is one);
- ``text.safetensors``: raw text features of every prompt template the methods use, per class;
- ``support_shots<k>_seed<s>.safetensors``: per k-shot split, the raw features of its train and val images
  under the evaluation transform, and ``views_<aug>`` (views, images, dim): augmented views of the train
  images, cropped from the originals with the augmentation's RandomResizedCrop scale and a flip.

Augmented views are drawn view after view from a generator seeded by (split seed, augmentation), so the
first n views are the same whatever the number stored: a method reading fewer views sees the same ones.
Every file records what it was made from (weights, preprocessing, split files, library versions); a reader
refuses one that does not match what the job expects, naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..artifacts import verify_file
from ..atomic import staging_folder
from ..data.imagelibs import library_versions
from ..data.images import EvalTransform, normalize
from ..data.splits import Entry, file_sha256, read_few_shot_split
from ..data.testset import DatasetRef, DecodedPixels, open_test_split
from ..data.training import DEFAULT_MEMORY_LIMIT_MIB, TrainingImages
from ..errors import ComploraError
from ..evaluation import DEFAULT_BATCH_SIZE, tower_autocast
from ..fingerprint import weights_sha256
from ..methods.families import AUGMENTATIONS
from ..progress import progress_bar
from ..tensorfile import save_tensors
from ..text import encode_text

FORMAT = "complora-features"
FORMAT_VERSION = 1
TEST_FILE = "test.safetensors"
TEXT_FILE = "text.safetensors"


def support_file(shots: int, seed: int) -> str:
    return f"support_shots{shots}_seed{seed}.safetensors"


def view_seed(seed: int, augmentation: str) -> int:
    """The generator seed of a split's augmented views: its own stream per (split seed, augmentation)."""
    digest = hashlib.sha256(f"complora-views:{augmentation}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@torch.no_grad()
def encode_batches(
    model: nn.Module, batches: Iterable[np.ndarray | torch.Tensor], transform: EvalTransform
) -> torch.Tensor:
    """(N, D) float32 raw image features of uint8 (B, H, W, 3) batches, on the CPU."""
    device = next(model.parameters()).device
    mean, std = transform.normalization(device)
    features = []
    for batch in batches:
        pixels = torch.as_tensor(batch)
        if device.type == "cuda":
            pixels = pixels.pin_memory().to(device, non_blocking=True)
        with tower_autocast(device):
            encoded = model.encode_image(normalize(pixels, mean, std))
        features.append(encoded.float())
    return torch.cat(features).cpu()


@torch.no_grad()
def encode_texts(model: nn.Module, tokenizer: Any, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """(T, C, D) float32 raw text features of every template filled with every class name."""
    device = next(model.parameters()).device
    out = []
    for template in templates:
        tokens = tokenizer([template.format(name) for name in classnames]).to(device)
        with tower_autocast(device):
            out.append(encode_text(model, tokens).float().cpu())
    return torch.stack(out)


@dataclass(frozen=True)
class StoreKey:
    """What every file of a dataset's store must have been made from."""

    dataset: str
    weights_sha256: str
    preprocessing_sha256: str

    def metadata(self, kind: str, **fields: Any) -> dict[str, str]:
        record = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "dataset": self.dataset,
            "weights_sha256": self.weights_sha256,
            "preprocessing_sha256": self.preprocessing_sha256,
            "libraries": library_versions(),
            "torch": torch.__version__,
            **fields,
        }
        return {"complora": json.dumps(record, sort_keys=True)}


def _views(
    images: TrainingImages, augmentation: str, count: int, seed: int, batch_size: int, model: nn.Module, transform
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(view_seed(seed, augmentation))
    scale = AUGMENTATIONS[augmentation]
    order = torch.arange(len(images))

    def batches() -> Iterator[torch.Tensor]:
        for _ in range(count):
            for chunk in order.split(batch_size):
                yield images.crops(chunk, scale, generator)

    return encode_batches(model, batches(), transform).view(count, len(images), -1)


def build_store(
    dataset: DatasetRef,
    model: nn.Module,
    tokenizer: Any,
    transform: EvalTransform,
    few_shot_files: list[Path],
    templates: list[str],
    views: dict[str, int],
    out: str | os.PathLike[str],
    *,
    threads: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    memory_limit_mib: float = DEFAULT_MEMORY_LIMIT_MIB,
) -> dict[str, Any]:
    """Write the dataset's store under ``out``: test and text features, and one support file per k-shot split
    with ``views[aug]`` augmented views per image. Each file carries its key; the store is built in a staging
    folder and renamed onto ``out`` when complete, so a killed build leaves the previous store or none."""
    unknown = sorted(set(views) - set(AUGMENTATIONS))
    if unknown:
        raise ComploraError(f"unknown augmentation(s) {unknown}; known: {', '.join(AUGMENTATIONS)}")
    out = Path(out)
    _check_replaceable(out)
    with staging_folder(out) as staging:
        figures = _build(
            dataset,
            model,
            tokenizer,
            transform,
            few_shot_files,
            templates,
            views,
            staging,
            threads,
            batch_size,
            memory_limit_mib,
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    return figures


def _check_replaceable(out: Path) -> None:
    """Only a store (or an empty folder) is replaced: a wrong --out naming another folder is refused."""
    if out.exists() and (not out.is_dir() or any(not _is_store_file(path.name) for path in out.iterdir())):
        raise ComploraError(f"{out} exists and is not a feature store; choose another --out or remove it")


def _is_store_file(name: str) -> bool:
    return name in (TEST_FILE, TEXT_FILE) or (name.startswith("support_shots") and name.endswith(".safetensors"))


def _build(
    dataset, model, tokenizer, transform, few_shot_files, templates, views, out, threads, batch_size, memory_limit_mib
) -> dict[str, Any]:
    model.eval()
    key = StoreKey(dataset.name, weights_sha256(model), transform.sha256)
    test = open_test_split(dataset, transform, threads)
    split_sha256 = file_sha256(dataset.split_file)
    features = encode_batches(
        model,
        progress_bar(test.pixels.batches(batch_size), desc=f"{dataset.name} test features", unit="batch"),
        transform,
    )
    save_tensors(
        {"features": features, "labels": test.labels},
        out / TEST_FILE,
        key.metadata("test", split_sha256=split_sha256, count=len(test.labels)),
    )
    text = encode_texts(model, tokenizer, test.classnames, templates)
    save_tensors(
        {"features": text},
        out / TEXT_FILE,
        key.metadata("text", templates=list(templates), classnames=test.classnames, split_sha256=split_sha256),
    )
    for path in progress_bar(few_shot_files, desc=f"{dataset.name} k-shot features", unit="split"):
        split = read_few_shot_split(path)
        if split["dataset"] != dataset.name or split["source_split"]["sha256"] != split_sha256:
            raise ComploraError(
                f"k-shot split {path} was not drawn from {dataset.split_file} of {dataset.name}; redraw it"
            )
        tensors = _center(dataset, split["train"], "train", transform, threads, batch_size, model)
        tensors |= _center(dataset, split["val"], "val", transform, threads, batch_size, model)
        images = TrainingImages(
            dataset.root, split["train"], transform.size, memory_limit_mib=memory_limit_mib, threads=threads
        )
        recipe = {}
        for augmentation, count in sorted(views.items()):
            tensors[f"views_{augmentation}"] = _views(
                images, augmentation, count, split["seed"], batch_size, model, transform
            )
            recipe[augmentation] = {"scale": list(AUGMENTATIONS[augmentation]), "views": count}
        save_tensors(
            tensors,
            out / support_file(split["shots"], split["seed"]),
            key.metadata(
                "support",
                few_shot_sha256=file_sha256(path),
                shots=split["shots"],
                seed=split["seed"],
                augmentations=recipe,
            ),
        )
    return {"test_images": len(test.labels), "dim": features.shape[1], "splits": len(few_shot_files)}


def _center(
    dataset: DatasetRef, entries: list[Entry], name: str, transform, threads: int, batch_size: int, model: nn.Module
) -> dict[str, torch.Tensor]:
    pixels = DecodedPixels(dataset.root, entries, transform, threads)
    return {
        name: encode_batches(model, pixels.batches(batch_size), transform),
        f"{name}_labels": torch.tensor([label for _, label, _ in entries], dtype=torch.long),
    }


def _read(
    path: Path, kind: str, key: StoreKey, fix: str, load: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The file's tensors (none unless ``load``) and its record, refused unless the record matches ``key``
    (and, made by the workflow, its content matches the store's seal)."""
    if load:
        verify_file(path, what="feature file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            record = json.loads((handle.metadata() or {}).get("complora", "{}"))
            tensors = {name: handle.get_tensor(name) for name in handle.keys()} if load else {}  # noqa: SIM118
    except FileNotFoundError:
        raise ComploraError(f"feature file {path} does not exist; {fix}") from None
    except (SafetensorError, OSError, json.JSONDecodeError) as error:
        raise ComploraError(f"feature file {path} cannot be read ({error}); {fix}") from None
    expected = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "dataset": key.dataset,
        "weights_sha256": key.weights_sha256,
        "preprocessing_sha256": key.preprocessing_sha256,
    }
    differences = [
        f"{field} {record.get(field)!r} (expected {value!r})"
        for field, value in expected.items()
        if record.get(field) != value
    ]
    if record.get("libraries") != library_versions():
        differences.append(f"image libraries {record.get('libraries')} (today {library_versions()})")
    if differences:
        raise ComploraError(f"feature file {path} is stale or foreign: {'; '.join(differences)}; {fix}")
    return tensors, record


@dataclass(frozen=True)
class TestFeatures:
    features: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True)
class TextFeatures:
    templates: list[str]
    classnames: list[str]
    features: torch.Tensor  # (T, C, D), raw

    def of(self, templates: list[str]) -> torch.Tensor:
        """(len(templates), C, D) raw features of those templates."""
        missing = [template for template in templates if template not in self.templates]
        if missing:
            raise ComploraError(f"the text features hold no prompt {missing}; rebuild the feature store")
        return self.features[[self.templates.index(template) for template in templates]]


@dataclass(frozen=True)
class SupportFeatures:
    """A k-shot split's features: train and val under the evaluation transform, augmented train views."""

    train: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    views: dict[str, torch.Tensor]
    recipe: dict[str, Any] = field(default_factory=dict)  # per augmentation: its crop scale and view count

    def augmented(self, augmentation: str, count: int) -> torch.Tensor:
        """The first ``count`` views of ``augmentation``, refused unless the store cropped them with today's
        scale and holds that many."""
        scale = self.recipe.get(augmentation, {}).get("scale")
        if augmentation in self.views and scale != list(AUGMENTATIONS[augmentation]):
            raise ComploraError(
                f"the feature store's {augmentation!r} views were cropped at scale {scale}, not "
                f"{list(AUGMENTATIONS[augmentation])}; rebuild it"
            )
        stored = self.views.get(augmentation)
        if stored is None or len(stored) < count:
            have = 0 if stored is None else len(stored)
            raise ComploraError(
                f"the feature store holds {have} {augmentation!r} views per image, {count} are needed; rebuild it"
            )
        return stored[:count]


class FeatureStore:
    """A dataset's store, every file checked against ``key`` (and split files) as it is read."""

    def __init__(self, folder: str | os.PathLike[str], key: StoreKey, split_file: str | os.PathLike[str]):
        self.folder, self.key = Path(folder), key
        self.split_sha256 = file_sha256(split_file)
        self.fix = f"rebuild it with `complora features` (the workflow's features rule) for {key.dataset}"

    def _check_split(self, path: Path, record: dict[str, Any], field: str, sha256: str) -> None:
        if record.get(field) != sha256:
            raise ComploraError(f"feature file {path} was made from another split file than today's; {self.fix}")

    def test(self) -> TestFeatures:
        path = self.folder / TEST_FILE
        tensors, record = _read(path, "test", self.key, self.fix)
        self._check_split(path, record, "split_sha256", self.split_sha256)
        return TestFeatures(tensors["features"], tensors["labels"])

    def text(self) -> TextFeatures:
        path = self.folder / TEXT_FILE
        tensors, record = _read(path, "text", self.key, self.fix)
        self._check_split(path, record, "split_sha256", self.split_sha256)
        return TextFeatures(record["templates"], record["classnames"], tensors["features"])

    def support(self, few_shot_file: str | os.PathLike[str], load: bool = True) -> SupportFeatures | None:
        """A k-shot split's features; with ``load`` false only checked (None is returned)."""
        split = read_few_shot_split(few_shot_file)
        path = self.folder / support_file(split["shots"], split["seed"])
        tensors, record = _read(path, "support", self.key, self.fix, load)
        self._check_split(path, record, "few_shot_sha256", file_sha256(few_shot_file))
        if not load:
            return None
        views = {name.removeprefix("views_"): value for name, value in tensors.items() if name.startswith("views_")}
        return SupportFeatures(
            tensors["train"],
            tensors["train_labels"],
            tensors["val"],
            tensors["val_labels"],
            views,
            record.get("augmentations", {}),
        )
