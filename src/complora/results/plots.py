"""The study's figures as PNG bytes (matplotlib, no timestamps: the same results give the same bytes)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd

from ..methods.families import ADAPTER, FAMILIES
from .runs import ZERO_SHOT
from .tables import MEAN, ZERO_SHOT_COOP, label, method_rank

FIGURE_SIZE = (5.6, 3.8)
Palette = dict[str, dict[str, Any]]


def make_palette(methods: list[tuple[str, str]]) -> Palette:
    """One style per method, the same in every figure: its own colour (in table order), solid lines and
    circles for methods that train adapters, dash-dots and squares for classifiers on frozen features."""
    import matplotlib

    tab20 = matplotlib.colormaps["tab20"].colors
    colours = [*tab20[0::2], *tab20[1::2], *matplotlib.colormaps["tab20b"].colors]  # strong hues first
    ranked = sorted(methods, key=lambda pair: method_rank(*pair))
    styles = {}
    for index, (method, family) in enumerate(m for m in ranked if m[0] not in (ZERO_SHOT, ZERO_SHOT_COOP)):
        adapter = family in FAMILIES and FAMILIES[family].kind == ADAPTER
        styles[method] = {"color": colours[index % len(colours)], "linestyle": "-" if adapter else "-.",
                          "marker": "o" if adapter else "s"}  # fmt: skip
    return styles


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _methods(table: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = table[["method", "family"]].drop_duplicates().itertuples(index=False)
    return sorted(((m, f) for m, f in pairs), key=lambda pair: method_rank(*pair))


def _shots_axis(axes: Any, shots: list[int]) -> None:
    """Shots on a log2 axis, labelled with the shot counts themselves."""
    axes.set_xscale("log", base=2)
    axes.set_xticks(shots, [str(value) for value in shots])
    axes.minorticks_off()
    axes.set_xlabel("shots per class")


def _finish(figure: Any, axes: Any, ylabel: str, title: str, legend_outside: bool = False) -> bytes:
    """Label, lay out and render a figure to PNG bytes, then free it."""
    plt = _pyplot()
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    _legend(axes, outside=legend_outside)
    figure.tight_layout()
    return _png(figure, plt)


def _legend(axes: Any, outside: bool = True) -> None:
    if not axes.get_legend_handles_labels()[0]:
        return  # nothing drawn (e.g. no method changes the encoders): no empty legend box
    if outside:
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        axes.legend(fontsize=7)


def _png(figure: Any, plt: Any) -> bytes:
    buffer = io.BytesIO()
    # No creation time or software version in the file: the same results give the same PNG bytes.
    figure.savefig(buffer, format="png", dpi=120, metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def accuracy_by_dataset(accuracy: pd.DataFrame, dataset: str, palette: Palette) -> bytes:
    """Top-1 vs shots for one dataset: a line per trained method (± std over seeds), zero-shot as a level."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=FIGURE_SIZE)
    rows = accuracy[accuracy["dataset"] == dataset]
    for method, family in _methods(rows):
        points = rows[rows["method"] == method].sort_values("shots")
        if method in (ZERO_SHOT, ZERO_SHOT_COOP):
            style = "--" if method == ZERO_SHOT else ":"
            axes.axhline(points["mean"].iloc[0], color="gray", linestyle=style, label=label(method, family))
        else:
            yerr = points["std"].fillna(0.0)
            axes.errorbar(points["shots"], points["mean"], yerr=yerr, capsize=3, label=label(method, family),
                          **palette[method])  # fmt: skip
    _shots_axis(axes, sorted(rows.loc[rows["shots"] > 0, "shots"].unique().tolist()))
    return _finish(figure, axes, "top-1 accuracy (%)", dataset, legend_outside=True)


