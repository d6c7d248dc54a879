"""What the workflow asks each job for, and whether a finished run still answers it (torch-free: the
workflow reads this module at parse time).

A job's *request* (its method, family, hyperparameters, prompt, backbone, code fingerprint...) is written
by the workflow to ``resources/requests/<run>.json`` and recorded verbatim by the job in its metrics.json.
A run is *stale* when its recorded request differs from today's, or when the k-shot split or the weights
it records are not today's. Snakemake decides what to redo from file times (and from its job records in
``.snakemake/``, which a fresh clone after ``dvc pull`` and a ``dvc exp run`` copy do not have), so the
request file's time carries the verdict: the epoch while the run answers it, now while it does not.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .atomic import atomic_path

REQUESTS_DIR = "resources/requests"
RUNS_DIR = "results/runs"
METRICS_NAME = "metrics.json"
# A request file older than any run: Snakemake's time comparison then leaves the run alone.
ANSWERED = 0


def request_path(metrics: str | os.PathLike[str]) -> str:
    """The request of the run whose metrics file is ``metrics``: results/runs/<run>/metrics.json →
    resources/requests/<run>.json."""
    relative = Path(metrics).relative_to(RUNS_DIR).parent
    return f"{REQUESTS_DIR}/{relative}.json"


def canonical(request: dict[str, Any]) -> str:
    return json.dumps(request, indent=2, sort_keys=True) + "\n"


def read_json(path: Path) -> Any:
    """A JSON file's content, None when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def file_sha256(path: Path) -> str | None:
    """sha256 of a file's bytes, None when it does not exist (yet)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


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


def settle(
    request_file: str | os.PathLike[str],
    request: dict[str, Any],
    metrics_file: str | os.PathLike[str],
    split_sha256: str | None,
    weights_sha256: str | None,
) -> list[str]:
    """Write a job's request (if it changed) and judge the run at ``metrics_file`` against it and today's
    split and weights (None: not there yet). Returns why the run is stale ([] when it answers the request or
    does not exist); sets the request file's time so that Snakemake redoes exactly the stale runs."""
    path = Path(request_file)
    text = canonical(request)
    if not path.is_file() or path.read_text() != text:
        with atomic_path(path) as temporary:
            temporary.write_text(text)
    metrics = Path(metrics_file)
    if not metrics.exists():
        return []  # nothing finished: the job runs anyway
    run = read_json(metrics)
    if isinstance(run, dict):
        reasons = stale_reasons(run, request, split_sha256=split_sha256, weights_sha256=weights_sha256)
    else:
        reasons = ["its metrics.json is not a JSON object"]
    if reasons:
        os.utime(path)  # newer than the run: Snakemake redoes the job
    elif path.stat().st_mtime != ANSWERED:
        os.utime(path, (ANSWERED, ANSWERED))
    return reasons
