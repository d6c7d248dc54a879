"""A k-shot training set and CLIP-LoRA's augmentation: RandomResizedCrop(size, scale, ratio 3/4-4/3,
bicubic) and a horizontal flip, cut from each *original* image, every draw from the run's own generator.

Decoded originals are held in memory when they fit ``memory_limit_mib`` (their size is known from the
file headers before anything is decoded); a larger set (ImageNet 16-shot: 16,000 images, 6-9 GB decoded)
is decoded batch by batch by a pool of threads. Both give the same crops: the crop parameters are drawn
in the calling thread, in order, before any decoding.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from .images import decode_rgb, image_paths, image_size
from .splits import Entry

DEFAULT_MEMORY_LIMIT_MIB = 2048
RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class Crop:
    top: int
    left: int
    height: int
    width: int
    flip: bool


def draw_crop(height: int, width: int, scale: tuple[float, float], generator: torch.Generator) -> Crop:
    """torchvision's RandomResizedCrop sampling (10 tries, then a centre crop clamped to the ratio range) and a
    coin for the flip. The aspect ratio is drawn in float64 where torchvision uses float32, as complora
    always has: the published demo's crops stay what they were."""
    area = height * width
    for _ in range(10):
        target = area * torch.empty(1).uniform_(*scale, generator=generator).item()
        log_ratio = torch.empty(1).uniform_(math.log(RATIO[0]), math.log(RATIO[1]), generator=generator).item()
        w = round(math.sqrt(target * math.exp(log_ratio)))
        h = round(math.sqrt(target / math.exp(log_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            break
    else:
        w, h = width, height
        if width / height < RATIO[0]:
            h = round(width / RATIO[0])
        elif width / height > RATIO[1]:
            w = round(height * RATIO[1])
        top, left = (height - h) // 2, (width - w) // 2
    return Crop(top, left, h, w, torch.rand(1, generator=generator).item() < 0.5)


def cut(image: torch.Tensor, crop: Crop, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (H, W, 3) original -> uint8 (size, 3): the crop resized (bicubic, antialiased), maybe flipped."""
    chw = image.permute(2, 0, 1)
    out = TF.resized_crop(chw, crop.top, crop.left, crop.height, crop.width, list(size), InterpolationMode.BICUBIC,
                          antialias=True)  # fmt: skip
    if crop.flip:
        out = TF.horizontal_flip(out)
    return out.permute(1, 2, 0)


class TrainingImages:
    """The k-shot images of a run, cropped on demand; labels in split order."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        entries: list[Entry],
        size: tuple[int, int],
        *,
        memory_limit_mib: float = DEFAULT_MEMORY_LIMIT_MIB,
        threads: int = 1,
    ) -> None:
        self.size = size
        self.paths = image_paths(root, [relpath for relpath, _, _ in entries])
        self.labels = torch.tensor([label for _, label, _ in entries], dtype=torch.long)
        self._pool = ThreadPoolExecutor(threads) if threads > 1 else None
        unique = sorted(set(self.paths))
        shapes = dict(zip(unique, self._map(image_size, unique), strict=True))
        self.shapes = [shapes[path] for path in self.paths]
        self.decoded_mib = sum(h * w * 3 for h, w in shapes.values()) / 2**20
        self.in_memory = self.decoded_mib <= memory_limit_mib
        self._originals: dict[Path, torch.Tensor] = {}
        if self.in_memory:
            self._originals = dict(zip(unique, self._map(decode_rgb, unique), strict=True))

    def __len__(self) -> int:
        return len(self.paths)

    def _map(self, function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return list((self._pool.map if self._pool else map)(function, items))

    def _original(self, path: Path) -> torch.Tensor:
        original = self._originals.get(path)
        return original if original is not None else decode_rgb(path)

    def crops(self, indices: torch.Tensor, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        """uint8 (B, H, W, 3): an augmented view of each indexed image."""
        jobs = [(int(i), draw_crop(*self.shapes[int(i)], scale, generator)) for i in indices]
        views = self._map(lambda job: cut(self._original(self.paths[job[0]]), job[1], self.size), jobs)
        return torch.stack(views)
