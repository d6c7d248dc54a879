"""What the workflow asks each job for, and whether what the job made still answers it (torch-free: the
workflow reads this module at parse time).

A job's *request* (for a run: its method, family, hyperparameters, prompt, backbone, code fingerprint...;
for an artifact such as a split or the projector: the settings and code that make it) is written by the
workflow to ``resources/requests/``. A run records its request verbatim in its metrics.json; an artifact
job copies it beside its output when it succeeds (``<artifact>.request.json``, versioned with it by DVC).
What a job made is *stale* when the request it answered differs from today's, or, for a run, when the
k-shot split or the weights it records are not today's.

Snakemake decides what to redo from file times and from its job records in ``.snakemake/``; a fresh clone
after ``dvc pull`` and a ``dvc exp run`` copy have no records, and their files' times follow the checkout
order. So the workflow marks every input but the request ``ancient`` (its time never triggers a job) and
the request file's time carries the verdict: the epoch while what was made answers it, now while it does
not. A job whose inputs are remade still runs again (Snakemake redoes what depends on a job it runs).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .atomic import atomic_path
from .data.splits import file_sha256
from .errors import ComploraError

REQUESTS_DIR = "resources/requests"
RESULTS_DIR = "results"
# The time of what answers its request: older than anything made, so Snakemake's time comparison leaves
# it alone (1, not 0: Snakemake skips the comparison when a job's oldest output has time 0).
ANSWERED = 1


def request_path(metrics: str | os.PathLike[str]) -> str:
    """The request of the run whose metrics file is ``metrics``: results/runs/<run>/metrics.json →
    resources/requests/<run>.json (results/<study>/runs/<run>/metrics.json → resources/requests/<study>/<run>.json)."""
    parts = list(Path(metrics).relative_to(RESULTS_DIR).parent.parts)
    parts.remove("runs")
    return f"{REQUESTS_DIR}/{Path(*parts)}.json"


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


def _time_verdict(path: Path, stale: bool, answered: Path | None = None) -> None:
    """Stale: the request becomes newer than what was made, so Snakemake redoes the job. Answered: the
    request and the job's record of it (the time its consumers see) take the epoch, whatever order a
    checkout wrote them in."""
    if stale:
        os.utime(path)
        return
    for timed in (path, answered):
        if timed is not None and timed.exists() and timed.stat().st_mtime != ANSWERED:
            os.utime(timed, (ANSWERED, ANSWERED))


def write_request(path: Path, request: dict[str, Any]) -> None:
    """The request file, rewritten only when its content changes."""
    text = canonical(request)
    if not path.is_file() or path.read_text() != text:
        with atomic_path(path) as temporary:
            temporary.write_text(text)


def answered_path(artifact: str, directory: bool) -> str:
    """Where an artifact job records the request it answered: beside the folder, or the file's name with
    ``.request.json`` for its extension."""
    if directory:
        return f"{artifact}.request.json"
    return str(Path(artifact).with_suffix(".request.json"))


def settle_artifact(
    request_file: str | os.PathLike[str], request: dict[str, Any], answered_file: str | os.PathLike[str]
) -> list[str]:
    """Write an artifact job's request (if it changed) and judge the request its artifact answered (None
    recorded: the job runs anyway, its record being one of its outputs). Returns why the artifact is stale."""
    path = Path(request_file)
    write_request(path, request)
    answered = Path(answered_file)
    if not answered.exists():
        return []
    recorded = read_json(answered)
    reasons = differences(recorded, request) if isinstance(recorded, dict) else ["its request record is unreadable"]
    _time_verdict(path, bool(reasons), answered)
    return reasons


def settle_run(
    request_file: str | os.PathLike[str],
    request: dict[str, Any],
    metrics_file: str | os.PathLike[str],
    split_sha256: str | None,
    weights_sha256: str | None,
    answered_file: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Write a job's request (if it changed) and judge the run at ``metrics_file`` against it and today's
    split and weights (None: not there yet). Returns why the run is stale ([] when it answers the request or
    does not exist); sets the request file's time so that Snakemake redoes exactly the stale runs.
    ``answered_file``: the job's copy of its request, where other runs consume its metrics (zero-shot)."""
    path = Path(request_file)
    write_request(path, request)
    metrics = Path(metrics_file)
    if not metrics.exists():
        return []  # nothing finished: the job runs anyway
    run = read_json(metrics)
    if isinstance(run, dict):
        reasons = stale_reasons(run, request, split_sha256=split_sha256, weights_sha256=weights_sha256)
    else:
        reasons = ["its metrics.json is not a JSON object"]
    _time_verdict(path, bool(reasons), Path(answered_file) if answered_file else None)
    return reasons
