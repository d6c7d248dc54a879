"""Content hashes that key caches and provenance: a hash of a model's weights or of any named tensors."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

# Adapter parameters and the wrapper's extra level are not part of the pretrained weights.
_ADAPTER_KEY_PARTS = (".lora_A.", ".lora_B.")
_WRAPPER_LEVEL = ".base_layer."


def tensors_sha256(items: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes, in the order given."""
    digest = hashlib.sha256()
    for name, tensor in items:
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy())
    return digest.hexdigest()


def base_state(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's own weights under their open_clip names, adapters left out, sorted by name."""
    state = model.state_dict()
    items = (
        (name.replace(_WRAPPER_LEVEL, "."), tensor)
        for name, tensor in state.items()
        if not any(part in name for part in _ADAPTER_KEY_PARTS)
    )
    return iter(sorted(items, key=lambda item: item[0]))


def weights_sha256(model: nn.Module) -> str:
    """Hash of the model's weights (adapters excluded): the key of every cache derived from them."""
    return tensors_sha256(base_state(model))
