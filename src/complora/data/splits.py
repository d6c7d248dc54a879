"""CoOp-style split files: reading them, and drawing k-shot splits from them (no torch needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import file_sha256, verify_file
from ..atomic import atomic_path
from ..errors import ComploraError
from .base_to_new import ALL, BASE_TO_NEW, PROTOCOLS, base_classes

SPLITS = ("train", "val", "test")
Entry = tuple[str, int, str]


def read_split(path: str | os.PathLike[str]) -> dict[str, list[Entry]]:
    """``{"train": [(relpath, label, classname), ...], "val": ..., "test": ...}`` from a split file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ComploraError(f"split file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ComploraError(f"split file {path} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ComploraError(f"split file {path} is not a mapping of train/val/test lists")
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


FEW_SHOT_FORMAT = "complora-few-shot-split"
MAX_VAL_SHOTS = 4  # CoOp keeps min(shots, 4) validation items per class


def _draw(entries: list[Entry], shots: int, rng: np.random.Generator) -> list[Entry]:
    by_class: dict[int, list[Entry]] = {}
    for entry in entries:
        by_class.setdefault(entry[1], []).append(entry)
    chosen = []
    for label in sorted(by_class):
        items = by_class[label]
        picks = rng.choice(len(items), size=shots, replace=len(items) < shots)
        chosen.extend(items[int(index)] for index in picks)
    return chosen


def sample_few_shot(entries: list[Entry], shots: int, seed: int) -> list[Entry]:
    """``shots`` entries per class (CoOp convention), drawn with replacement only where a class has fewer."""
    return _draw(entries, shots, np.random.default_rng(seed))


def few_shot_split(
    split_file: str | os.PathLike[str], dataset: str, shots: int, seed: int, protocol: str = ALL
) -> dict[str, Any]:
    """The k-shot split of ``split_file``: one generator seeded with ``seed`` draws ``shots`` train items per
    class, then ``min(shots, 4)`` val items per class. Paths stay relative to the dataset's image folder.

    Under the base-to-new protocol (complora.data.base_to_new) only the base classes are drawn from and
    named; the file records the protocol and the base-class count (an all-class split's bytes are as before)."""
    if protocol not in PROTOCOLS:
        raise ComploraError(f"protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    if shots < 1:
        raise ComploraError(f"shots must be 1 or more, got {shots}")
    if seed < 0:
        raise ComploraError(f"seed must be 0 or more, got {seed}")
    splits = read_split(split_file)
    for split in ("train", "val"):
        if not splits[split]:
            raise ComploraError(f"split file {split_file}: the {split!r} list is empty; k-shot sampling needs it")
    names = classnames(splits["test"])
    extra: dict[str, Any] = {}
    if protocol == BASE_TO_NEW:
        count = _base_count(split_file, len(names))
        extra = {"protocol": BASE_TO_NEW, "base_classes": count, "all_classes": len(names)}
        names = names[:count]
        splits = {split: [entry for entry in entries if entry[1] < count] for split, entries in splits.items()}
    rng = np.random.default_rng(seed)
    train = _draw(splits["train"], shots, rng)
    val = _draw(splits["val"], min(shots, MAX_VAL_SHOTS), rng)
    return {
        **extra,
        "format": FEW_SHOT_FORMAT,
        "format_version": 1,
        "dataset": dataset,
        "shots": shots,
        "seed": seed,
        "source_split": {"file": Path(split_file).name, "sha256": file_sha256(split_file)},
        "classnames": names,
        "train": [list(entry) for entry in train],
        "val": [list(entry) for entry in val],
    }


def _base_count(split_file: str | os.PathLike[str], classes: int) -> int:
    try:
        return base_classes(classes)
    except ValueError:
        raise ComploraError(
            f"split file {split_file}: {classes} class(es); base-to-new splits the classes in two and needs at "
            "least 2 (set protocol: all)"
        ) from None


def split_protocol(split: dict[str, Any]) -> str:
    """The protocol a k-shot split was drawn for."""
    return split.get("protocol", ALL)


def write_few_shot_split(split: dict[str, Any], out: str | os.PathLike[str]) -> None:
    """Write atomically, in a canonical form: the same split gives the same bytes."""
    with atomic_path(out) as temporary:
        temporary.write_text(json.dumps(split, indent=1, sort_keys=True) + "\n")


def read_few_shot_split(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A k-shot split file written by :func:`write_few_shot_split`, checked for its format (and, made by the
    workflow, against its seal)."""
    verify_file(path, what="k-shot split")
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ComploraError(f"k-shot split file {path} does not exist; make it with `complora split`") from None
    except json.JSONDecodeError as error:
        raise ComploraError(f"k-shot split file {path} is not valid JSON ({error})") from error
    if not isinstance(data, dict) or data.get("format") != FEW_SHOT_FORMAT:
        raise ComploraError(
            f"{path} is not a k-shot split file (format {FEW_SHOT_FORMAT!r}); make it with `complora split`"
        )
    try:
        data["train"] = [(str(relpath), int(label), str(name)) for relpath, label, name in data["train"]]
        data["val"] = [(str(relpath), int(label), str(name)) for relpath, label, name in data["val"]]
    except (KeyError, TypeError, ValueError):
        raise ComploraError(
            f"k-shot split file {path}: 'train' and 'val' must list [relpath, label, classname]"
        ) from None
    return data
