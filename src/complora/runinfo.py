"""Facts every run records beside its results: peak memory and package versions."""

from __future__ import annotations

import resource

import open_clip
import torch

from . import __version__


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss is in KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def peak_gpu_memory_mib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


def package_versions() -> dict[str, str]:
    return {"complora": __version__, "open_clip": open_clip.__version__, "torch": torch.__version__}
