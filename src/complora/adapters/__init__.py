"""LoRA and Comp-LoRA adapters for open_clip models (public API)."""

from .config import AdapterConfig, AdapterConfigError, parse_k, resolve_k
from .layer import LoraMultiheadAttention
from .model import (
    AdapterState,
    adapter_layers,
    adapter_state,
    has_adapters,
    inject,
    is_merged,
    merge,
    trainable_parameters,
    unmerge,
)
from .serialization import AdapterMismatchError, export_merged, load_adapter, read_adapter_metadata, save_adapter
from .sites import AdapterTargetError

__all__ = [
    "AdapterConfig",
    "AdapterConfigError",
    "AdapterMismatchError",
    "AdapterState",
    "AdapterTargetError",
    "LoraMultiheadAttention",
    "adapter_layers",
    "adapter_state",
    "export_merged",
    "has_adapters",
    "inject",
    "is_merged",
    "load_adapter",
    "merge",
    "parse_k",
    "read_adapter_metadata",
    "resolve_k",
    "save_adapter",
    "trainable_parameters",
    "unmerge",
]
