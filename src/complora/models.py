"""Creating open_clip models by name, recording where their weights came from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors import safe_open
from torch import nn

from .artifacts import verify_artifact
from .errors import ComploraError

# Architectures shipped with complora (e.g. the demo's tiny CLIP), made known to open_clip on import.
PACKAGE_MODEL_CONFIGS = Path(__file__).parent / "model_configs"
open_clip.add_model_config(PACKAGE_MODEL_CONFIGS)

NO_WEIGHTS = "none"
# The safetensors header key under which a weights artifact keeps its tag's image preprocessing: loaded from
# a file, open_clip knows only the architecture's defaults, and a tag may differ from them (mean/std, resize).
PREPROCESS_KEY = "open_clip_preprocess_cfg"
UNKNOWN = "unknown"
_ORIGIN_ATTRIBUTE = "complora_origin"


def register_model_config(path: str | Path) -> str:
    """Make an open_clip architecture JSON known to ``open_clip.create_model``; returns its name (the stem)."""
    config_path = Path(path)
    if not config_path.is_file():
        raise ComploraError(f"model config {config_path} does not exist; pass an open_clip model name or a JSON file")
    open_clip.add_model_config(config_path)
    return config_path.stem


def load_clip(
    name: str,
    pretrained: str = NO_WEIGHTS,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> nn.Module:
    """An open_clip model: ``name`` is a built-in architecture or a JSON config file; ``pretrained`` is an
    open_clip tag, a checkpoint path, or ``none`` for a random initialisation drawn from ``seed``."""
    if name.endswith(".json"):
        name = register_model_config(name)
    if name not in open_clip.list_models():
        raise ComploraError(f"model {name!r} is not an open_clip architecture; see open_clip.list_models()")
    weights = None if pretrained == NO_WEIGHTS else pretrained
    if weights is not None and Path(weights).is_file():
        # A weights artifact's checkpoint and metadata.json are what its job made, or the job stops here.
        verify_artifact(Path(weights).parent, what="pretrained model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = open_clip.create_model(
                name,
                pretrained=weights,
                device=device,
                cache_dir=str(cache_dir) if cache_dir else None,
                force_preprocess_cfg=stored_preprocess_cfg(weights) if weights else None,
            )
        # open_clip and torch raise many exception types for a bad file, tag or download.
        except Exception as error:
            raise ComploraError(
                f"pretrained weights {pretrained!r} for {name} could not be loaded ({error}); pass a local "
                "checkpoint file with --pretrained PATH, or a tag whose weights are in open_clip's cache"
            ) from error
    setattr(model, _ORIGIN_ATTRIBUTE, {"model": name, "pretrained": pretrained})
    return model


def stored_preprocess_cfg(pretrained: str) -> dict[str, Any] | None:
    """The preprocessing a complora weights file records for its tag (None for other files and for tags)."""
    if not pretrained.endswith(".safetensors") or not Path(pretrained).is_file():
        return None
    try:
        with safe_open(pretrained, framework="pt") as handle:
            stored = (handle.metadata() or {}).get(PREPROCESS_KEY)
    except Exception:  # not a readable safetensors file: open_clip's own loading says why
        return None
    return json.loads(stored) if stored else None


def model_origin(model: nn.Module) -> dict[str, Any]:
    """Architecture name and weights source recorded by :func:`load_clip` (``unknown`` for other models)."""
    return dict(getattr(model, _ORIGIN_ATTRIBUTE, {"model": UNKNOWN, "pretrained": UNKNOWN}))
