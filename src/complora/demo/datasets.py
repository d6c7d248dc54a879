"""Writing the demo world's downstream datasets in the on-disk form of the real benchmarks.

Per task: ``images/<class>/<split>_<index>.png``, a CoOp-style ``split.json``
(``{"train": [[relpath, label, classname], ...], "val": ..., "test": ...}``, paths relative to the task
folder), ``classnames.txt`` (one per line, in label order) and ``captions.json`` (relpath -> caption).
``world.json`` at the top records the seed, sizes, tasks and each split file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image
from tqdm import tqdm

from complora import __version__
from complora.atomic import default_permissions
from complora.errors import ComploraError

from .render import render
from .tasks import TASKS, DemoTask
from .world import caption, sample_scene

SPLITS = ("train", "val", "test")
WORLD_VERSION = 2  # bump whenever the same seed would draw different images or captions


@dataclass(frozen=True)
class DemoSizes:
    """Images per class in each split, and the image side in pixels."""

    train_per_class: int = 32
    val_per_class: int = 8
    test_per_class: int = 30
    image_size: int = 32

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 1:
                raise ComploraError(f"{name.replace('_', '-')}: must be at least 1, got {value}")

    def per_class(self, split: str) -> int:
        return getattr(self, f"{split}_per_class")


def _dump(data: object) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def _write_task(root: Path, task: DemoTask, task_index: int, seed: int, sizes: DemoSizes) -> str:
    """Write one task's images, split, class names and captions; returns the split file's sha256."""
    split_entries: dict[str, list[list[object]]] = {split: [] for split in SPLITS}
    captions = {}
    for label, (value, classname) in enumerate(zip(task.values, task.classnames, strict=True)):
        folder = root / "images" / classname.replace(" ", "_")
        folder.mkdir(parents=True)
        for split_index, split in enumerate(SPLITS):
            for index in range(sizes.per_class(split)):
                # One generator per image: any image can be regenerated alone, in any order.
                rng = np.random.default_rng([seed, task_index, split_index, label, index])
                scene = sample_scene(rng, night=task.night, **{task.attribute: value})
                relpath = f"images/{folder.name}/{split}_{index:04d}.png"
                Image.fromarray(render(scene, sizes.image_size, rng)).save(root / relpath)
                split_entries[split].append([relpath, label, classname])
                captions[relpath] = caption(scene, rng)
    split_text = _dump(split_entries)
    (root / "split.json").write_text(split_text)
    (root / "classnames.txt").write_text("".join(f"{name}\n" for name in task.classnames))
    (root / "captions.json").write_text(_dump(captions))
    return hashlib.sha256(split_text.encode()).hexdigest()


def write_demo_world(out: str | os.PathLike[str], seed: int = 0, sizes: DemoSizes | None = None) -> Path:
    """Generate every demo task under ``out``, deterministically from ``seed``.

    Everything is written into a temporary sibling folder that is renamed to ``out`` at the end, so an
    interrupted run leaves no folder that looks finished. ``out`` must not exist yet.
    """
    sizes = sizes or DemoSizes()
    target = Path(out)
    if target.exists():
        raise ComploraError(f"--out {target} already exists; remove it or choose another folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    except OSError as error:
        raise ComploraError(f"--out {target}: cannot create the folder ({error})") from error
    try:
        # numpy draws the scenes and Pillow/zlib encode the PNGs: their versions decide the bytes.
        versions = {"complora": __version__, "numpy": np.__version__, "pillow": PIL.__version__}
        manifest = {"version": WORLD_VERSION, "seed": seed, "sizes": asdict(sizes), "versions": versions, "tasks": {}}
        for task_index, task in enumerate(tqdm(list(TASKS.values()), desc="demo tasks", unit="task")):
            split_sha256 = _write_task(staging / task.name, task, task_index, seed, sizes)
            manifest["tasks"][task.name] = {
                **asdict(task),
                "num_classes": len(task.classnames),
                "split_file": f"{task.name}/split.json",
                "split_sha256": split_sha256,
            }
        (staging / "world.json").write_text(_dump(manifest))
        default_permissions(staging, directory=True)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target