def accuracy_vs_shots(
    accuracy: pd.DataFrame, published: pd.DataFrame | None, datasets: list[str], palette: Palette
) -> bytes:
    """Top-1 averaged over the datasets vs shots, a line per method; published averages (CLIP-LoRA's Table 3)
    dashed in their family's colour, where they cover every dataset."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    complete = accuracy.groupby(["method", "shots"])["dataset"].transform("nunique") == len(datasets)
    means = accuracy[complete].groupby(["method", "family", "shots"])["mean"].mean().reset_index()
    colours: dict[str, Any] = {}
    for method, family in _methods(means):
        points = means[means["method"] == method].sort_values("shots")
        if method in (ZERO_SHOT, ZERO_SHOT_COOP):
            style = "--" if method == ZERO_SHOT else ":"
            axes.axhline(points["mean"].iloc[0], color="gray", linestyle=style, label=label(method, family))
            continue
        axes.plot(points["shots"], points["mean"], label=label(method, family), **palette[method])
        if method == family:
            colours[family] = palette[method]["color"]
    if published is not None and len(published):
        shots_ours = set(means["shots"])
        rows = published[published["shots"].isin(shots_ours) & published["dataset"].isin(datasets)]
        full = rows.groupby(["method", "shots"])["dataset"].transform("nunique") == len(datasets)
        averaged = rows[full].groupby(["method", "family", "shots"])["mean"].mean().reset_index()
        for (method, family), points in averaged.groupby(["method", "family"], sort=False):
            points = points.sort_values("shots")
            if family == ZERO_SHOT or len(points) < 2:
                continue
            axes.plot(points["shots"], points["mean"], linestyle="--", marker="x", color=colours.get(family),
                      label=method)  # fmt: skip
    _shots_axis(axes, sorted(means.loc[means["shots"] > 0, "shots"].unique().tolist()))
    title = f"average over {len(datasets)} datasets"
    return _finish(figure, axes, "top-1 accuracy (%)", title, legend_outside=True)


def accuracy_vs_retention(runs: pd.DataFrame, zero_shot: float | None, palette: Palette) -> bytes:
    """One panel per shot count: a point per method and variant that changes the encoders, at its mean
    retention (x) and mean top-1 (y), averaged over seeds and datasets; the pretrained model at (0, its
    zero-shot top-1). Up and to the right is better."""
    plt = _pyplot()
    measured = runs[runs["mean_retention"].notna()]
    shots = sorted(measured["shots"].unique().tolist())
    figure, panels = plt.subplots(1, max(1, len(shots)), figsize=(3.4 * max(1, len(shots)) + 1.6, 3.6), squeeze=False)
    means = measured.groupby(["method", "family", "shots"])[["mean_retention", "accuracy"]].mean().reset_index()
    for axes, count in zip(panels[0], shots, strict=False):
        cell = means[means["shots"] == count]
        for method, family in _methods(cell):
            point = cell[cell["method"] == method].iloc[0]
            style = palette[method]
            axes.scatter(point["mean_retention"], point["accuracy"], label=label(method, family), zorder=3,
                         color=style["color"], marker=style["marker"])  # fmt: skip
        if zero_shot is not None:
            axes.scatter(0.0, zero_shot, marker="*", s=90, color="gray", label="zero-shot (pretrained)", zorder=2)
        axes.axvline(0.0, color="gray", linewidth=0.8)
        axes.set_title(f"{count} shot{'s' if count > 1 else ''}")
        axes.set_xlabel("retention (points)")
        axes.grid(alpha=0.3)
    panels[0][0].set_ylabel("top-1 accuracy (%)")
    _legend(panels[0][-1])
    figure.suptitle("accuracy vs retention, averaged over datasets and seeds", fontsize=10)
    figure.tight_layout()
    return _png(figure, plt)


def retention_vs_shots(retention: pd.DataFrame, palette: Palette) -> bytes:
    """Mean zero-shot retention on the other datasets vs shots, one line per method (0 = nothing forgotten)."""
    plt = _pyplot()
    means = retention[retention["retention_dataset"] == MEAN]
    averaged = means.groupby(["method", "family", "shots"])["mean"].mean().reset_index()
    figure, axes = plt.subplots(figsize=FIGURE_SIZE)
    axes.axhline(0.0, color="gray", linewidth=1)
    for method, family in _methods(averaged):
        points = averaged[averaged["method"] == method].sort_values("shots")
        axes.plot(points["shots"], points["mean"], label=label(method, family), **palette[method])
    _shots_axis(axes, sorted(averaged["shots"].unique().tolist()))
    return _finish(figure, axes, "retention (points, mean over datasets)", "zero-shot retention after adaptation",
                   legend_outside=True)  # fmt: skip


def read_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """The training curves (curve.csv beside metrics.json) of the runs that have one, with their run's keys."""
    frames = []
    for row in runs.itertuples(index=False):
        path = Path(row.path).parent / "curve.csv"
        if path.is_file():
            curve = pd.read_csv(path)
            frames.append(curve.assign(dataset=row.dataset, method=row.method, family=row.family, shots=row.shots,
                                       seed=row.seed))  # fmt: skip
    columns = ["step", "loss", "learning_rate", "dataset", "method", "family", "shots", "seed"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def training_curves(curves: pd.DataFrame, datasets: list[str], palette: Palette) -> bytes | None:
    """Training loss vs step at the largest shot count, one panel per dataset, a line per method (mean over
    seeds). None when no run has a curve."""
    if curves.empty:
        return None
    plt = _pyplot()
    shots = int(curves["shots"].max())
    curves = curves[curves["shots"] == shots]
    columns = min(3, len(datasets))
    rows = -(-len(datasets) // columns)
    figure, panels = plt.subplots(rows, columns, figsize=(3.6 * columns + 1.8, 2.9 * rows), squeeze=False)
    for index, dataset in enumerate(datasets):
        axes = panels[index // columns][index % columns]
        cell = curves[curves["dataset"] == dataset]
        for method, family in _methods(cell):
            mean = cell[cell["method"] == method].groupby("step")["loss"].mean()
            axes.plot(mean.index, mean.to_numpy(), label=label(method, family), linewidth=1.2,
                      color=palette[method]["color"])  # fmt: skip
        axes.set_title(dataset, fontsize=9)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        if index % columns == 0:
            axes.set_ylabel("training loss")
    for index in range(len(datasets), rows * columns):
        panels[index // columns][index % columns].axis("off")
    _legend(panels[0][-1])
    figure.suptitle(f"training loss at {shots} shots (mean since the previous point, mean over seeds)", fontsize=10)
    figure.tight_layout()
    return _png(figure, plt)
