"""The base-to-new table (CoCoOp's Table 1 shape): per dataset, and averaged over the datasets, each method's
base-class accuracy, new-class accuracy and their harmonic mean H.

Per dataset the accuracies are averaged over seeds first and H is taken of the two means, as CoCoOp reports
it; the Average averages base and new over the datasets, then takes H of those (shown only where every
dataset has a value). A method without new-class predictions (complora.fitting) has base accuracy alone.
"""

from __future__ import annotations

import pandas as pd

from ..data.base_to_new import harmonic_mean
from .tables import AVERAGE, label, sort_methods

KEYS = ["method", "family", "shots"]


def _with_harmonic_mean(table: pd.DataFrame) -> pd.DataFrame:
    values = [
        round(harmonic_mean(base, new), 2) if not pd.isna(new) else float("nan")
        for base, new in zip(table["base"], table["new"], strict=True)
    ]
    return table.assign(harmonic_mean=values)


def base_to_new_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, method, shots) and per (Average, method, shots): base, new, H, seeds."""
    chosen = runs[runs["protocol"] == "base_to_new"]
    grouped = chosen.groupby(["dataset", *KEYS], dropna=False, sort=False)
    per_dataset = grouped.agg(
        base=("base_accuracy", "mean"),
        new=("new_accuracy", lambda values: values.mean() if values.notna().all() else float("nan")),
        n_seeds=("base_accuracy", "count"),
    ).reset_index()
    datasets = per_dataset["dataset"].nunique()
    averaged = per_dataset.groupby(KEYS, dropna=False, sort=False).agg(
        base=("base", "mean"),
        new=("new", lambda values: values.mean() if values.notna().all() else float("nan")),
        datasets=("dataset", "count"),
        n_seeds=("n_seeds", "min"),
    )
    averaged = averaged[averaged["datasets"] == datasets].drop(columns="datasets").reset_index()
    table = pd.concat([per_dataset, averaged.assign(dataset=AVERAGE)], ignore_index=True)
    table[["base", "new"]] = table[["base", "new"]].round(2) + 0.0
    table = _with_harmonic_mean(table)
    order = {name: index for index, name in enumerate([AVERAGE, *sorted(chosen["dataset"].unique())])}
    table = table.assign(_dataset=table["dataset"].map(order))
    return sort_methods(table, first=("_dataset", "shots")).drop(columns="_dataset").reset_index(drop=True)


def base_to_new_markdown(summary: pd.DataFrame) -> str:
    """A section per dataset (the Average first) and shot count: one row per method, zero-shot CLIP first,
    columns Base, New, H."""
    zero_shot = summary[summary["shots"] == 0]
    sections = []
    for (dataset, shots), rows in summary[summary["shots"] > 0].groupby(["dataset", "shots"], sort=False):
        rows = pd.concat([zero_shot[zero_shot["dataset"] == dataset], rows])
        view = pd.DataFrame(
            {
                "method": [label(m, f) for m, f in zip(rows["method"], rows["family"], strict=True)],
                "Base": rows["base"].map(_number),
                "New": rows["new"].map(_number),
                "H": rows["harmonic_mean"].map(_number),
            }
        )
        title = "Average over datasets" if dataset == AVERAGE else dataset
        table = view.to_markdown(index=False, disable_numparse=True)
        sections.append(f"### {title} ({shots} shots per base class)\n\n{table}\n")
    return "\n".join(sections)


def _number(value: float) -> str:
    return "-" if pd.isna(value) else f"{value:.2f}"
