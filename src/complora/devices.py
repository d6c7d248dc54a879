"""Choosing the torch device a job runs on, with an error that says what is available.

On a cluster the scheduler hands each job its own GPU (CUDA_VISIBLE_DEVICES names one). On a workstation
Snakemake only counts GPU jobs (its `gpu` resource) and assigns no device, so ``auto`` claims a GPU that no
other complora process holds, through a lock file per GPU that lasts as long as the process.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import torch

from .errors import ComploraError

GPU_LOCK_DIR = Path(tempfile.gettempdir()) / "complora-gpu-locks"
_held_locks: list[IO[str]] = []  # open lock files: a claim lasts until the process exits
log = logging.getLogger(__name__)


def claim_first_free(names: Sequence[str], directory: Path = GPU_LOCK_DIR) -> int | None:
    """The index of the first of ``names`` that no other process holds, now held by this one until it exits;
    None when every one is held."""
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o1777)  # shared by every user's jobs, like /tmp
    for index, name in enumerate(names):
        # Read-only is enough for flock, so another user's lock file (mode 0644) can be claimed too.
        handle = open(os.open(directory / f"{name}.lock", os.O_RDONLY | os.O_CREAT, 0o644))  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held_locks.append(handle)
        return index
    return None


def _claim_gpu() -> torch.device:
    count = torch.cuda.device_count()
    if count == 1:
        return torch.device("cuda", 0)
    names = [f"gpu-{torch.cuda.get_device_properties(index).uuid}" for index in range(count)]
    index = claim_first_free(names)
    if index is None:
        log.warning("all %d GPUs are held by other complora jobs; sharing cuda:0 (lower the gpu resource)", count)
        return torch.device("cuda", 0)
    return torch.device("cuda", index)


def select_device(device: str) -> torch.device:
    """``auto`` is a CUDA GPU when one is visible (one not held by another complora job, where there are
    several), else the CPU; anything else must name a device that exists."""
    if device == "auto":
        return _claim_gpu() if torch.cuda.is_available() else torch.device("cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as error:
        raise ComploraError(f"--device {device}: not a torch device ({error}); use auto, cpu, cuda or cuda:N") from None
    if chosen.type == "cuda":
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if visible == 0:
            raise ComploraError(f"--device {device}: no CUDA GPU is visible here; use --device auto or cpu")
        if chosen.index is not None and chosen.index >= visible:
            raise ComploraError(f"--device {device}: only {visible} CUDA GPU(s) visible, cuda:0 to cuda:{visible - 1}")
    elif chosen.type != "cpu":
        raise ComploraError(f"--device {device}: complora runs on cpu or cuda devices")
    return chosen
