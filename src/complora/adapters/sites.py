"""Where the adaptable attention modules live in an open_clip model.

An explicit registry of tower locations keeps the search honest: a model whose towers are not where
open_clip 3.3.0 puts them, or whose attention is not ``nn.MultiheadAttention``, is refused with a
message instead of being silently left unadapted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from complora.errors import ComploraError

from .config import AdapterConfig

# Dotted paths of each tower's transformer, in the order tried: CLIP keeps the text transformer at the
# top level, CustomTextCLIP and CoCa under `text`.
TOWER_TRANSFORMERS: dict[str, tuple[str, ...]] = {
    "vision": ("visual.transformer",),
    "text": ("transformer", "text.transformer"),
}
TOWER_OWNERS = {"vision": "visual", "text": "text"}
QKV_INDEX = {"q": 0, "k": 1, "v": 2}


class AdapterTargetError(ComploraError, ValueError):
    """The model has no attention module that matches the adapter configuration."""


@dataclass(frozen=True)
class AttentionSite:
    """One attention module to adapt: its dotted name, tower, block index and the block holding it."""

    name: str
    tower: str
    block: int
    parent: nn.Module

    @property
    def module(self) -> nn.Module:
        return self.parent.attn


def _get(model: nn.Module, dotted: str) -> nn.Module | None:
    module: nn.Module | None = model
    for part in dotted.split(".") if dotted else ():
        module = getattr(module, part, None)
        if not isinstance(module, nn.Module):
            return None
    return module


def _tower_transformer(model: nn.Module, tower: str) -> tuple[str, nn.Module]:
    for path in TOWER_TRANSFORMERS[tower]:
        transformer = _get(model, path)
        if transformer is not None and isinstance(getattr(transformer, "resblocks", None), nn.ModuleList):
            return path, transformer
    owner = _get(model, TOWER_OWNERS[tower])
    found = f"a {type(owner).__name__}" if owner is not None else "missing"
    raise AdapterTargetError(
        f"towers: the {tower} tower of this {type(model).__name__} is {found}, with no transformer "
        f"blocks to adapt (looked for {' or '.join(p + '.resblocks' for p in TOWER_TRANSFORMERS[tower])}); "
        f"adapt a ViT-based open_clip model or drop '{tower}' from towers"
    )


def _selected_blocks(tower: str, n_blocks: int, layers: str | tuple[int, ...]) -> list[int]:
    if layers == "all":
        return list(range(n_blocks))
    out_of_range = [index for index in layers if not -n_blocks <= index < n_blocks]
    if out_of_range:
        raise AdapterTargetError(
            f"layers: block index {out_of_range} out of range for the {tower} tower, which has "
            f"{n_blocks} blocks (valid: 0..{n_blocks - 1}, or negative from the end)"
        )
    return sorted({index % n_blocks for index in layers})


def check_supported_attention(name: str, attn: nn.Module) -> None:
    """Refuse attention modules whose computation the adapter layer does not reproduce exactly."""
    if not isinstance(attn, nn.MultiheadAttention):
        raise AdapterTargetError(
            f"{name} is a {type(attn).__module__}.{type(attn).__name__}, an attention module complora does "
            "not know how to adapt (only torch.nn.MultiheadAttention, as in open_clip_torch==3.3.0); "
            "install open_clip_torch==3.3.0 or choose towers whose blocks use nn.MultiheadAttention"
        )
    unsupported = []
    if not attn._qkv_same_embed_dim:
        unsupported.append("separate key/value dimensions")
    if attn.bias_k is not None:
        unsupported.append("bias_k/bias_v")
    if attn.add_zero_attn:
        unsupported.append("add_zero_attn")
    if unsupported:
        raise AdapterTargetError(f"{name}: nn.MultiheadAttention with {', '.join(unsupported)} is not supported")


def find_attention_sites(model: nn.Module, config: AdapterConfig) -> list[AttentionSite]:
    """The attention modules ``config`` selects, in tower then block order. Never returns an empty list."""
    sites = []
    for tower in config.towers:
        path, transformer = _tower_transformer(model, tower)
        blocks = transformer.resblocks
        for index in _selected_blocks(tower, len(blocks), config.layers):
            block = blocks[index]
            name = f"{path}.resblocks.{index}.attn"
            if not hasattr(block, "attn"):
                raise AdapterTargetError(f"{name}: block {type(block).__name__} has no `attn` module to adapt")
            sites.append(AttentionSite(name=name, tower=tower, block=index, parent=block))
    if not sites:
        raise AdapterTargetError("the adapter configuration selects no attention module in this model")
    return sites


def matrix_weight(attn: nn.MultiheadAttention, target: str) -> torch.Tensor:
    """The pretrained weight of one adapted map: a third of the fused input projection, or the output one."""
    if target == "o":
        return attn.out_proj.weight
    size = attn.embed_dim
    start = QKV_INDEX[target] * size
    return attn.in_proj_weight[start : start + size]


def adapted_matrices(model: nn.Module, config: AdapterConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, pretrained weight)`` of every matrix ``config`` adapts, named ``<attention>.<target>``."""
    for site in find_attention_sites(model, config):
        attn = getattr(site.module, "base_layer", site.module)
        check_supported_attention(site.name, attn)
        for target in config.targets:
            yield f"{site.name}.{target}", matrix_weight(attn, target)
