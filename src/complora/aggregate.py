"""From per-run metrics.json files to the study's tables, plots and summary (design.md, "Results contract").

Only the runs passed in are read (the workflow passes exactly the configured grid), so results of an
older configuration lying in results/runs never leak into the tables.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .atomic import atomic_path
from .errors import ComploraError
from .methods.families import ENCODERS_UNCHANGED, FAMILIES, PUBLISHED_NAMES
from .methods.registry import method_label

ZERO_SHOT = "zeroshot"
# Zero-shot with CoOp's per-dataset prompts: what the published zero-shot CLIP row used.
ZERO_SHOT_COOP = "zeroshot-coop-prompts"
ZERO_SHOT_METHODS = (ZERO_SHOT, ZERO_SHOT_COOP)
REQUIRED_FIELDS = ("dataset", "method", "shots", "seed", "accuracy", "retention", "backbone", "config_hash")
PUBLISHED_SUFFIX = " (published)"
MEAN = "mean"  # the retention_dataset value of rows averaged over every retention dataset
FAMILY_ORDER = [ZERO_SHOT, ZERO_SHOT_COOP, *FAMILIES]


def _family(method: str) -> str | None:
    """A row's family: the method's own for our runs (``name`` or ``family/name``), none for published rows."""
    if method == ZERO_SHOT_COOP:
        return ZERO_SHOT_COOP
    return method.split("/", 1)[0] if "/" in method else (method if method in FAMILIES else None)


def _name(method: str) -> str:
    return method.split("/", 1)[1] if "/" in method else method


def _key(run: dict[str, Any]) -> str:
    """The method key of a run: its name, prefixed by its family when it is a variant (so rows sort by family
    and the label knows the family)."""
    family, name = run.get("family", run["method"]), run["method"]
    return name if family == name else f"{family}/{name}"


def _label(method: str) -> str:
    if method == ZERO_SHOT_COOP:
        return "Zero-shot CLIP (CoOp prompts)"
    return method_label(_name(method), _family(method))


def read_runs(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Every metrics file, checked for the contract's fields, one backbone, and no duplicate cell."""
    runs, seen = [], {}
    for path in paths:
        path = Path(path)
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
        key = (run["dataset"], _key(run), run["shots"], run["seed"])
        if key in seen:
            raise ComploraError(f"{path} and {seen[key]} are both {key}; pass each run once")
        seen[key] = path
        run["_path"] = str(path)
        runs.append(run)
    if not runs:
        raise ComploraError("no metrics files were given")
    weights = {run["backbone"]["weights_sha256"] for run in runs}
    if len(weights) > 1:
        raise ComploraError(f"the runs come from {len(weights)} different pretrained weights; aggregate one backbone")
    return runs


def _method_rank(method: str) -> tuple[int, bool, list[Any]]:
    """By family; in a family ours before the published row, and variants in natural order (k8 before k16)."""
    family = _family(method)
    order = FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)
    natural = [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", _name(method))]
    return (order, method.endswith(PUBLISHED_SUFFIX), natural)


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "mean": round(statistics.fmean(values), 2),
        "std": round(statistics.stdev(values), 2) if len(values) > 1 else None,
        "n_seeds": len(values),
    }


def accuracy_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, method, shots): mean and sample std of top-1 over seeds."""
    cells: dict[tuple, list[float]] = defaultdict(list)
    for run in runs:
        cells[(run["dataset"], _key(run), run["shots"])].append(run["accuracy"])
        if run["method"] == ZERO_SHOT and run.get("coop_prompts"):
            cells[(run["dataset"], ZERO_SHOT_COOP, 0)].append(run["coop_prompts"]["accuracy"])
    keys = sorted(cells, key=lambda key: (key[0], _method_rank(key[1]), key[2]))
    return [{"dataset": d, "method": _name(m), "key": m, "shots": s, **_summary(cells[(d, m, s)])} for d, m, s in keys]


def retention_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (adapted dataset, method, shots, retention dataset), plus a ``mean`` row over them."""
    cells: dict[tuple, list[float]] = defaultdict(list)
    for run in runs:
        if run["method"] == ZERO_SHOT or not run["retention"]:
            continue
        key = (run["dataset"], _key(run), run["shots"])
        for other, value in run["retention"].items():
            cells[(*key, other)].append(value)
        cells[(*key, MEAN)].append(statistics.fmean(run["retention"].values()))
    keys = sorted(cells, key=lambda key: (key[0], _method_rank(key[1]), key[2], key[3] == MEAN, key[3]))
    return [
        {
            "dataset": d,
            "method": _name(m),
            "key": m,
            "shots": s,
            "retention_dataset": r,
            **_summary(cells[(d, m, s, r)]),
        }
        for d, m, s, r in keys
    ]


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({column: "" if row[column] is None else row[column] for column in columns} for row in rows)
    return buffer.getvalue()


