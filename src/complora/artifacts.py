"""What an artifact job records of what it made, and the checks of that record (torch-free: the workflow
reads this module at parse time, and ``complora-seal`` runs it after each artifact job).

An artifact (the demo world, a dataset folder, the weights, a k-shot split, an evaluation cache, the
projector, a feature store) is *sealed* by the job that made it, as its last step: ``<artifact>.request.json``
holds the request the job answered and every file's size and sha256. No seal: the job never finished.
The workflow checks a seal while it decides what to run (sizes always, content for small files); a job
that reads an artifact can verify every file's content (:func:`verify_artifact`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from .atomic import write_json
from .errors import ComploraError

SEAL_SUFFIX = ".request.json"
FILE_SUFFIXES = frozenset({".json", ".safetensors"})  # the artifacts made as single files
# Files up to this size are hashed whenever the workflow decides what to run (splits, metadata, the demo's
# weights); larger ones are measured by size there and hashed by the jobs that read them.
HASH_AT_PARSE_BYTES = 64 * 2**20
# Files Snakemake or an editor puts into an output folder: not part of what the job made.
IGNORED_NAMES = frozenset({".snakemake_timestamp"})
CHUNK = 2**20


def seal_path(artifact: str | os.PathLike[str]) -> Path:
    """Where an artifact's seal lives: a file's name with ``.request.json`` for its extension, or beside the
    folder (whose name may hold a dot: ``ViT-B-16_openai.v2``)."""
    path = Path(artifact)
    if path.suffix in FILE_SUFFIXES and not path.is_dir():
        return path.with_suffix(SEAL_SUFFIX)
    return path.with_name(path.name + SEAL_SUFFIX)


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_files(artifact: str | os.PathLike[str]) -> dict[str, Path]:
    """The files an artifact is made of, by their path relative to it ('' for a single file)."""
    path = Path(artifact)
    if path.is_file():
        return {"": path}
    found = {}
    for root, folders, names in os.walk(path):
        folders.sort()
        for name in sorted(names):
            if name not in IGNORED_NAMES:
                file = Path(root) / name
                found[file.relative_to(path).as_posix()] = file
    return found


def seal(artifact: str | os.PathLike[str], request: dict[str, Any]) -> Path:
    """Record ``request`` and every file of ``artifact`` (size and sha256) in its seal, atomically."""
    if not Path(artifact).exists():
        raise ComploraError(f"{artifact} does not exist: the job that makes it did not write it")
    files = {
        name: {"size": path.stat().st_size, "sha256": file_sha256(path)}
        for name, path in artifact_files(artifact).items()
    }
    record = {"request": request, "files": files}
    write_json(seal_path(artifact), record)
    return seal_path(artifact)


def read_seal(artifact: str | os.PathLike[str]) -> dict[str, Any] | None:
    """An artifact's seal, None where it is missing or unreadable."""
    try:
        record = json.loads(seal_path(artifact).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict) or "request" not in record:
        return None
    return record


def _file_problem(path: Path, expected: dict[str, Any], hash_limit: float) -> str | None:
    """How one file differs from its seal's entry (its content only up to ``hash_limit`` bytes); None when
    it does not."""
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != expected.get("size"):
        return f"has {size} bytes, {expected.get('size')} when it was made"
    if size <= hash_limit and file_sha256(path) != expected.get("sha256"):
        return "is damaged: its content differs from when it was made"
    return None


def damage(
    artifact: str | os.PathLike[str], record: dict[str, Any], hash_limit: float = HASH_AT_PARSE_BYTES
) -> list[str]:
    """How ``artifact`` differs from what its seal records: missing, extra or resized files, and the content
    of files up to ``hash_limit`` bytes (all of them with ``float('inf')``). [] when intact."""
    present = artifact_files(artifact) if Path(artifact).exists() else {}
    problems = []
    for name, expected in sorted(record["files"].items()):
        shown = f"{artifact}/{name}" if name else str(artifact)
        problem = _file_problem(present.pop(name, Path(shown)), expected, hash_limit)
        if problem:
            problems.append(f"{shown} {problem}")
    problems += [f"{artifact}/{name} was not made by its job" for name in sorted(present)]
    return problems


def _refuse(what: str, subject: str | os.PathLike[str], problem: str, artifact: str | os.PathLike[str]) -> NoReturn:
    raise ComploraError(
        f"the {what} {subject} is damaged ({problem}); rebuild it and what was made from it: "
        f"snakemake --cores all --forcerun {artifact}"
    )


def verify_artifact(artifact: str | os.PathLike[str], *, what: str = "artifact") -> None:
    """Refuse an artifact whose files are not those its job made (every file hashed): the job stops before
    using damaged data, naming what to rebuild. An artifact made outside the workflow (no seal) passes."""
    if not seal_path(artifact).exists():
        return
    record = read_seal(artifact)
    problems = ["its seal is unreadable"] if record is None else damage(artifact, record, float("inf"))
    if problems:
        _refuse(what, artifact, "; ".join(problems[:3]), artifact)


def verify_file(path: str | os.PathLike[str], *, what: str = "file") -> None:
    """Refuse one file of a sealed artifact (a file sealed itself, or one file of a sealed folder) whose
    content is not what its job made; a file outside any seal passes."""
    file = Path(path)
    candidates = ((file, ""), (file.parent, file.name))
    sealed = [(artifact, name) for artifact, name in candidates if seal_path(artifact).exists()]
    if not sealed:
        return
    artifact, name = sealed[0]
    record = read_seal(artifact)
    expected = (record or {}).get("files", {}).get(name)
    if expected is None:
        _refuse(what, file, "its seal is unreadable" if record is None else "its seal does not list it", artifact)
    problem = _file_problem(file, expected, float("inf"))
    if problem:
        _refuse(what, file, f"it {problem}", artifact)


def request_argument(text: str) -> dict[str, Any]:
    """An argparse type: a request given as JSON text on the command line."""
    try:
        request = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error})") from None
    if not isinstance(request, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return request


def main(argv: list[str] | None = None) -> None:
    """``complora-seal ARTIFACT --request JSON``: the last step of every artifact job (a process of its own
    that imports no torch, so it costs a fraction of a second)."""
    parser = argparse.ArgumentParser(prog="complora-seal", description=main.__doc__)
    parser.add_argument("artifact", type=Path, help="the file or folder the job made")
    parser.add_argument(
        "--request", type=request_argument, required=True, help="what the workflow asked the job for (JSON)"
    )
    args = parser.parse_args(argv)
    try:
        seal(args.artifact, args.request)
    except ComploraError as error:
        sys.exit(f"complora-seal: error: {error}")
