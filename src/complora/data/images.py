"""Image files as the model sees them: safe paths, decoding, and open_clip's own evaluation transform.

Evaluation pixels are those of open_clip's ``preprocess_val`` for the backbone, built by open_clip from the
model's preprocess config (size, resize mode, interpolation, mean/std). Its PIL stages (resize, centre crop,
RGB conversion) give uint8 pixels; its last two stages (ToTensor, Normalize) are done on the device, on
whole batches, by :func:`normalize`. Both halves come from the one transform open_clip builds, so
nothing of it is re-implemented here.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from torch import nn
from torchvision import transforms

from ..errors import ComploraError


def image_paths(root: str | os.PathLike[str], relpaths: Sequence[str]) -> list[Path]:
    """``root / relpath`` for each, resolved; refused when one leaves ``root`` (``..``, an absolute path, or a
    symlink pointing outside)."""
    base = Path(root).resolve()
    return [_inside(base, relpath) for relpath in relpaths]


def _inside(base: Path, relpath: str) -> Path:
    if Path(relpath).is_absolute():
        raise ComploraError(
            f"image path {relpath!r} is absolute; split-file paths must be relative to the dataset's image folder "
            f"{base}"
        )
    resolved = (base / relpath).resolve()
    if not resolved.is_relative_to(base):
        raise ComploraError(
            f"image path {relpath!r} leads outside the dataset's image folder {base} (to {resolved}); split-file "
            "paths must stay inside it, and so must the symlinks in it"
        )
    return resolved


FIX = "replace or remove the file (and its entry in the split file), then prepare the dataset again"


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """One clear error for any way an image file can fail to read."""
    try:
        if path.stat().st_size == 0:
            raise ComploraError(f"image {path} is an empty file; {FIX}")
        yield
    except ComploraError:
        raise
    except FileNotFoundError:
        raise ComploraError(f"image {path} does not exist; the dataset folder is incomplete: {FIX}") from None
    # PIL's decoders fail with many exception types (OSError, SyntaxError, ValueError, EOFError, struct.error,
    # zlib.error, DecompressionBombError, ...) depending on the format and the damage.
    except Exception as error:
        raise ComploraError(f"image {path} cannot be decoded ({type(error).__name__}: {error}); {FIX}") from None


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """The decoded image, as stored (any PIL mode), with one clear error for a file that is not a whole image."""
    path = Path(path)
    with _reading(path), Image.open(path) as image:
        image.load()
        return image


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    path = Path(path)
    with _reading(path), Image.open(path) as image:
        width, height = image.size
    return height, width


def decode_rgb(path: str | os.PathLike[str]) -> torch.Tensor:
    """The whole original image as uint8 (H, W, 3): what training crops are cut from. Converted to RGB first,
    as CoOp's and CLIP-LoRA's image reader does."""
    return torch.from_numpy(np.asarray(open_image(path).convert("RGB")).copy())


@dataclass(frozen=True)
class EvalTransform:
    """open_clip's evaluation transform for a backbone, split into uint8 pixels and normalisation."""

    preprocess_cfg: dict[str, Any]
    pixels: transforms.Compose
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int]

    @classmethod
    def for_model(cls, model: nn.Module) -> EvalTransform:
        """From the model's preprocess config, as ``create_model_and_transforms`` builds ``preprocess_val``."""
        return cls.from_preprocess_cfg(model.visual.preprocess_cfg)

    @classmethod
    def from_preprocess_cfg(cls, preprocess_cfg: dict[str, Any]) -> EvalTransform:
        # Tuples, as open_clip makes them: a list that came through JSON would change the stages' reprs.
        config = PreprocessCfg(**{key: tuple(v) if isinstance(v, list) else v for key, v in preprocess_cfg.items()})
        stages = list(image_transform_v2(config, is_train=False).transforms)
        to_tensor = next((i for i, stage in enumerate(stages) if isinstance(stage, transforms.ToTensor)), len(stages))
        tail = stages[to_tensor + 1 :]
        if len(tail) != 1 or not isinstance(tail[0], transforms.Normalize):
            raise ComploraError(f"open_clip's evaluation transform has an unexpected form: {stages}")
        size = config.size if isinstance(config.size, tuple | list) else (config.size, config.size)
        return cls(
            preprocess_cfg={key: list(v) if isinstance(v, tuple) else v for key, v in preprocess_cfg.items()},
            pixels=transforms.Compose(stages[:to_tensor]),
            mean=tuple(float(v) for v in tail[0].mean),
            std=tuple(float(v) for v in tail[0].std),
            size=(int(size[0]), int(size[1])),
        )

    def describe(self) -> dict[str, Any]:
        """What decides the pixels and their normalisation; its hash keys the evaluation cache."""
        return {
            "preprocess_cfg": self.preprocess_cfg,
            "pixel_stages": [repr(stage) for stage in self.pixels.transforms],
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()

    def __call__(self, image: Image.Image) -> np.ndarray:
        """uint8 (H, W, 3): ``preprocess_val`` up to, not including, ToTensor and Normalize."""
        array = np.array(self.pixels(image))
        if array.shape != (*self.size, 3) or array.dtype != np.uint8:
            raise ComploraError(f"open_clip's transform gave {array.dtype} {array.shape}, expected uint8 {self.size}")
        return array

    def load(self, path: str | os.PathLike[str]) -> np.ndarray:
        path = Path(path)
        image = open_image(path)
        with _reading(path):
            return self(image)

    def normalization(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Normalize's mean and std as (1, 3, 1, 1) float32 tensors on ``device``: made once per loop, so a
        GPU loop copies nothing but the images to the device."""
        shape = (1, len(self.mean), 1, 1)
        return torch.tensor(self.mean).view(shape).to(device), torch.tensor(self.std).view(shape).to(device)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) as ToTensor + Normalize (``EvalTransform.normalization``)."""
    return (images.permute(0, 3, 1, 2).float().div_(255) - mean) / std
