"""What the workflow asks each job for, and whether what the job made still answers it (torch-free: the
workflow reads this module at parse time, and writes nothing then).

A job's *request* (for a run: its method, family, hyperparameters, prompt, backbone, code fingerprint...;
for an artifact such as a split or the projector: the settings and code that make it) is computed by the
workflow and handed to the job on its command line. A run records it verbatim in its metrics.json; an
artifact job seals its artifact with it (complora.artifacts). A request names its inputs by their
requests' digests, so a change upstream changes every request downstream.

What a job made is *stale* when the request it answered differs from today's, when (for a run) the k-shot
split or the weights it records are not today's, or when it is damaged or unfinished. The verdict is read
from the files themselves, never from file times or Snakemake's records in ``.snakemake/``, so a fresh
clone after ``dvc pull`` and a ``dvc exp run`` copy judge alike; the workflow makes Snakemake redo a stale
job by giving it one more input that a job of this invocation makes (a redo marker).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .artifacts import damage, file_sha256, read_seal, seal_path
from .errors import ComploraError


def canonical(request: dict[str, Any]) -> str:
    return json.dumps(request, indent=2, sort_keys=True) + "\n"


def digest(request: dict[str, Any]) -> str:
    """A short content address of a request: a job's request names those of its inputs by it, so a change
    upstream changes every request downstream."""
    return hashlib.sha256(canonical(request).encode()).hexdigest()[:16]


def read_json(path: Path) -> Any:
    """A JSON file's content, None when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def sha256_if_present(path: str | os.PathLike[str]) -> str | None:
    """sha256 of a file's bytes, None when it does not exist (yet)."""
    try:
        return file_sha256(path)
    except FileNotFoundError:
        return None


def weights_of_artifact(path: str | os.PathLike[str]) -> str:
    """The weights' sha256 a model artifact's metadata.json records: today's weights."""
    try:
        return json.loads(Path(path).read_text())["weights_sha256"]
    except FileNotFoundError:
        raise ComploraError(f"weights metadata {path} does not exist; prepare the pretrained model first") from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ComploraError(f"{path} is not a weights metadata file ({error!r}); rebuild the model artifact") from None


def differences(recorded: Any, current: Any, prefix: str = "") -> list[str]:
    """Where two JSON values differ, as ``key.sub: old → new`` lines (keys in sorted order)."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        lines = []
        for key in sorted(set(recorded) | set(current)):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in recorded:
                lines.append(f"{name}: (not recorded) → {json.dumps(current[key])}")
            elif key not in current:
                lines.append(f"{name}: {json.dumps(recorded[key])} → (no longer asked)")
            else:
                lines += differences(recorded[key], current[key], name)
        return lines
    if recorded != current:
        return [f"{prefix or 'value'}: {json.dumps(recorded)} → {json.dumps(current)}"]
    return []


def stale_reasons(
    run: dict[str, Any],
    request: dict[str, Any],
    *,
    split_sha256: str | None = None,
    weights_sha256: str | None = None,
) -> list[str]:
    """Why the finished ``run`` (a metrics.json's content) does not answer ``request``; [] when it does.
    ``split_sha256`` / ``weights_sha256``: today's split file and weights, when known."""
    if "request" not in run:
        return ["it records no request (made by an older complora)"]
    reasons = differences(run["request"], request)
    if split_sha256 is not None and run.get("split_hash") != split_sha256:
        reasons.append(f"split: made from split {str(run.get('split_hash'))[:12]}, today's is {split_sha256[:12]}")
    recorded_weights = (run.get("backbone") or {}).get("weights_sha256")
    if weights_sha256 is not None and recorded_weights != weights_sha256:
        reasons.append(f"weights: made with {str(recorded_weights)[:12]}, today's are {weights_sha256[:12]}")
    return reasons


def run_verdict(
    request: dict[str, Any],
    metrics_file: str | os.PathLike[str],
    split_sha256: str | None,
    weights_sha256: str | None,
) -> list[str]:
    """Why the run at ``metrics_file`` does not answer ``request`` with today's split and weights (None: not
    there yet); [] when it does or when nothing was finished (the job runs anyway)."""
    metrics = Path(metrics_file)
    if not metrics.exists():
        return []
    run = read_json(metrics)
    if not isinstance(run, dict):
        return ["its metrics.json is damaged (not a JSON object)"]
    return stale_reasons(run, request, split_sha256=split_sha256, weights_sha256=weights_sha256)


def artifact_verdict(request: dict[str, Any], artifact: str | os.PathLike[str], deep: bool = True) -> list[str]:
    """Why ``artifact`` does not answer ``request``: another request, no seal (an unfinished job), or (with
    ``deep``) files other than its seal records. [] when it answers it, or when neither it nor its seal
    exists."""
    path = Path(artifact)
    if not path.exists() and not seal_path(path).exists():
        return []
    if not seal_path(path).exists():
        return ["it was never sealed (its job did not finish, or an older complora made it)"]
    record = read_seal(path)
    if record is None:
        return ["its seal is unreadable"]
    return differences(record["request"], request) or (damage(path, record) if deep else [])
