"""results/summary.md: what ran, the averages over datasets, the comparisons with the reference in words,
and the Table-3 tables."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .comparisons import verdict
from .runs import ZERO_SHOT, unchanged
from .tables import AVERAGE, label, markdown, method_rank

DEFINITIONS = """\
*acc.*: top-1 (%) on each dataset's test split, mean over seeds, then over datasets ("(n/N)": over the n of
the N datasets the method ran). *ret.*: retention,
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
The intervals are not corrected for multiple comparisons: at 95 %, about one in twenty excludes zero by
chance alone, so read an isolated one with care.
"""

FILES = """\
- `tables/runs.csv`: every run, one row each (accuracy, zero-shot accuracy, gain, mean retention, config and
  split hashes, wall time, device); `runs/<dataset>/<method>/shots<k>/seed<s>/metrics.json` holds the rest.
- `tables/accuracy.csv`, `tables/retention.csv`: mean, std (sample, over seeds) and n_seeds per cell.
- `tables/comparisons.csv`: paired differences from the reference with their confidence intervals.
- `tables/*.md`, `tables/*.html`: the tables above; `report.html` (`snakemake --report`) shows them all.
- `plots/accuracy_vs_shots.png`, `plots/accuracy_vs_retention.png`, `plots/accuracy_<dataset>.png`,
  `plots/retention.png`{curves}.
"""


BASE_TO_NEW = (
    "Trained on the base classes (the first half by label); each test image classified among its own half's "
    "classes. Accuracy, gain and retention elsewhere in this summary are the base classes'. `-`: the method "
    "has no prediction for classes it was not fitted on (`tables/base_to_new.csv`).\n"
)


def averages(accuracy: pd.DataFrame, retention: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per method and shots: accuracy and retention averaged over the datasets it ran (``datasets`` of
    ``of`` the study's; the summary marks a partial average, `dvc metrics show` gets only full ones)."""
    keys = ["method", "family", "shots"]
    trained = accuracy[accuracy["method"] != ZERO_SHOT]
    acc = trained.groupby(keys)["mean"].mean()
    means = retention[retention["retention_dataset"] == "mean"]
    ret = means.groupby(keys)["mean"].mean()
    table = pd.DataFrame({"accuracy": acc, "retention": ret, "datasets": trained.groupby(keys)["dataset"].nunique()})
    table = table.reset_index()
    table["of"] = runs["dataset"].nunique()
    table["unchanged"] = table["method"].isin(set(runs.loc[unchanged(runs), "method"]))
    return table.assign(accuracy=table["accuracy"].round(2) + 0.0, retention=table["retention"].round(2) + 0.0)


def _average_table(table: pd.DataFrame, shots: list[int]) -> str:
    """Method rows, k-shot accuracy and retention columns; "(n/N)" where the method ran on n of the N
    datasets, its average being over those only."""
    rows = []
    methods = sorted(
        table[["method", "family"]].drop_duplicates().itertuples(index=False), key=lambda p: method_rank(*p)
    )
    for method, family in methods:
        if family == "zeroshot-coop-prompts":
            continue
        cells = table[table["method"] == method].set_index("shots")
        row = {"method": label(method, family)}
        partial = {
            count: f" ({cells.at[count, 'datasets']}/{cells.at[count, 'of']})"
            if count in cells.index and cells.at[count, "datasets"] < cells.at[count, "of"]
            else ""
            for count in shots
        }
        for count in shots:
            value = cells["accuracy"].get(count)
            row[f"{count}-shot acc."] = "-" if value is None or pd.isna(value) else f"{value:.2f}{partial[count]}"
        for count in shots:
            value = cells["retention"].get(count)
            if method in set(table.loc[table["unchanged"], "method"]):
                row[f"{count}-shot ret."] = "unchanged"
            elif value is None or pd.isna(value):
                row[f"{count}-shot ret."] = "-"
            else:
                row[f"{count}-shot ret."] = f"{value:+.2f}{partial[count]}"
        rows.append(row)
    return markdown(pd.DataFrame(rows))


def _interval(row: pd.Series) -> str:
    difference = f"{row['mean_difference']:+.2f}"
    if row["n_seeds"] < 2:
        return f"{difference} (1 seed)"
    star = " *" if row["excludes_zero"] else ""
    return f"{difference} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]{star}"


