"""The study's runs as tidy pandas tables, read from their metrics.json files and checked: the results
contract's fields, one backbone, no cell twice, and (given the workflow's requests) no stale run.

Only the runs passed in are read (the workflow passes exactly the configured grid), so results of an older
configuration lying in results/runs never leak into the tables.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import ComploraError
from ..methods.families import ENCODERS_UNCHANGED
from ..runrequest import read_json, sha256_if_present, stale_reasons, weights_of_artifact

ZERO_SHOT = "zeroshot"
REQUIRED_FIELDS = ("dataset", "method", "shots", "seed", "accuracy", "retention", "backbone", "config_hash")
# runs.csv: one row per run, in this column order.
RUN_COLUMNS = [
    "dataset",
    "method",
    "family",
    "shots",
    "seed",
    "accuracy",
    "zero_shot_accuracy",
    "gain",
    "protocol",
    "base_accuracy",
    "new_accuracy",
    "harmonic_mean",
    "mean_retention",
    "retention_status",
    "coop_prompts_accuracy",
    "trainable_parameters",
    "iterations",
    "train_seconds",
    "wall_seconds",
    "peak_memory_mib",
    "device",
    "config_hash",
    "split_hash",
    "path",
]


def _load(path: Path) -> dict[str, Any]:
    try:
        run = json.loads(path.read_text())
    except FileNotFoundError:
        raise ComploraError(f"metrics file {path} does not exist") from None
    except json.JSONDecodeError as error:
        raise ComploraError(f"metrics file {path} is not valid JSON ({error}); rerun that job") from None
    missing = [name for name in REQUIRED_FIELDS if name not in run]
    if "backbone" not in missing and "weights_sha256" not in (run["backbone"] or {}):
        missing.append("backbone.weights_sha256")
    if missing:
        raise ComploraError(f"metrics file {path} lacks {missing}; it predates this complora, rerun that job")
    run.setdefault("family", run["method"])
    return run


def _split_sha256(run: dict[str, Any]) -> str | None:
    """Today's sha256 of the split the run records (its k-shot split, a zero-shot run's split file)."""
    data = run.get("data") or {}
    recorded = data.get("few_shot") or data.get("split_file")
    return sha256_if_present(recorded) if recorded else None


def _read_requests(path: str | os.PathLike[str]) -> dict[str, Any]:
    requests = read_json(Path(path))
    if not isinstance(requests, dict):
        raise ComploraError(f"requests file {path} is missing or unreadable; run the workflow to rewrite it")
    return requests


def read_runs(
    paths: Sequence[str | os.PathLike[str]],
    requests: str | os.PathLike[str] | None = None,
    model_metadata: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Every metrics file, checked for the contract's fields, one backbone, and no duplicate cell.

    With ``requests`` (a JSON file: each metrics file's request, what the workflow asks of that run today) and
    ``model_metadata`` (today's weights), a run made with other settings, another split or other weights is
    refused with what differs: the tables never show old numbers under a new config."""
    asked = _read_requests(requests) if requests is not None else None
    weights = weights_of_artifact(model_metadata) if model_metadata else None
    runs, seen, stale = [], {}, []
    for path in map(Path, paths):
        run = _load(path)
        key = (run["dataset"], run["method"], run["shots"], run["seed"])
        if key in seen:
            raise ComploraError(f"{path} and {seen[key]} are both {key}; pass each run once")
        seen[key] = path
        if asked is not None:
            if str(path) not in asked:
                raise ComploraError(f"{requests} holds no request for {path}; run the workflow to rewrite it")
            reasons = stale_reasons(run, asked[str(path)], split_sha256=_split_sha256(run), weights_sha256=weights)
            if reasons:
                stale.append(f"  {path.parent}: " + "; ".join(reasons))
        elif weights and run["backbone"]["weights_sha256"] != weights:
            stale.append(f"  {path.parent}: made with other weights than {model_metadata} records")
        run["_path"] = str(path)
        runs.append(run)
    if stale:
        raise ComploraError(
            f"{len(stale)} run(s) were made with other settings than the config asks for, so their numbers are "
            "not this config's:\n" + "\n".join(stale) + "\nRun the workflow (`snakemake --cores all` or `dvc "
            "repro`): it redoes stale runs; or delete those run folders."
        )
    if not runs:
        raise ComploraError("no metrics files were given")
    backbones = {run["backbone"]["weights_sha256"] for run in runs}
    if len(backbones) > 1:
        raise ComploraError(f"the runs come from {len(backbones)} different pretrained weights; aggregate one backbone")
    return runs


def mean_retention(run: dict[str, Any]) -> float | None:
    """The run's retention averaged over its retention datasets (unrounded); None where not measured."""
    return statistics.fmean(run["retention"].values()) if run["retention"] else None


def runs_table(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run (runs.csv): what it is, what it measured, and what it was made with."""
    rows = []
    for run in runs:
        coop = run.get("coop_prompts") or {}
        rows.append(
            {
                **{column: run.get(column) for column in RUN_COLUMNS},
                "seed": run["seed"],
                "protocol": run.get("protocol", "all"),
                "mean_retention": mean_retention(run),
                "retention_status": run.get("retention_status") or ("measured" if run["retention"] else None),
                "coop_prompts_accuracy": coop.get("accuracy"),
                "path": run["_path"],
            }
        )
    table = pd.DataFrame(rows, columns=RUN_COLUMNS)
    table["seed"] = table["seed"].astype("Int64")
    return table


def retention_long(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (run, retention dataset): the adapted model's zero-shot top-1 there minus the pretrained's."""
    rows = [
        {
            "dataset": run["dataset"],
            "method": run["method"],
            "family": run["family"],
            "shots": run["shots"],
            "seed": run["seed"],
            "retention_dataset": other,
            "retention": value,
        }
        for run in runs
        if run["method"] != ZERO_SHOT
        for other, value in sorted(run["retention"].items())
    ]
    columns = ["dataset", "method", "family", "shots", "seed", "retention_dataset", "retention"]
    return pd.DataFrame(rows, columns=columns)


def unchanged(table: pd.DataFrame) -> pd.Series:
    """Rows of runs that leave both encoders as pretrained (retention 0 by construction, not measured)."""
    return table["retention_status"] == ENCODERS_UNCHANGED
