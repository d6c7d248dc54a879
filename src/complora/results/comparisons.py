"""Paired comparisons against a reference method: which differences are effects, which are seed noise.

Two methods run on the same k-shot split when they share (dataset, shots, seed), so their difference on
that split is one paired observation. Per (dataset, shots) complora reports the mean of the paired
differences and a Student-t confidence interval over the seeds; over datasets, each seed's differences
are first averaged over the datasets both methods ran (one observation per seed), then the same interval.
With one seed there is no interval: a single split cannot tell an effect from the split's luck.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from .runs import ZERO_SHOT, unchanged
from .tables import AVERAGE, label, sort_methods

DEFAULT_LEVEL = 0.95
METRICS = {"accuracy": "accuracy", "retention": "mean_retention"}
COLUMNS = ["metric", "method", "family", "reference", "dataset", "shots", "datasets", "n_seeds",
           "mean_difference", "std_difference", "ci_low", "ci_high", "excludes_zero"]  # fmt: skip


def interval(differences: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float, float, float]:
    """Mean, sample std, and the two-sided Student-t ``level`` interval of the mean of paired differences;
    std and interval are NaN for a single observation."""
    n = len(differences)
    mean = float(np.mean(differences))
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(np.std(differences, ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def _row(metric: str, method: str, family: str, reference: str, dataset: str, shots: int, datasets: int,
         differences: np.ndarray, level: float) -> dict:  # fmt: skip
    mean, std, low, high = interval(differences, level)
    excludes = None if len(differences) < 2 else bool(low > 0 or high < 0)
    mean, std, low, high = (round(value, 2) + 0.0 for value in (mean, std, low, high))  # + 0.0: no "-0.00"
    return {"metric": metric, "method": method, "family": family, "reference": reference, "dataset": dataset,
            "shots": shots, "datasets": datasets, "n_seeds": len(differences), "mean_difference": mean,
            "std_difference": std, "ci_low": low, "ci_high": high, "excludes_zero": excludes}  # fmt: skip


def comparisons(runs: pd.DataFrame, reference: str, level: float = DEFAULT_LEVEL) -> pd.DataFrame:
    """Every trained method against ``reference``, per (metric, dataset, shots) and averaged over datasets
    (``dataset`` = Average). Retention is compared only between methods that change the encoders."""
    trained = runs[(runs["method"] != ZERO_SHOT)]
    base = trained[trained["method"] == reference]
    rows = []
    if base.empty:
        return pd.DataFrame(rows, columns=COLUMNS)
    keys = ["dataset", "shots", "seed"]
    for metric, column in METRICS.items():
        candidates = trained if metric == "accuracy" else trained[~unchanged(trained)]
        reference_values = base[[*keys, column]].rename(columns={column: "reference_value"})
        for (method, family), group in candidates.groupby(["method", "family"], sort=False):
            if method == reference:
                continue
            pairs = group[[*keys, column]].merge(reference_values, on=keys).dropna()
            pairs["difference"] = pairs[column] - pairs["reference_value"]
            for (dataset, shots), cell in pairs.groupby(["dataset", "shots"]):
                rows.append(
                    _row(metric, method, family, reference, dataset, shots, 1, cell["difference"].to_numpy(), level)
                )
            for shots, cell in pairs.groupby("shots"):
                # Only datasets paired at every seed, so each seed's average is over the same datasets.
                seeds = cell["seed"].nunique()
                complete = cell.groupby("dataset")["seed"].transform("nunique") == seeds
                cell = cell[complete]
                if cell.empty:
                    continue  # no dataset paired at every seed: no average over the same datasets
                per_seed = cell.groupby("seed")["difference"].mean().to_numpy()
                rows.append(
                    _row(metric, method, family, reference, AVERAGE, shots, cell["dataset"].nunique(), per_seed, level)
                )
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["_average_last"] = table["dataset"] == AVERAGE
    table["_metric"] = table["metric"].map(list(METRICS).index)
    table = sort_methods(table, first=("_metric",), then=("shots", "_average_last", "dataset"))
    return table.drop(columns=["_average_last", "_metric"])


def verdict(row: pd.Series, level: float = DEFAULT_LEVEL) -> str:
    """One comparison in words (``row`` of the comparisons table, with the reference's ``reference_label``)."""
    name, reference = label(row["method"], row["family"]), row["reference_label"]
    shots = f"{row['shots']} shot{'s' if row['shots'] > 1 else ''}"
    what = f"{name}'s {row['metric']} at {shots}"
    difference = abs(row["mean_difference"])
    if pd.isna(row["excludes_zero"]):
        return (f"{what} differs from {reference}'s by {row['mean_difference']:+.2f} points on one seed: no "
                "interval, a single split cannot separate an effect from seed noise.")  # fmt: skip
    ci = f"{level:.0%} CI {row['ci_low']:+.2f} to {row['ci_high']:+.2f}, {row['n_seeds']} seeds"
    if row["excludes_zero"]:
        direction = "higher" if row["mean_difference"] > 0 else "lower"
        return f"{what} is {direction} than {reference}'s by {difference:.2f} points ({ci}): beyond seed noise."
    return f"{what} differs from {reference}'s by {row['mean_difference']:+.2f} points ({ci}): within seed noise."
