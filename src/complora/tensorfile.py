"""Writing safetensors files atomically and byte-reproducibly."""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file

from .atomic import atomic_path


def _canonicalize_header(path: os.PathLike[str]) -> None:
    # safetensors serialises its header from a hash map, so key order (and so the bytes) varies between
    # runs; rewriting it with sorted keys, padded to the same length, keeps every data offset valid.
    with open(path, "r+b") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
        canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(canonical) > size:
            raise RuntimeError(f"canonical safetensors header of {path} is longer than the original")
        handle.seek(8)
        handle.write(canonical.ljust(size, b" "))


def save_tensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> None:
    """Save ``tensors`` to ``path`` atomically; the same tensors and metadata give the same bytes."""
    with atomic_path(path) as temporary:
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(temporary), metadata=metadata)
        _canonicalize_header(temporary)
