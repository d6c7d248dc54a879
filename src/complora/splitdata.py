"""Loading the images and labels a split file lists."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import ComploraError
from .splitfile import Entry


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
