"""Summaries over seeds and the Table-3 shapes, derived with pandas from the tidy runs table, and their
renderings (CSV, Markdown, HTML).

Methods are ordered by family (complora.methods.families), a family's own entry first and its variants in
natural order (k8 before k16); a published row comes right after its family's own rows.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pandas as pd

from ..errors import ComploraError
from ..methods.families import ENCODERS_UNCHANGED, FAMILIES, PUBLISHED_NAMES
from ..methods.registry import method_label
from .runs import ZERO_SHOT, unchanged

# Zero-shot with CoOp's per-dataset prompts: what the published zero-shot CLIP row used.
ZERO_SHOT_COOP = "zeroshot-coop-prompts"
FAMILY_ORDER = [ZERO_SHOT, ZERO_SHOT_COOP, *FAMILIES]
PUBLISHED_SUFFIX = " (published)"
MEAN = "mean"  # the retention_dataset of rows averaged over every retention dataset
AVERAGE = "Average"
GROUP = ["dataset", "method", "family", "shots"]


def label(method: str, family: str) -> str:
    if method == ZERO_SHOT_COOP:
        return "Zero-shot CLIP (CoOp prompts)"
    return method_label(method, family)


def method_rank(method: str, family: str | None, published: bool = False) -> tuple[int, int, bool, list[Any]]:
    """By family; in a family its own entry, then variants in natural order, then the published row."""
    order = FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)
    natural = [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", method)]
    return (order, int(published), method != family, natural)


def sort_methods(table: pd.DataFrame, first: tuple[str, ...] = (), then: tuple[str, ...] = ()) -> pd.DataFrame:
    """``table`` ordered by the ``first`` columns, then method rank, then the ``then`` columns."""
    published = table["published"] if "published" in table else [False] * len(table)
    ranks = [method_rank(m, f, bool(p)) for m, f, p in zip(table["method"], table["family"], published, strict=True)]
    columns = {name: table[name].tolist() for name in (*first, *then)}

    def key(i: int) -> tuple:
        return (*[columns[c][i] for c in first], ranks[i], *[columns[c][i] for c in then])

    return table.iloc[sorted(range(len(table)), key=key)].reset_index(drop=True)


def sort_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs table by dataset, method, shots and seed (zero-shot's missing seed first)."""
    keyed = runs.assign(_seed=runs["seed"].fillna(-1))
    return sort_methods(keyed, first=("dataset",), then=("shots", "_seed")).drop(columns="_seed")


def _seed_statistics(frame: pd.DataFrame, value: str, keys: list[str]) -> pd.DataFrame:
    summary = frame.groupby(keys, dropna=False, sort=False)[value].agg(["mean", "std", "count"]).reset_index()
    summary = summary.rename(columns={"count": "n_seeds"})
    summary[["mean", "std"]] = summary[["mean", "std"]].round(2) + 0.0  # + 0.0: no "-0.00"
    return summary


def accuracy_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, method, shots): mean, sample std and count of top-1 over seeds. Zero-shot runs
    with CoOp's prompts add a ``zeroshot-coop-prompts`` row."""
    coop = runs[runs["coop_prompts_accuracy"].notna()]
    coop = coop.assign(method=ZERO_SHOT_COOP, family=ZERO_SHOT_COOP, accuracy=coop["coop_prompts_accuracy"])
    frame = pd.concat([runs, coop], ignore_index=True) if len(coop) else runs
    summary = _seed_statistics(frame, "accuracy", GROUP)
    return sort_methods(summary, first=("dataset",), then=("shots",))


def retention_summary(retention: pd.DataFrame) -> pd.DataFrame:
    """One row per (adapted dataset, method, shots, retention dataset), and a ``mean`` row per (adapted
    dataset, method, shots) over the retention datasets (per run first, then over seeds)."""
    per_run = retention.groupby([*GROUP, "seed"], sort=False)["retention"].mean().reset_index()
    frame = pd.concat([retention, per_run.assign(retention_dataset=MEAN)], ignore_index=True)
    summary = _seed_statistics(frame, "retention", [*GROUP, "retention_dataset"])
    summary["_mean_last"] = summary["retention_dataset"] == MEAN
    summary = sort_methods(summary, first=("dataset",), then=("shots", "_mean_last", "retention_dataset"))
    return summary.drop(columns="_mean_last")


