"""What every run records and reads: the backbone it ran, its settings' hash, its environment, the common
fields of a metrics.json, and the zero-shot runs that are the reference of every other method's gain.

A zero-shot run is accepted as a reference only if it comes from the same weights and prompt (and
preprocessing) and its split file is unchanged: a stale one is refused, not reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from .data.images import EvalTransform
from .data.splits import file_sha256
from .data.testset import DatasetRef
from .errors import ComploraError
from .models import load_clip
from .runinfo import package_versions

METRICS_FILE = "metrics.json"
ZERO_SHOT = "zeroshot"
RESULTS_FORMAT_VERSION = 1
# Scheduler facts recorded with every run (which GPU a cluster gave it, which job it was).
ENVIRONMENT_VARIABLES = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_JOB_PARTITION")


@dataclass(frozen=True)
class Backbone:
    """An open_clip architecture and where its weights come from (tag or checkpoint path)."""

    model: str
    pretrained: str


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the run's settings in canonical JSON: equal hashes mean equal experiments."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def environment(device: torch.device) -> dict[str, Any]:
    info = {name: os.environ.get(name) for name in ENVIRONMENT_VARIABLES}
    info["hostname"] = platform.node()
    info["torch_threads"] = torch.get_num_threads()
    if device.type == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name(device)
    return info


def load_backbone(backbone: Backbone, device: torch.device) -> tuple[torch.nn.Module, Any, EvalTransform]:
    model = load_clip(backbone.model, backbone.pretrained).to(device).eval()
    return model, open_clip.get_tokenizer(backbone.model), EvalTransform.for_model(model)


def data_record(dataset: DatasetRef) -> dict[str, Any]:
    cache = str(dataset.eval_cache) if dataset.eval_cache else None
    return {"root": str(dataset.root), "split_file": str(dataset.split_file), "eval_cache": cache}


def common_record(backbone: Backbone, base_sha256: str, device: torch.device) -> dict[str, Any]:
    return {
        "format_version": RESULTS_FORMAT_VERSION,
        "backbone": {**asdict(backbone), "weights_sha256": base_sha256},
        "device": str(device),
        "environment": environment(device),
        "versions": package_versions(),
    }


def read_zero_shot_run(path: Path, base_sha256: str, template: str, preprocessing_sha256: str | None) -> dict[str, Any]:
    """The zero-shot run at ``path``, checked to come from these weights, prompt and (unless None)
    preprocessing, and from today's split file."""
    try:
        run = json.loads(path.read_text())
        fields = (run["method"], run["backbone"]["weights_sha256"], run["template"], run["split_hash"])
        method, run_sha256, run_template, split_hash = fields
        split_file, root = Path(run["data"]["split_file"]), Path(run["data"]["root"])
        cache = Path(run["data"]["eval_cache"]) if run["data"]["eval_cache"] else None
        preprocessing = run["config"]["preprocessing_sha256"]
    except FileNotFoundError:
        raise ComploraError(f"zero-shot run {path} does not exist; run `complora evaluate` for it first") from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ComploraError(f"{path} is not a zero-shot metrics file ({error!r}); rerun `complora evaluate`") from None
    if method != ZERO_SHOT:
        raise ComploraError(f"{path}: method is {method!r}, expected a {ZERO_SHOT!r} run")
    if run_sha256 != base_sha256:
        raise ComploraError(
            f"{path} was evaluated with weights {run_sha256[:12]}, this run loads {base_sha256[:12]}: the zero-shot "
            "run is stale; rerun `complora evaluate` for it"
        )
    if run_template != template:
        raise ComploraError(f"{path} used the prompt {run_template!r}, this run uses {template!r}; rerun it")
    if preprocessing_sha256 is not None and preprocessing != preprocessing_sha256:
        raise ComploraError(f"{path} was evaluated with other image preprocessing than this model's; rerun it")
    if not split_file.is_file() or file_sha256(split_file) != split_hash:
        raise ComploraError(f"{path}: its split file {split_file} is missing or changed since; rerun the zero-shot run")
    return {**run, "dataset_ref": DatasetRef(run["dataset"], root, split_file, cache)}
