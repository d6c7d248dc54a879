"""Atomic file output: a killed or failing writer leaves no file that looks finished."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def default_permissions(path: str | os.PathLike[str], directory: bool = False) -> None:
    """Give a mkstemp/mkdtemp result the permissions plain open()/mkdir() would (those helpers make it private)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def _temporary_affixes(target: Path) -> tuple[str, str]:
    return f".{target.name}.", ".tmp"


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = _temporary_affixes(target)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=suffix)
    os.close(handle)
    try:
        yield Path(temporary)
        default_permissions(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def remove_partial_writes(path: str | os.PathLike[str]) -> None:
    """Delete the temporary files that writers of ``path`` killed by SIGKILL left beside it (only safe while
    no other process is writing ``path``)."""
    target = Path(path)
    prefix, suffix = _temporary_affixes(target)
    for partial in target.parent.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        partial.unlink(missing_ok=True)


@contextmanager
def staging_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh folder beside ``path`` to build it in, for the builder to rename onto ``path`` when it is
    complete; removed on the way out if it is still there. Staging folders a killed builder left are
    removed first."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.staging-"))
    default_permissions(staging, directory=True)
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