def published_rows(path: str | os.PathLike[str], datasets: list[str], families: set[str]) -> pd.DataFrame:
    """Published numbers (a CSV shaped like CLIP-LoRA's Table 3) for our datasets and the published methods
    whose family we ran (CLIP for zero-shot, CLIP-LoRA for LoRA, TIP-Adapter-F, ...), as summary rows."""
    try:
        table = pd.read_csv(path)
        if not {"shots", "method"} <= set(table.columns):
            raise KeyError("shots/method columns")
    except (OSError, KeyError, ValueError, pd.errors.ParserError) as error:
        raise ComploraError(f"reference table {path} is not a shots,method,<datasets> CSV ({error!r})") from None
    table = table[table["method"].map(lambda name: PUBLISHED_NAMES.get(name) in families)]
    present = [dataset for dataset in datasets if dataset in table.columns]
    long = table.melt(id_vars=["shots", "method"], value_vars=present, var_name="dataset", value_name="mean")
    long = long.dropna(subset=["mean"])
    long["family"] = long["method"].map(PUBLISHED_NAMES)
    long["method"] = [
        ("Zero-shot CLIP" if family == ZERO_SHOT else name) + PUBLISHED_SUFFIX
        for name, family in zip(long["method"], long["family"], strict=True)
    ]
    return long.assign(published=True, shots=long["shots"].astype(int))


def wide_table(
    summary: pd.DataFrame, datasets: list[str], signed: bool = False, unchanged_cells: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Rows (shots, method), columns the datasets and their Average: the shape of CLIP-LoRA's Table 3.
    The Average is shown only where every dataset has a value. Values are formatted strings; the rows of
    ``unchanged_cells`` (shots, method, family) say "encoders unchanged" throughout."""
    summary = summary.assign(published=summary["published"].fillna(False) if "published" in summary else False)
    keys = ["shots", "method", "family", "published"]
    wide = summary.pivot_table(index=keys, columns="dataset", values="mean", aggfunc="first").reset_index()
    wide = wide.reindex(columns=[*keys, *datasets])
    wide[AVERAGE] = wide[datasets].mean(axis=1, skipna=False)
    number = "{:+.2f}" if signed else "{:.2f}"
    values = wide[[*datasets, AVERAGE]].map(lambda value: "-" if pd.isna(value) else number.format(value + 0.0))
    table = pd.concat([wide[keys], values], axis=1)
    if unchanged_cells is not None and len(unchanged_cells):
        kept = unchanged_cells[["shots", "method", "family"]].drop_duplicates().assign(published=False)
        table = pd.concat([table, kept.assign(**dict.fromkeys([*datasets, AVERAGE], ENCODERS_UNCHANGED))])
    table = sort_methods(table, first=("shots",))
    labels = [label(m, f) for m, f in zip(table["method"], table["family"], strict=True)]
    return pd.concat([pd.DataFrame({"shots": table["shots"], "method": labels}), table[[*datasets, AVERAGE]]], axis=1)


def accuracy_table(accuracy: pd.DataFrame, datasets: list[str], published: pd.DataFrame | None = None) -> pd.DataFrame:
    frame = pd.concat([accuracy, published], ignore_index=True) if published is not None else accuracy
    return wide_table(frame, datasets)


def retention_table(retention: pd.DataFrame, runs: pd.DataFrame, datasets: list[str]) -> pd.DataFrame:
    """Mean retention per (shots, method); methods that leave the encoders untouched say so instead of a
    number (their zero-shot accuracy elsewhere is the pretrained model's by construction)."""
    means = retention[retention["retention_dataset"] == MEAN]
    return wide_table(means, datasets, signed=True, unchanged_cells=runs[unchanged(runs)])


def markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, disable_numparse=True) + "\n"


def csv(table: pd.DataFrame) -> str:
    return table.to_csv(index=False, lineterminator="\n")


HTML_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ padding: 0.25em 0.6em; border-bottom: 1px solid #ddd; text-align: right; }}
th {{ background: #f3f3f3; }}
td:nth-child(-n+2), th:nth-child(-n+2) {{ text-align: left; }}
</style></head>
<body><h3>{title}</h3>
{table}
<p>{note}</p>
</body></html>
"""


def html(table: pd.DataFrame, title: str, note: str = "") -> str:
    """A page of its own (the Snakemake report shows it inline), no script, no external resource."""
    return HTML_PAGE.format(title=title, table=table.to_html(index=False, border=0, na_rep="-"), note=note)
