"""From per-run metrics.json files to the study's tables, comparisons, plots and summary (docs/design.md,
"Results"); the pieces live in complora.results, this module only writes them.

Everything is rendered before anything is written, and each file is written atomically, so a failure leaves
the previous results intact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .atomic import atomic_path
from .results.base_to_new import base_to_new_markdown, base_to_new_summary
from .results.comparisons import DEFAULT_LEVEL, comparisons
from .results.plots import (
    accuracy_by_dataset,
    accuracy_vs_retention,
    accuracy_vs_shots,
    make_palette,
    read_curves,
    retention_vs_shots,
    training_curves,
)
from .results.runs import ZERO_SHOT, read_runs, retention_long, runs_table
from .results.summary import averages, summary_markdown
from .results.tables import (
    AVERAGE,
    accuracy_summary,
    accuracy_table,
    csv,
    html,
    label,
    markdown,
    published_rows,
    retention_summary,
    retention_table,
    sort_runs,
)

DEFAULT_REFERENCE = "lora"


def _number(value: float) -> float | None:
    return None if pd.isna(value) else value


def headline(averaged: pd.DataFrame, zero_shot: float | None, compared: pd.DataFrame) -> dict[str, Any]:
    """What `dvc metrics show` prints: averages over datasets per method and shots, and the mean paired
    differences from the reference."""
    figures: dict[str, Any] = {"accuracy": {}, "retention": {}}
    if zero_shot is not None:
        figures["accuracy"][ZERO_SHOT] = {"shots0": round(zero_shot, 2)}
    for row in averaged[averaged["datasets"] == averaged["of"]].itertuples(index=False):
        figures["accuracy"].setdefault(row.method, {})[f"shots{row.shots}"] = row.accuracy
        if not row.unchanged and not pd.isna(row.retention):
            figures["retention"].setdefault(row.method, {})[f"shots{row.shots}"] = row.retention
    averaged_rows = compared[compared["dataset"] == "Average"]
    if len(averaged_rows):
        figures["difference_from_reference"] = {
            metric: {
                method: {f"shots{row.shots}": row.mean_difference for row in group.itertuples(index=False)}
                for method, group in rows.groupby("method", sort=False)
            }
            for metric, rows in averaged_rows.groupby("metric", sort=False)
        }
    return figures


def _comparisons_view(compared: pd.DataFrame) -> pd.DataFrame:
    view = compared.assign(method=[label(m, f) for m, f in zip(compared["method"], compared["family"], strict=True)])
    return view.drop(columns=["family"])


def aggregate(
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    reference_table: str | os.PathLike[str] | None = None,
    *,
    requests: str | os.PathLike[str] | None = None,
    model_metadata: str | os.PathLike[str] | None = None,
    compare_to: str = DEFAULT_REFERENCE,
    level: float = DEFAULT_LEVEL,
) -> dict[str, Any]:
    """Write ``tables/``, ``plots/``, ``summary.md`` and ``metrics.json`` under ``out``; returns the headline.

    ``reference_table``: published numbers (CLIP-LoRA's Table 3 CSV) to put beside ours. ``requests`` and
    ``model_metadata``: what the workflow asks of each run today and today's weights; a stale run is refused
    (complora.results.runs). ``compare_to``: the reference of the paired comparisons, at confidence ``level``."""
    out = Path(out)
    records = read_runs(paths, requests, model_metadata)
    runs = sort_runs(runs_table(records))
    datasets = sorted(runs["dataset"].unique())
    accuracy = accuracy_summary(runs)
    retention = retention_summary(retention_long(records))
    base_to_new = bool((runs["protocol"] == "base_to_new").any())
    # The published numbers are all-class accuracies: no row beside a base-to-new study's base-class ones.
    published = (
        published_rows(reference_table, datasets, set(runs["family"])) if reference_table and not base_to_new else None
    )
    accuracy_wide = accuracy_table(accuracy, datasets, published)
    retention_wide = retention_table(retention, runs, datasets)
    compared = comparisons(runs, compare_to, level)
    averaged = averages(accuracy, retention, runs)
    zero_shot_runs = runs.loc[runs["method"] == ZERO_SHOT, "accuracy"]
    zero_shot = float(zero_shot_runs.mean()) if len(zero_shot_runs) else None
    figures = headline(averaged, zero_shot, compared)
    palette = make_palette(list(runs[["method", "family"]].drop_duplicates().itertuples(index=False)))
    md = {"accuracy": markdown(accuracy_wide), "retention": markdown(retention_wide)}
    tables, plots = out / "tables", out / "plots"
    runs_out = runs.assign(path=[str(Path(path).parent) for path in runs["path"]]).rename(columns={"path": "run"})
    files: dict[Path, str | bytes] = {
        tables / "runs.csv": csv(runs_out),
        tables / "runs.html": html(runs_out, "Every run", "One row per run; its metrics.json holds the rest."),
        tables / "accuracy.csv": csv(accuracy),
        tables / "accuracy.md": md["accuracy"],
        tables / "accuracy.html": html(accuracy_wide, "Top-1 accuracy (%), mean over seeds"),
        tables / "retention.csv": csv(retention),
        tables / "retention.md": md["retention"],
        tables / "retention.html": html(retention_wide, "Retention (points), mean over retention datasets and seeds"),
        tables / "comparisons.csv": csv(compared),
        tables / "comparisons.html": html(
            _comparisons_view(compared),
            f"Paired differences from {compare_to} ({level:.0%} Student-t intervals over seeds)",
            "Average: each seed's differences averaged over the datasets both methods ran, then over seeds.",
        ),
        **{plots / f"accuracy_{d}.png": accuracy_by_dataset(accuracy, d, palette) for d in datasets},
        plots / "accuracy_vs_shots.png": accuracy_vs_shots(accuracy, published, datasets, palette),
        plots / "accuracy_vs_retention.png": accuracy_vs_retention(runs, zero_shot, palette),
        plots / "retention.png": retention_vs_shots(retention, palette),
        # Not key-sorted: shots stay in numeric order for `dvc metrics show`.
        out / "metrics.json": json.dumps({**figures, "runs": len(runs)}, indent=2) + "\n",
    }
    if base_to_new:
        split_classes = base_to_new_summary(runs)
        md["base_to_new"] = base_to_new_markdown(split_classes)
        averaged_halves = split_classes[split_classes["dataset"] == AVERAGE]
        figures["base_to_new"] = {}
        for row in averaged_halves.itertuples(index=False):
            figures["base_to_new"].setdefault(row.method, {})[f"shots{row.shots}"] = {
                "base": row.base, "new": _number(row.new), "h": _number(row.harmonic_mean)
            }  # fmt: skip
        files[out / "metrics.json"] = json.dumps({**figures, "runs": len(runs)}, indent=2) + "\n"
        files[tables / "base_to_new.csv"] = csv(split_classes)
        files[tables / "base_to_new.md"] = md["base_to_new"]
        files[tables / "base_to_new.html"] = html(
            split_classes.assign(
                method=[label(m, f) for m, f in zip(split_classes["method"], split_classes["family"], strict=True)]
            ),
            "Base-to-new: base and new classes' top-1 (%) and their harmonic mean",
            "Per dataset: means over seeds, H of the means. Average: means over the datasets, H of those.",
        )
    curves = training_curves(read_curves(runs), datasets, palette)
    if curves is not None:
        files[plots / "training_curves.png"] = curves
    summary = summary_markdown(runs, records, averaged, compared, md, compare_to, level, curves is not None)
    files[out / "summary.md"] = summary
    for path, content in files.items():
        with atomic_path(path) as temporary:
            if isinstance(content, bytes):
                temporary.write_bytes(content)
            else:
                temporary.write_text(content)
    for old in plots.glob("*.png"):  # a dataset or method no longer in the study leaves no figure behind
        if old not in files:
            old.unlink()
    return figures
