"""Contrastive pretraining of the demo's tiny CLIP on captioned scenes (stands in for downloading weights).

Pretraining images are day-time scenes drawn from their own seed stream; any that happens to equal a
downstream test image pixel for pixel is dropped, so test splits never leak into pretraining. Night
renders never appear (that is what makes ``demo_night_shapes`` a shifted task), and captions rarely name
the fill pattern or the rare colours (see ``world.CAPTION_MENTION`` and ``world.RARE_COLORS``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from tqdm import tqdm

from complora.atomic import write_json
from complora.data.images import EvalTransform, normalize
from complora.data.testset import ArrayPixels, DatasetRef, TestSplit, open_test_split
from complora.errors import ComploraError
from complora.evaluation import DEFAULT_TEMPLATE, zero_shot_accuracies
from complora.fingerprint import weights_sha256
from complora.models import load_clip
from complora.runinfo import package_versions, peak_rss_mib
from complora.tensorfile import save_tensors
from complora.text import encode_text

from .datasets import WORLD_VERSION
from .render import render
from .world import caption, sample_scene

ARCHITECTURE = "demo-vit-tiny"
CHECKPOINT_FILE = "open_clip_model.safetensors"
METADATA_FILE = "metadata.json"
POOL_STREAM = 7919  # seeds pretraining scenes apart from every downstream split's generators
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainSettings:
    steps: int = 700
    batch_size: int = 256
    pool_size: int = 24000
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.1

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value <= 0 and name != "weight_decay":
                raise ComploraError(f"{name.replace('_', '-')}: must be positive, got {value}")
        if self.batch_size > self.pool_size:
            raise ComploraError(f"batch-size {self.batch_size} exceeds pool-size {self.pool_size}; raise pool-size")
        if self.warmup_fraction >= 1:
            raise ComploraError(f"warmup-fraction: must be below 1, got {self.warmup_fraction}")

    @property
    def warmup_steps(self) -> int:
        return max(1, round(self.warmup_fraction * self.steps))


@dataclass(frozen=True)
class QualityGates:
    """What a usable demo world needs: some tasks known zero-shot, some not, none at chance."""

    min_good_tasks: int = 2
    good_accuracy: float = 60.0
    poor_accuracy: float = 40.0

    def check(self, accuracy: dict[str, float], chance: dict[str, float]) -> dict[str, Any]:
        good = [task for task, value in accuracy.items() if value >= self.good_accuracy]
        poor = [task for task, value in accuracy.items() if value <= self.poor_accuracy]
        at_chance = [task for task, value in accuracy.items() if value <= chance[task]]
        enough_good = len(good) >= self.min_good_tasks
        results = {
            f"at_least_{self.min_good_tasks}_tasks_at_or_above_{self.good_accuracy:g}": enough_good,
            f"at_least_one_task_at_or_below_{self.poor_accuracy:g}": bool(poor),
            "every_task_above_chance": not at_chance,
        }
        return {**results, "passed": all(results.values()), "good": good, "poor": poor, "at_chance": at_chance}


def _pixels_sha256(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def build_pool(seed: int, size: int, image_size: int, excluded: set[str]) -> tuple[np.ndarray, list, int]:
    """``size`` day-time scenes and their renders, skipping any render whose pixels are in ``excluded``."""
    images, scenes, dropped, index = [], [], 0, 0
    with tqdm(total=size, desc="pretraining images", unit="img", leave=False) as bar:
        while len(images) < size:
            rng = np.random.default_rng([seed, POOL_STREAM, index])
            index += 1
            scene = sample_scene(rng)
            pixels = render(scene, image_size, rng)
            if _pixels_sha256(pixels) in excluded:
                dropped += 1
                continue
            images.append(pixels)
            scenes.append(scene)
            bar.update()
    return np.stack(images), scenes, dropped


def read_world(world: Path, image_size: int) -> dict[str, Any]:
    """The world's manifest, checked: right version, the model's image size, split files as recorded."""
    manifest_path = world / "world.json"
    if not manifest_path.is_file():
        raise ComploraError(f"--data {world}: no world.json; generate the world with `complora demo-data` first")
    try:
        manifest = json.loads(manifest_path.read_text())
        version, size, tasks = manifest["version"], manifest["sizes"]["image_size"], manifest["tasks"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ComploraError(f"{manifest_path} is not a demo world manifest ({error!r}); regenerate the world") from None
    if version != WORLD_VERSION:
        raise ComploraError(
            f"{manifest_path}: world version {version}, this complora writes {WORLD_VERSION}; regenerate the world"
        )
    if size != image_size:
        raise ComploraError(
            f"{manifest_path}: sizes.image_size is {size} but {ARCHITECTURE} takes {image_size}; regenerate the "
            f"world with --image-size {image_size}"
        )
    for task, entry in tasks.items():
        split_file = world / entry["split_file"]
        if not split_file.is_file() or hashlib.sha256(split_file.read_bytes()).hexdigest() != entry["split_sha256"]:
            raise ComploraError(f"{split_file} is missing or differs from its hash in world.json; regenerate {task}")
    return {**manifest, "sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest()}


def load_test_sets(world: Path, manifest: dict[str, Any], transform: EvalTransform) -> dict[str, TestSplit]:
    """Every task's test split, its preprocessed pixels in memory (the world is small)."""
    tests = {}
    for task in manifest["tasks"]:
        test = open_test_split(DatasetRef(task, world / task, world / task / "split.json"), transform)
        test.pixels = ArrayPixels(np.concatenate(list(test.pixels.batches(len(test.pixels)))))
        tests[task] = test
    return tests


