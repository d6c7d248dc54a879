"""results/summary.md: what ran, the averages over datasets, the comparisons with the reference in words,
and the Table-3 tables."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .comparisons import verdict
from .runs import ZERO_SHOT, unchanged
from .tables import AVERAGE, label, markdown, method_rank

DEFINITIONS = """\
*acc.*: top-1 (%) on each dataset's test split, mean over seeds, then over datasets. *ret.*: retention,
the adapted model's zero-shot top-1 on every other configured dataset minus the pretrained model's, in
points (negative = forgotten), averaged over those datasets, seeds and adapted datasets. *unchanged*: a
classifier on frozen features; both encoders are the pretrained ones, so its zero-shot accuracy on every
other dataset is the pretrained model's by construction (retention 0, not re-measured).
"""

COMPARISON_METHOD = """\
Each difference is paired: both methods ran on the same k-shot split (same dataset, shots and seed). Per
dataset the interval is a two-sided Student-t interval of the mean over seeds; over datasets each seed's
differences are first averaged over the datasets both methods ran, then the same interval over seeds.
With one seed there is no interval. Retention is compared only among methods that change the encoders.
"""

FILES = """\
- `tables/runs.csv`: every run, one row each (accuracy, zero-shot accuracy, gain, mean retention, config and
  split hashes, wall time, device); `runs/<dataset>/<method>/shots<k>/seed<s>/metrics.json` holds the rest.
- `tables/accuracy.csv`, `tables/retention.csv`: mean, std (sample, over seeds) and n_seeds per cell.
- `tables/comparisons.csv`: paired differences from the reference with their confidence intervals.
- `tables/*.md`, `tables/*.html`: the tables above; `report.html` (`snakemake --report`) shows them all.
- `plots/accuracy_vs_shots.png`, `plots/accuracy_vs_retention.png`, `plots/accuracy_<dataset>.png`,
  `plots/retention.png`, `plots/training_curves.png` (from each run's `curve.csv`).
"""


def averages(accuracy: pd.DataFrame, retention: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per method: k-shot accuracy and retention averaged over datasets (what the summary's first table and
    `dvc metrics show` give)."""
    acc = accuracy[accuracy["method"] != ZERO_SHOT].groupby(["method", "family", "shots"])["mean"].mean()
    means = retention[retention["retention_dataset"] == "mean"]
    ret = means.groupby(["method", "family", "shots"])["mean"].mean()
    table = pd.DataFrame({"accuracy": acc, "retention": ret}).reset_index()
    kept = set(runs.loc[unchanged(runs), "method"])
    table["unchanged"] = table["method"].isin(kept)
    return table.round({"accuracy": 2, "retention": 2})


def _average_table(table: pd.DataFrame, shots: list[int]) -> str:
    rows = []
    methods = sorted(
        table[["method", "family"]].drop_duplicates().itertuples(index=False), key=lambda p: method_rank(*p)
    )
    for method, family in methods:
        if family == "zeroshot-coop-prompts":
            continue
        cells = table[table["method"] == method].set_index("shots")
        row = {"method": label(method, family)}
        for count in shots:
            value = cells["accuracy"].get(count)
            row[f"{count}-shot acc."] = "-" if value is None or pd.isna(value) else f"{value:.2f}"
        for count in shots:
            value = cells["retention"].get(count)
            if method in set(table.loc[table["unchanged"], "method"]):
                row[f"{count}-shot ret."] = "unchanged"
            else:
                row[f"{count}-shot ret."] = "-" if value is None or pd.isna(value) else f"{value:+.2f}"
        rows.append(row)
    return markdown(pd.DataFrame(rows))


def _comparison_section(comparisons: pd.DataFrame, reference_label: str, reference: str, level: float) -> list[str]:
    if comparisons.empty:
        return [
            f"No comparisons: the reference method `{reference}` is not in this study (set `comparisons.reference`).",
            "",
        ]
    comparisons = comparisons.assign(reference_label=reference_label)
    lines = [f"Paired differences from {reference_label} (method minus {reference_label}), averaged over datasets:", ""]
    for shots in sorted(comparisons["shots"].unique()):
        lines.append(f"**{shots} shot{'s' if shots > 1 else ''}**")
        lines.append("")
        cell = comparisons[(comparisons["shots"] == shots) & (comparisons["dataset"] == AVERAGE)]
        lines += [f"- {verdict(row, level)}" for _, row in cell.iterrows()]
        lines.append("")
    per_dataset = comparisons[comparisons["dataset"] != AVERAGE]
    tested = per_dataset[per_dataset["excludes_zero"].notna()]
    excluding = tested[tested["excludes_zero"].astype(bool)]
    if tested.empty:
        return [*lines, "With one seed per cell there is no interval per dataset either.", "", COMPARISON_METHOD]
    lines.append(
        f"Per dataset, {len(excluding)} of {len(tested)} intervals exclude zero" + (":" if len(excluding) else ".")
    )
    for _, row in excluding.iterrows():
        name = label(row["method"], row["family"])
        lines.append(
            f"- {row['metric']}, {row['dataset']}, {row['shots']} shots: {name} {row['mean_difference']:+.2f} "
            f"({row['ci_low']:+.2f} to {row['ci_high']:+.2f})"
        )
    return [*lines, "", COMPARISON_METHOD]


def summary_markdown(
    runs: pd.DataFrame,
    records: list[dict[str, Any]],
    averaged: pd.DataFrame,
    comparisons: pd.DataFrame,
    tables: dict[str, str],
    reference: str,
    level: float,
) -> str:
    trained = runs[runs["method"] != ZERO_SHOT]
    shots = sorted(trained["shots"].unique().tolist())
    seeds = sorted(trained["seed"].dropna().unique().tolist())
    methods = sorted(
        runs[["method", "family"]].drop_duplicates().itertuples(index=False), key=lambda p: method_rank(*p)
    )
    backbone, versions = records[0]["backbone"], records[0].get("versions", {})
    reference_family = runs.loc[runs["method"] == reference, "family"]
    reference_label = label(reference, reference_family.iloc[0]) if len(reference_family) else reference
    lines = [
        "# Results summary",
        "",
        f"{len(runs)} runs: datasets {', '.join(sorted(runs['dataset'].unique()))}; methods "
        f"{', '.join(m for m, _ in methods)}; shots {', '.join(map(str, shots)) or '-'}; seeds "
        f"{', '.join(map(str, seeds)) or '-'}.",
        f"Backbone `{backbone['model']}` (weights `{backbone['pretrained']}`, sha256 "
        f"`{backbone['weights_sha256'][:16]}…`), devices {', '.join(sorted(runs['device'].dropna().unique()))}, "
        f"{runs['train_seconds'].fillna(0).sum() / 60:.1f} minutes of training in all. Versions: "
        + ", ".join(f"{name} {version}" for name, version in sorted(versions.items()))
        + ".",
        "",
        "## Average over datasets",
        "",
        _average_table(averaged, shots),
    ]
    zero_shot = runs.loc[runs["method"] == ZERO_SHOT, "accuracy"]
    if len(zero_shot):
        lines += [f"Zero-shot CLIP averages {zero_shot.mean():.2f} % on these datasets.", ""]
    lines += [DEFINITIONS, f"## Compared with {reference_label}", ""]
    lines += _comparison_section(comparisons, reference_label, reference, level)
    lines += ["## Accuracy (top-1 %, mean over seeds)", "", tables["accuracy"]]
    lines += ["## Retention (points, mean over the retention datasets and seeds)", "", tables["retention"]]
    lines += ["## Files", "", FILES]
    return "\n".join(lines)
