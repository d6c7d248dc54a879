"""A dataset's test split as evaluation reads it: labels, class names, and pixels streamed batch by batch
from its evaluation cache or, where there is none, decoded as they are needed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import ComploraError
from .evalcache import decode_all, open_eval_cache
from .images import EvalTransform
from .splits import Entry, classnames, read_split


@dataclass(frozen=True)
class DatasetRef:
    """A dataset's image folder, its CoOp split file, and (optionally) its test split's evaluation cache."""

    name: str
    root: Path
    split_file: Path
    eval_cache: Path | None = None


class PixelSource(Protocol):
    def __len__(self) -> int: ...

    def batches(self, batch_size: int) -> Iterator[np.ndarray]: ...


class DecodedPixels:
    """Batches decoded from the image files on the fly, by ``threads`` threads."""

    def __init__(self, root: str | os.PathLike[str], entries: list[Entry], transform: EvalTransform, threads: int):
        self.root, self.entries, self.transform, self.threads = root, entries, transform, threads

    def __len__(self) -> int:
        return len(self.entries)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        batch: list[np.ndarray] = []
        for array in decode_all(self.root, self.entries, self.transform, self.threads):
            batch.append(array)
            if len(batch) == batch_size:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)


class ArrayPixels:
    """Batches of uint8 (N, H, W, 3) pixels already in memory."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels

    def __len__(self) -> int:
        return len(self.pixels)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.pixels), batch_size):
            yield self.pixels[start : start + batch_size]


@dataclass
class TestSplit:
    name: str
    labels: torch.Tensor
    classnames: list[str]
    pixels: PixelSource


def open_test_split(dataset: DatasetRef, transform: EvalTransform, threads: int = 1) -> TestSplit:
    """The test split of ``dataset``: from its evaluation cache when it has one (checked), else decoded."""
    entries = read_split(dataset.split_file)["test"]
    if not entries:
        raise ComploraError(f"split file {dataset.split_file}: the 'test' list is empty; nothing to evaluate on")
    if dataset.eval_cache is not None:
        pixels: PixelSource = open_eval_cache(dataset.eval_cache, dataset.split_file, transform)
    else:
        pixels = DecodedPixels(dataset.root, entries, transform, threads)
    labels = torch.tensor([label for _, label, _ in entries], dtype=torch.long)
    return TestSplit(dataset.name, labels, classnames(entries), pixels)