def _comparison_table(averaged: pd.DataFrame) -> str:
    """Method rows; a column per metric and shots: mean difference [interval], * where it excludes zero."""
    columns = [(metric, shots) for metric in ("accuracy", "retention") for shots in sorted(averaged["shots"].unique())]
    rows = []
    for (method, family), group in averaged.groupby(["method", "family"], sort=False):
        cells = {(row["metric"], row["shots"]): _interval(row) for _, row in group.iterrows()}
        short = {"accuracy": "acc.", "retention": "ret."}
        row = {"method": label(method, family)}
        row |= {f"{shots}-shot {short[metric]}": cells.get((metric, shots), "-") for metric, shots in columns}
        rows.append(row)
    return markdown(pd.DataFrame(rows))


def _shots(counts: pd.Series) -> str:
    values = sorted(counts)
    return f"{', '.join(map(str, values))} shot{'s' if len(values) > 1 or values[0] > 1 else ''}"


def _in_words(averaged: pd.DataFrame, reference_label: str, level: float) -> list[str]:
    """Which differences exclude zero (sentences) and which do not (grouped by method)."""
    tested = averaged[averaged["excludes_zero"].notna()]
    beyond = tested[tested["excludes_zero"].astype(bool)]
    lines = []
    if len(beyond):
        lines.append(f"Beyond seed noise (the {level:.0%} interval excludes zero):")
        lines += [f"- {verdict(row, level)}" for _, row in beyond.iterrows()]
    else:
        lines.append(f"No difference from {reference_label} excludes zero at {level:.0%}.")
    within = tested[~tested["excludes_zero"].astype(bool)]
    if len(within):
        lines += ["", "Within seed noise (the interval includes zero): "]
        parts = []
        for (method, family), group in within.groupby(["method", "family"], sort=False):
            cells = [f"{metric} at {_shots(rows['shots'])}" for metric, rows in group.groupby("metric", sort=False)]
            parts.append(f"{label(method, family)} ({'; '.join(cells)})")
        lines[-1] += "; ".join(parts) + "."
    single = averaged[averaged["excludes_zero"].isna()]
    if len(single):
        lines += ["", f"{len(single)} difference(s) rest on one seed and have no interval."]
    return lines


def _comparison_section(
    comparisons: pd.DataFrame, reference_label: str, reference: str, level: float, ran: bool
) -> list[str]:
    if comparisons.empty:
        why = "no other trained method ran" if ran else f"the reference method `{reference}` did not run in it"
        return [f"No comparisons in this study: {why} (the reference is `comparisons.reference`).", ""]
    comparisons = comparisons.assign(reference_label=reference_label)
    averaged = comparisons[comparisons["dataset"] == AVERAGE]
    lines = [
        f"Method minus {reference_label} in points, averaged over datasets: mean of the paired differences "
        f"[{level:.0%} interval over seeds]; * where the interval excludes zero.",
        "",
        _comparison_table(averaged),
        *_in_words(averaged, reference_label, level),
        "",
    ]
    per_dataset = comparisons[comparisons["dataset"] != AVERAGE]
    tested = per_dataset[per_dataset["excludes_zero"].notna()]
    excluding = tested[tested["excludes_zero"].astype(bool)]
    if len(tested):
        lines.append(
            f"Per dataset (`tables/comparisons.csv`), {len(excluding)} of {len(tested)} intervals exclude zero."
        )
        lines.append("")
    return [*lines, COMPARISON_METHOD]


def summary_markdown(
    runs: pd.DataFrame,
    records: list[dict[str, Any]],
    averaged: pd.DataFrame,
    comparisons: pd.DataFrame,
    tables: dict[str, str],
    reference: str,
    level: float,
    has_curves: bool,
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
    lines += _comparison_section(comparisons, reference_label, reference, level, bool(len(reference_family)))
    if "base_to_new" in tables:
        lines += ["## Base-to-new (top-1 %: base classes, new classes, harmonic mean H)", "", BASE_TO_NEW]
        lines += [tables["base_to_new"]]
    lines += ["## Accuracy (top-1 %, mean over seeds)", "", tables["accuracy"]]
    lines += ["## Retention (points, mean over the retention datasets and seeds)", "", tables["retention"]]
    curves = ", `plots/training_curves.png` (from each adapter run's `curve.csv`)" if has_curves else ""
    lines += ["## Files", "", FILES.format(curves=curves)]
    return "\n".join(lines)