def zero_shot_top1(
    model: torch.nn.Module, tokenizer: Any, tests: dict[str, TestSplit], transform: EvalTransform
) -> dict[str, float]:
    """Zero-shot top-1 (%) of every task in ``tests`` with the default prompt, rounded to 2 decimals."""
    return {
        task: round(zero_shot_accuracies(model, tokenizer, test, [DEFAULT_TEMPLATE], transform)[0].accuracy, 2)
        for task, test in tests.items()
    }


def _learning_rate(step: int, settings: PretrainSettings) -> float:
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def pretrain(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    seed: int = 0,
    settings: PretrainSettings | None = None,
    gates: QualityGates | None = None,
) -> dict[str, Any]:
    """Pretrain ``demo-vit-tiny`` on the world in ``data``; write the checkpoint and ``metadata.json`` to
    ``out`` (metadata last, marking a finished run) and return the metadata."""
    settings, gates = settings or PretrainSettings(), gates or QualityGates()
    world, out = Path(data), Path(out)
    start = time.perf_counter()
    model = load_clip(ARCHITECTURE, "none", seed=seed)
    image_size = model.visual.image_size[0]
    manifest = read_world(world, image_size)
    transform = EvalTransform.for_model(model)
    tests = load_test_sets(world, manifest, transform)
    excluded = {
        _pixels_sha256(image)
        for test in tests.values()
        for batch in test.pixels.batches(len(test.pixels))
        for image in batch
    }
    normalization = transform.normalization()
    pool, scenes, dropped = build_pool(seed, settings.pool_size, image_size, excluded)
    data_seconds = time.perf_counter() - start

    tokenizer = open_clip.get_tokenizer(ARCHITECTURE)
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    rng = np.random.default_rng([seed, POOL_STREAM + 1])
    model.train()
    bar = tqdm(range(settings.steps), desc="pretraining", unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, settings)
        batch = rng.choice(len(pool), size=settings.batch_size, replace=False)
        images = normalize(torch.from_numpy(pool[batch]), *normalization)
        texts = tokenizer([caption(scenes[i], rng) for i in batch])
        # CLIP's forward, with the captions on their exact short context.
        image_features = model.encode_image(images, normalize=True)
        text_features = encode_text(model, texts, normalize=True)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % 100 == 0 or step == settings.steps - 1:
            log.info("step %d loss %.4f", step, loss.item())
    model.eval()
    train_seconds = time.perf_counter() - start - data_seconds

    accuracy = zero_shot_top1(model, tokenizer, tests, transform)
    chance = {task: 100.0 / len(test.classnames) for task, test in tests.items()}
    metadata = {
        "architecture": ARCHITECTURE,
        "seed": seed,
        "steps": settings.steps,
        "settings": {**asdict(settings), "warmup_steps": settings.warmup_steps},
        "threads": torch.get_num_threads(),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "data_seconds": round(data_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "peak_rss_mib": peak_rss_mib(),
        "weights_sha256": weights_sha256(model),
        "pool": {"images": len(pool), "dropped_as_test_duplicates": dropped},
        "world": {"seed": manifest["seed"], "sizes": manifest["sizes"], "world_json_sha256": manifest["sha256"]},
        "device": "cpu",
        "zero_shot_template": DEFAULT_TEMPLATE,
        "zero_shot_top1": accuracy,
        "chance_top1": {task: round(value, 2) for task, value in chance.items()},
        "quality_gates": gates.check(accuracy, chance),
        "versions": package_versions(),
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ComploraError(f"--out {out}: cannot create the folder ({error})") from error
    (out / METADATA_FILE).unlink(missing_ok=True)
    save_tensors(dict(model.state_dict()), out / CHECKPOINT_FILE, {"format": "open_clip"})
    write_json(out / METADATA_FILE, metadata)
    return metadata