def _format(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _wide_table(cells: dict[tuple[int, str], dict[str, Any]], datasets: list[str], signed: bool) -> str:
    """Rows (shots, method), columns datasets + Average: the shape of CLIP-LoRA's Table 3."""
    lines = [
        "| shots | method | " + " | ".join(datasets) + " | Average |",
        "|---|---|" + "---|" * (len(datasets) + 1),
    ]
    for shots, method in sorted(cells, key=lambda key: (key[0], _method_rank(key[1]))):
        row = cells[(shots, method)]
        values = [row.get(dataset) for dataset in datasets]
        if ENCODERS_UNCHANGED in values:
            formatted = [ENCODERS_UNCHANGED] * (len(datasets) + 1)
        else:
            average = statistics.fmean(values) if None not in values else None
            formatted = [_format(value, signed) for value in [*values, average]]
        lines.append(f"| {shots} | {_label(method)} | " + " | ".join(formatted) + " |")
    return "\n".join(lines) + "\n"


def reference_cells(
    path: str | os.PathLike[str], datasets: list[str], families: set[str] | None = None
) -> dict[tuple[int, str], dict[str, float]]:
    """Published numbers (a CSV shaped like CLIP-LoRA's Table 3) for the datasets we report and the published
    methods whose family we ran (CLIP for zero-shot, CLIP-LoRA for LoRA, TIP-Adapter-F, ...; all when
    ``families`` is None)."""
    methods = {name for name, family in PUBLISHED_NAMES.items() if families is None or family in families}
    cells: dict[tuple[int, str], dict[str, float]] = defaultdict(dict)
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if not {"shots", "method"} <= set(reader.fieldnames or []):
                raise KeyError("shots/method columns")
            for row in reader:
                if row["method"] in methods:
                    family = PUBLISHED_NAMES[row["method"]]
                    label = "Zero-shot CLIP" if family == ZERO_SHOT else row["method"]
                    for dataset in datasets:
                        if row.get(dataset):
                            cells[(int(row["shots"]), f"{family}/{label}{PUBLISHED_SUFFIX}")][dataset] = float(
                                row[dataset]
                            )
    except (OSError, KeyError, ValueError) as error:
        raise ComploraError(f"reference table {path} is not a shots,method,<datasets> CSV ({error!r})") from None
    return cells


def accuracy_table(
    rows: list[dict[str, Any]], datasets: list[str], reference: dict[tuple[int, str], dict[str, float]] | None = None
) -> str:
    cells: dict[tuple[int, str], dict[str, float]] = defaultdict(dict, reference or {})
    for row in rows:
        cells[(row["shots"], row["key"])][row["dataset"]] = row["mean"]
    return _wide_table(cells, datasets, signed=False)


def unchanged_cells(runs: list[dict[str, Any]]) -> set[tuple[str, str, int]]:
    """(dataset, method key, shots) of runs that leave both encoders as pretrained."""
    return {
        (run["dataset"], _key(run), run["shots"]) for run in runs if run.get("retention_status") == ENCODERS_UNCHANGED
    }


def retention_table(
    rows: list[dict[str, Any]], datasets: list[str], unchanged: set[tuple[str, str, int]] = frozenset()
) -> str:
    """Mean retention per (shots, method); methods that leave the encoders untouched say so instead of a
    number (their zero-shot accuracy elsewhere is the pretrained model's by construction)."""
    cells: dict[tuple[int, str], dict[str, Any]] = defaultdict(dict)
    for row in rows:
        if row["retention_dataset"] == MEAN:
            cells[(row["shots"], row["key"])][row["dataset"]] = row["mean"]
    for dataset, method, shots in unchanged:
        cells[(shots, method)][dataset] = ENCODERS_UNCHANGED
    return _wide_table(cells, datasets, signed=True)


def headline(accuracy: list[dict[str, Any]], retention: list[dict[str, Any]]) -> dict[str, Any]:
    """Averages over datasets per method and shots: what ``dvc metrics show`` prints."""
    figures: dict[str, Any] = {"accuracy": {}, "retention": {}}
    for name, rows in (("accuracy", accuracy), ("retention", [r for r in retention if r["retention_dataset"] == MEAN])):
        groups: dict[tuple[str, int], list[float]] = defaultdict(list)
        for row in rows:
            groups[(row["key"], row["shots"])].append(row["mean"])
        for (method, shots), values in sorted(groups.items(), key=lambda item: (_method_rank(item[0][0]), item[0][1])):
            figures[name].setdefault(_name(method), {})[f"shots{shots}"] = round(statistics.fmean(values), 2)
    return figures


def _shots_axis(axes: Any, shots: list[int]) -> None:
    """Shots on a log2 axis, labelled with the shot counts themselves."""
    axes.set_xscale("log", base=2)
    axes.set_xticks(shots, [str(value) for value in shots])
    axes.minorticks_off()
    axes.set_xlabel("shots per class")


def plot_accuracy(rows: list[dict[str, Any]], dataset: str) -> bytes:
    """Top-1 vs shots for one dataset: a line per trained method, zero-shot as a dashed level."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.6))
    methods = sorted({row["key"] for row in rows if row["dataset"] == dataset}, key=_method_rank)
    for method in methods:
        points = sorted(
            (row["shots"], row["mean"], row["std"] or 0.0)
            for row in rows
            if (row["dataset"], row["key"]) == (dataset, method)
        )
        label = _label(method)
        if method in ZERO_SHOT_METHODS:
            style = "--" if method == ZERO_SHOT else ":"
            axes.axhline(points[0][1], color="gray", linestyle=style, label=label)
        else:
            shots, means, stds = zip(*points, strict=True)
            axes.errorbar(shots, means, yerr=stds, marker="o", capsize=3, label=label)
    _shots_axis(axes, sorted({row["shots"] for row in rows if row["method"] not in ZERO_SHOT_METHODS}))
    return _finish(figure, axes, "top-1 accuracy (%)", dataset)


def plot_retention(rows: list[dict[str, Any]]) -> bytes:
    """Mean zero-shot retention on the other datasets vs shots, one line per method (0 = nothing forgotten)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    groups: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["retention_dataset"] == MEAN:
            groups[row["key"]][row["shots"]].append(row["mean"])
    figure, axes = plt.subplots(figsize=(5, 3.6))
    axes.axhline(0.0, color="gray", linewidth=1)
    for method in sorted(groups, key=_method_rank):
        shots = sorted(groups[method])
        axes.plot(
            shots,
            [statistics.fmean(groups[method][s]) for s in shots],
            marker="o",
            label=_label(method),
        )
    _shots_axis(axes, sorted({row["shots"] for row in rows}))
    return _finish(figure, axes, "retention (points, mean over datasets)", "zero-shot retention after adaptation")


def _finish(figure: Any, axes: Any, ylabel: str, title: str) -> bytes:
    """Label, lay out and render a figure to PNG bytes, then free it."""
    from matplotlib import pyplot as plt

    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    # No creation time or software version in the file: the same results give the same PNG bytes.
    figure.savefig(buffer, format="png", dpi=120, metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def _summary_markdown(runs: list[dict[str, Any]], figures: dict[str, Any], accuracy_md: str, retention_md: str) -> str:
    trained = [run for run in runs if run["method"] != ZERO_SHOT]
    datasets = sorted({run["dataset"] for run in runs})
    backbone = runs[0]["backbone"]
    devices = sorted({run.get("device", "?") for run in runs})
    versions = runs[0].get("versions", {})
    shots = sorted({run["shots"] for run in trained})
    seeds = sorted({run["seed"] for run in trained})
    methods = sorted({_key(run) for run in runs}, key=_method_rank)
    unchanged = {method for _, method, _ in unchanged_cells(runs)}
    train_hours = sum(run.get("train_seconds", 0.0) for run in runs) / 3600
    lines = [
        "# Results summary",
        "",
        f"{len(runs)} runs: datasets {', '.join(datasets)}; methods {', '.join(map(_name, methods))}; "
        f"shots {', '.join(map(str, shots)) or '-'}; seeds {', '.join(map(str, seeds)) or '-'}.",
        f"Backbone `{backbone['model']}` (weights `{backbone['pretrained']}`, sha256 "
        f"`{backbone['weights_sha256'][:16]}…`), devices {', '.join(devices)}, "
        f"{train_hours * 60:.1f} minutes of training in all. Versions: "
        + ", ".join(f"{name} {version}" for name, version in sorted(versions.items()))
        + ".",
        "",
        "## Average over datasets",
        "",
        "| method | " + " | ".join([f"{s}-shot acc." for s in shots] + [f"{s}-shot ret." for s in shots]) + " |",
        "|---|" + "---|" * (2 * len(shots)),
    ]
    for method in methods:
        if method == ZERO_SHOT:
            continue
        name = _name(method)
        acc = [_format(figures["accuracy"].get(name, {}).get(f"shots{s}")) for s in shots]
        ret = [_format(figures["retention"].get(name, {}).get(f"shots{s}"), signed=True) for s in shots]
        if method in unchanged:
            ret = ["unchanged"] * len(shots)
        lines.append(f"| {_label(method)} | " + " | ".join(acc + ret) + " |")
    if ZERO_SHOT in figures["accuracy"]:
        lines += ["", f"Zero-shot CLIP averages {figures['accuracy'][ZERO_SHOT]['shots0']:.2f} % on these datasets."]
    lines += [
        "",
        "*acc.*: top-1 (%) on each dataset's test split, mean over seeds, then over datasets. *ret.*: retention,",
        "the adapted model's zero-shot top-1 on every other configured dataset minus the pretrained model's, in",
        "points (negative = forgotten), averaged over those datasets, seeds and adapted datasets. *unchanged*: a",
        "classifier on frozen features; both encoders are the pretrained ones, so its zero-shot accuracy on every",
        "other dataset is the pretrained model's by construction (retention 0, not re-measured).",
        "",
        "## Accuracy (top-1 %, mean over seeds)",
        "",
        accuracy_md,
        "## Retention (points, mean over the retention datasets and seeds)",
        "",
        retention_md,
        "## Files",
        "",
        "- `tables/accuracy.csv`, `tables/retention.csv`: tidy tables with mean, std (sample, over seeds) and n_seeds.",
        "- `tables/accuracy.md`, `tables/retention.md`: the tables above.",
        "- `plots/accuracy_<dataset>.png`: accuracy vs shots per dataset; `plots/retention.png`: retention vs shots.",
        "- `runs/<dataset>/<method>/shots<k>/seed<s>/metrics.json`: every run's figures and provenance.",
        "",
    ]
    return "\n".join(lines)


def aggregate(
    paths: Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    reference: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write ``tables/``, ``plots/``, ``summary.md`` and ``metrics.json`` under ``out``; returns the headline.
    ``reference``: published numbers (CLIP-LoRA's Table 3 CSV) to put beside ours in the accuracy table."""
    out = Path(out)
    runs = read_runs(paths)
    datasets = sorted({run["dataset"] for run in runs})
    accuracy = accuracy_rows(runs)
    retention = retention_rows(runs)
    families = {run.get("family", run["method"]) for run in runs}
    published = reference_cells(reference, datasets, families) if reference else None
    accuracy_md = accuracy_table(accuracy, datasets, published)
    retention_md = retention_table(retention, datasets, unchanged_cells(runs))
    figures = headline(accuracy, retention)
    # Everything is rendered before anything is written, so a failure leaves the previous results intact.
    tables, plots = out / "tables", out / "plots"
    files = {
        tables / "accuracy.csv": _csv(accuracy, ["dataset", "method", "shots", "mean", "std", "n_seeds"]),
        tables / "retention.csv": _csv(
            retention, ["dataset", "method", "shots", "retention_dataset", "mean", "std", "n_seeds"]
        ),
        tables / "accuracy.md": accuracy_md,
        tables / "retention.md": retention_md,
        **{plots / f"accuracy_{dataset}.png": plot_accuracy(accuracy, dataset) for dataset in datasets},
        plots / "retention.png": plot_retention(retention),
        # Not key-sorted: shots stay in numeric order for `dvc metrics show`.
        out / "metrics.json": json.dumps({**figures, "runs": len(runs)}, indent=2) + "\n",
        out / "summary.md": _summary_markdown(runs, figures, accuracy_md, retention_md),
    }
    for path, content in files.items():
        with atomic_path(path) as temporary:
            if isinstance(content, bytes):
                temporary.write_bytes(content)
            else:
                temporary.write_text(content)
    return figures
