"""Pretrained open_clip weights as a pipeline artifact: ``<out>/open_clip_model.safetensors`` plus
``<out>/metadata.json`` (source, weights hash, versions), from an open_clip tag or a local checkpoint.

Offline, a tag that needs downloading fails at once (the hub client would otherwise retry for about a
minute) with the file to fetch elsewhere and how to point the config at it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip

from .atomic import write_json
from .errors import ComploraError
from .fingerprint import weights_sha256
from .models import PREPROCESS_KEY, load_clip
from .runinfo import package_versions, peak_rss_mib
from .tensorfile import save_tensors

CHECKPOINT_FILE = "open_clip_model.safetensors"
METADATA_FILE = "metadata.json"
HUB = "https://huggingface.co"


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to the hub opens (assumed yes behind a proxy, which we cannot probe cheaply)."""
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return True
    parsed = urlparse(url)
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _where_to_get(model: str, tag: str) -> str:
    config = open_clip.get_pretrained_cfg(model, tag)
    if config.get("hf_hub"):
        return f"{HUB}/{config['hf_hub'].rstrip('/')} (open_clip_pytorch_model.bin or open_clip_model.safetensors)"
    return config.get("url") or "the URL in open_clip's pretrained table"


def fetch_weights(model: str, pretrained: str, out: str | os.PathLike[str], cache_dir: str | os.PathLike[str]) -> dict:
    """Load ``model`` with ``pretrained`` (tag or checkpoint path) and write it as a pipeline artifact."""
    out, start = Path(out), time.perf_counter()
    if Path(pretrained).is_file():
        source: dict[str, Any] = {"kind": "file", "path": str(Path(pretrained).resolve())}
    else:
        if model not in open_clip.list_models():
            raise ComploraError(f"backbone.model {model!r} is not an open_clip architecture; see list_models()")
        tags = open_clip.list_pretrained_tags_by_model(model)
        if pretrained not in tags:
            raise ComploraError(
                f"backbone.pretrained {pretrained!r}: not a file and not an open_clip tag of {model}; tags: "
                f"{', '.join(tags) or 'none'}"
            )
        endpoint = os.environ.get("HF_ENDPOINT", HUB)
        # HF_HUB_OFFLINE=1 means "use the cache only": open_clip then fails fast by itself when it is not there.
        if not os.environ.get("HF_HUB_OFFLINE") and not _reachable(endpoint):
            raise ComploraError(
                f"{model}/{pretrained}: {endpoint} cannot be reached (offline?). Download "
                f"{_where_to_get(model, pretrained)} on a machine with network access, copy it to this one and set "
                "backbone.pretrained in the config to its path"
            )
        source = {"kind": "open_clip", "tag": pretrained, "cache_dir": str(cache_dir)}
    clip = load_clip(model, pretrained, cache_dir=cache_dir).eval()
    metadata = {
        "architecture": model,
        "pretrained": pretrained,
        "source": source,
        "weights_sha256": weights_sha256(clip),
        "preprocess_cfg": json.loads(json.dumps(clip.visual.preprocess_cfg)),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mib": peak_rss_mib(),
        "versions": package_versions(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / METADATA_FILE).unlink(missing_ok=True)  # metadata marks a finished artifact: written last
    header = {"format": "open_clip", PREPROCESS_KEY: json.dumps(clip.visual.preprocess_cfg, sort_keys=True)}
    save_tensors(dict(clip.state_dict()), out / CHECKPOINT_FILE, header)
    write_json(out / METADATA_FILE, metadata)
    return metadata
