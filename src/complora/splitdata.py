"""Reading CoOp-style split files and the images they list."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import ComploraError

SPLITS = ("train", "val", "test")
Entry = tuple[str, int, str]


def read_split(path: str | os.PathLike[str]) -> dict[str, list[Entry]]:
    """``{"train": [(relpath, label, classname), ...], "val": ..., "test": ...}`` from a split file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ComploraError(f"split file {path} does not exist") from None
    except json.JSONDecodeError as error:
        raise ComploraError(f"split file {path} is not valid JSON ({error})") from error
    splits = {}
    for split in SPLITS:
        if split not in data:
            raise ComploraError(f"split file {path} has no {split!r} list; expected keys {list(SPLITS)}")
        try:
            splits[split] = [(str(relpath), int(label), str(name)) for relpath, label, name in data[split]]
        except (TypeError, ValueError):
            raise ComploraError(f"split file {path}: {split!r} entries must be [relpath, label, classname]") from None
    return splits


def classnames(entries: list[Entry]) -> list[str]:
    """Class names in label order; refuses labels that are not 0..C-1 or that map to two names."""
    names: dict[int, str] = {}
    for _, label, name in entries:
        if names.setdefault(label, name) != name:
            raise ComploraError(f"label {label} is used for both {names[label]!r} and {name!r}")
    if sorted(names) != list(range(len(names))):
        raise ComploraError(f"labels must be 0..{len(names) - 1}, found {sorted(names)}")
    return [names[label] for label in range(len(names))]


def load_images(root: str | os.PathLike[str], entries: list[Entry], size: int) -> torch.Tensor:
    """The listed images as one uint8 tensor (N, size, size, 3), resized with bicubic filtering if needed."""
    root = Path(root)
    arrays = []
    for relpath, _, _ in entries:
        try:
            with Image.open(root / relpath) as image:
                image = image.convert("RGB")
                if image.size != (size, size):
                    image = image.resize((size, size), Image.BICUBIC)
                arrays.append(np.asarray(image))
        except OSError as error:
            raise ComploraError(f"image {root / relpath} cannot be read ({error})") from error
    return torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0, size, size, 3, dtype=torch.uint8)


def labels(entries: list[Entry]) -> torch.Tensor:
    return torch.tensor([label for _, label, _ in entries], dtype=torch.long)


def sample_few_shot(entries: list[Entry], shots: int, seed: int) -> list[Entry]:
    """``shots`` entries per class (CoOp convention), drawn with replacement only where a class has fewer."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[Entry]] = {}
    for entry in entries:
        by_class.setdefault(entry[1], []).append(entry)
    chosen = []
    for label in sorted(by_class):
        items = by_class[label]
        picks = rng.choice(len(items), size=shots, replace=len(items) < shots)
        chosen.extend(items[int(index)] for index in picks)
    return chosen
