"""Downloading a file from a list of mirrors: resumable, verified, and never left looking finished when wrong.

Bytes go to ``<file>.part`` first; a rerun continues it with an HTTP Range request. The finished file is
checked against the published md5/sha256 and only then renamed to its final name. A mirror that fails
(HTTP error, unreachable, wrong digest) is logged and the next one is tried.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..errors import ComploraError
from .registry import RemoteFile

CHUNK = 1 << 20
TIMEOUT_SECONDS = 60
log = logging.getLogger(__name__)


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_problem(path: Path, remote: RemoteFile) -> str | None:
    """Why ``path`` is not the published file, or None when it matches (or nothing is published)."""
    for algorithm in ("sha256", "md5"):
        expected = getattr(remote, algorithm)
        if expected:
            found = file_digest(path, algorithm)
            return None if found == expected.lower() else f"{algorithm} {found}, expected {expected}"
    return None


def _fetch_one(url: str, part: Path) -> None:
    """Download ``url`` into ``part``, continuing from its current size when the server allows ranges."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "complora"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the part file is already complete
            return
        raise
    with response:
        resumed = offset and response.status == 206
        total = response.headers.get("Content-Length")
        total = int(total) + (offset if resumed else 0) if total else None
        with (
            part.open("ab" if resumed else "wb") as handle,
            tqdm(
                total=total, initial=offset if resumed else 0, unit="B", unit_scale=True, desc=part.name, leave=False
            ) as bar,
        ):
            for block in iter(lambda: response.read(CHUNK), b""):
                handle.write(block)
                bar.update(len(block))
    if total is not None and part.stat().st_size < total:  # the connection ended early: keep it to resume
        raise OSError(f"connection closed after {part.stat().st_size} of {total} bytes")


def download(remote: RemoteFile, directory: str | os.PathLike[str]) -> Path:
    """``directory/remote.name``, downloaded (or reused if already there and verified)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target, part = directory / remote.name, directory / f"{remote.name}.part"
    if target.exists():
        problem = digest_problem(target, remote)
        if problem is None:
            return target
        log.warning("cached %s does not match (%s): downloading it again", target, problem)
        target.unlink()
    failures = []
    for url in remote.urls:
        try:
            log.info("downloading %s from %s", remote.name, url)
            _fetch_one(url, part)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
            # The partial file stays: the next mirror (or a rerun) continues it, and the digest check below
            # catches a mirror that served different bytes.
            failures.append(f"{url}: {error}")
            log.warning("%s failed (%s); trying the next mirror", url, error)
            continue
        problem = digest_problem(part, remote)
        if problem is not None:
            failures.append(f"{url}: checksum mismatch ({problem})")
            log.warning("%s gave a file with %s; trying the next mirror", url, problem)
            part.unlink()
            continue
        os.replace(part, target)
        return target
    raise ComploraError(
        f"could not download {remote.name}; every mirror failed:\n  "
        + "\n  ".join(failures)
        + f"\nPut a verified copy at {target}, add a working mirror in a registry override "
        "(data.registry in the config), or point data.root at a folder that already holds the dataset"
    )
