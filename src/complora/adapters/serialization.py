"""Adapter checkpoints (adapter weights alone, apart from the base model) and merged full checkpoints.

An adapter directory holds ``adapter_model.safetensors`` and ``adapter_config.json``; the JSON is
written last, so a directory without it is an interrupted save and is refused on load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from complora.atomic import write_json
from complora.errors import ComploraError
from complora.fingerprint import base_state, weights_sha256
from complora.models import UNKNOWN, model_origin
from complora.runinfo import package_versions
from complora.subspace import Projector
from complora.tensorfile import save_tensors

from .config import AdapterConfig
from .model import adapter_layers, adapter_state, has_adapters, inject, is_merged, merge, unmerge, unmerged

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
FORMAT = "complora-adapter"
REQUIRED_KEYS = ("adapter", "matrices", "directions", "projector_sha256", "base")


class AdapterMismatchError(ComploraError):
    """An adapter checkpoint does not fit the model it is loaded onto."""


def _adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    tensors = {}
    for layer_name, layer in adapter_layers(model):
        for target in layer.targets:
            tensors[f"{layer_name}.{target}.lora_A"] = layer.lora_A[target].detach()
            tensors[f"{layer_name}.{target}.lora_B"] = layer.lora_B[target].detach()
    return tensors


def _base_description(model: nn.Module) -> dict[str, Any]:
    with unmerged(model):
        return {**model_origin(model), "weights_sha256": weights_sha256(model)}


def save_adapter(
    model: nn.Module, path: str | os.PathLike[str], *, base_model: str | None = None, pretrained: str | None = None
) -> Path:
    """Write the adapter weights and their metadata (base model, versions, config, projector hash).

    The base model's name and pretrained tag come from :func:`complora.models.load_clip`; for a model
    created otherwise pass them as ``base_model`` and ``pretrained``.
    """
    state = adapter_state(model)
    directory = Path(path)
    base = _base_description(model)
    base.update({key: value for key, value in (("model", base_model), ("pretrained", pretrained)) if value})
    if UNKNOWN in (base["model"], base["pretrained"]):
        raise ComploraError(
            "save_adapter: the base model's name or pretrained tag is unknown; create the model with "
            "complora.models.load_clip or pass base_model= and pretrained="
        )
    tensors = _adapter_tensors(model)
    metadata = {
        "format": FORMAT,
        "format_version": 1,
        "adapter": state.config.to_dict(),
        "matrices": list(state.matrices),
        "directions": state.directions,
        "projector_sha256": state.projector_sha256,
        "base": base,
        "trainable_parameters": sum(tensor.numel() for tensor in tensors.values()),
        "versions": package_versions(),
    }
    # The JSON marks a finished save: drop an older one first so new weights never sit beside old metadata.
    (directory / CONFIG_FILE).unlink(missing_ok=True)
    save_tensors(tensors, directory / WEIGHTS_FILE)
    write_json(directory / CONFIG_FILE, metadata)
    return directory


def read_adapter_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    config_file = Path(path) / CONFIG_FILE
    if not config_file.is_file():
        raise AdapterMismatchError(
            f"{config_file} is missing: {path} is not a finished adapter checkpoint; save it again"
        )
    try:
        metadata = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise AdapterMismatchError(f"{config_file} is not valid JSON ({error}); save the adapter again") from error
    if metadata.get("format") != FORMAT:
        raise AdapterMismatchError(f"{config_file}: format is {metadata.get('format')!r}, expected {FORMAT!r}")
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise AdapterMismatchError(f"{config_file} lacks the fields {missing}; save the adapter again")
    return metadata


def _check_base(path: Path, saved: dict[str, Any], model: nn.Module) -> None:
    current = _base_description(model)
    if saved["weights_sha256"] != current["weights_sha256"]:
        raise AdapterMismatchError(
            f"adapter {path} was trained on base {saved['model']}/{saved['pretrained']} "
            f"(weights {saved['weights_sha256'][:16]}…) but this model is {current['model']}/"
            f"{current['pretrained']} (weights {current['weights_sha256'][:16]}…); load it onto the same base"
        )


def load_adapter(model: nn.Module, path: str | os.PathLike[str], projector: Projector | None = None) -> list[str]:
    """Load an adapter checkpoint onto ``model``.

    A model without adapters is injected with the saved config first (``projector`` as in
    :func:`inject`); a model with adapters must carry the same config and projector. The base
    weights must be those the adapter was trained on. Returns the adapted matrix names.
    """
    path = Path(path)
    metadata = read_adapter_metadata(path)
    saved_config = AdapterConfig.from_dict(metadata["adapter"])
    _check_base(path, metadata["base"], model)
    if not has_adapters(model):
        inject(model, saved_config, projector)
    state = adapter_state(model)
    differences = saved_config.differences(state.config)
    if differences:
        raise AdapterMismatchError(
            f"adapter {path} was saved with a different adapter config (saved != model): " + "; ".join(differences)
        )
    saved_projector, model_projector = metadata["projector_sha256"], state.projector_sha256
    if saved_projector and model_projector and saved_projector != model_projector:
        raise AdapterMismatchError(
            f"adapter {path} was trained with projector file {saved_projector[:16]}… but the model carries "
            f"projector {model_projector[:16]}…; inject with the projector file used in training"
        )
    if metadata["directions"] != state.directions:
        changed = sorted(k for k in metadata["directions"] if metadata["directions"][k] != state.directions.get(k))
        raise AdapterMismatchError(
            f"adapter {path} protects other numbers of principal directions than the model's projector "
            f"(first differing matrices: {changed[:3]}); inject with the projector used in training"
        )
    try:
        tensors = load_file(str(path / WEIGHTS_FILE))
    except (SafetensorError, OSError) as error:
        raise AdapterMismatchError(f"{path / WEIGHTS_FILE} cannot be read ({error}); save the adapter again") from error
    expected = _adapter_tensors(model)
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise AdapterMismatchError(f"{path / WEIGHTS_FILE}: missing tensors {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad(), unmerged(model):
        for name, tensor in tensors.items():
            target = expected[name]
            if target.shape != tensor.shape:
                raise AdapterMismatchError(
                    f"{path / WEIGHTS_FILE}: {name} has shape {tuple(tensor.shape)}, model needs {tuple(target.shape)}"
                )
            target.copy_(tensor)
    return list(state.matrices)


def export_merged(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write a full checkpoint with the updates merged, under open_clip's own parameter names, so that
    ``open_clip.create_model(name, pretrained=path)`` loads it with no complora code."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ComploraError(f"{path}: a merged checkpoint must end in .safetensors for open_clip to load it")
    adapter_state(model)
    was_merged = is_merged(model)
    merge(model)
    try:
        state = {name: tensor.detach().clone() for name, tensor in base_state(model)}
    finally:
        if not was_merged:
            unmerge(model)
    save_tensors(state, path, {"format": "open_clip", "merged_adapter": "complora"})
    return path
