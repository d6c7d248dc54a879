"""Choosing the torch device a job runs on, with an error that says what is available.

On a cluster the scheduler hands each job its own GPU (CUDA_VISIBLE_DEVICES names one). On a workstation
Snakemake only counts GPU jobs (its `gpu` resource) and assigns no device, so ``auto`` claims a GPU that no
other complora process holds, through a lock file per GPU that lasts as long as the process.
"""

from __future__ import annotations

import contextlib
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
        with contextlib.suppress(OSError):  # another user made it first: theirs to set
            directory.chmod(0o1777)  # shared by every user's jobs, like /tmp
    for index, name in enumerate(names):
        try:
            handle = _open_lock(directory / f"{name}.lock")
        except OSError as error:
            log.warning("cannot use the GPU lock %s (%s); not claiming that GPU", directory / f"{name}.lock", error)
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held_locks.append(handle)
        return index
    return None


def _open_lock(path: Path) -> IO[str]:
    # Read-only is enough for flock, so another user's lock file can be claimed too; creating is a separate
    # step, as O_CREAT on another user's file in a sticky folder is refused where fs.protected_regular is set.
    while True:
        try:
            return open(path)  # kept open by the caller: the open file is the claim
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):  # another job created it in between: open that one
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDONLY, 0o644))


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
