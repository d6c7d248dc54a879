"""Paired comparisons against the reference: Student-t intervals pinned on hand-computed cases, the pairing by
split, the average over datasets per seed, and the summary's words."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from complora.results.comparisons import comparisons, interval, verdict

# t quantiles from tables: t(0.975; 2) = 4.302653, t(0.975; 1) = 12.706205, t(0.95; 2) = 2.919986.
CASES = {
    "three seeds, includes zero": ([1.0, 2.0, 3.0], 0.95, (2.0, 1.0, 2.0 - 2.484138, 2.0 + 2.484138)),
    "three seeds, excludes zero": ([2.0, 2.5, 3.0], 0.95, (2.5, 0.5, 2.5 - 1.242069, 2.5 + 1.242069)),
    "two seeds": ([1.0, 3.0], 0.95, (2.0, math.sqrt(2), 2.0 - 12.706205, 2.0 + 12.706205)),
    "90 % level": ([1.0, 2.0, 3.0], 0.90, (2.0, 1.0, 2.0 - 1.685852, 2.0 + 1.685852)),
    "identical differences": ([0.5, 0.5, 0.5], 0.95, (0.5, 0.0, 0.5, 0.5)),
}


@pytest.mark.parametrize("case", CASES)
def test_interval_matches_hand_computation(case: str):
    differences, level, expected = CASES[case]
    assert interval(np.array(differences), level) == pytest.approx(expected, abs=1e-5)


def test_one_seed_has_no_interval():
    mean, std, low, high = interval(np.array([1.5]))
    assert mean == 1.5 and all(math.isnan(value) for value in (std, low, high))


def runs_frame(rows: list[tuple]) -> pd.DataFrame:
    columns = ["dataset", "method", "family", "shots", "seed", "accuracy", "mean_retention", "retention_status"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.assign(seed=frame["seed"].astype("Int64"))  # as complora.results.runs gives it


def test_pairs_by_split_and_averages_over_datasets_per_seed():
    rows = []
    # Per seed, method minus LoRA: A: +1, +2, +3; B: +3, +2, +7 (B's seed 3 also far off: pairing matters).
    for dataset, offsets, base in (("A", (1, 2, 3), 50.0), ("B", (3, 2, 7), 30.0)):
        for seed, offset in zip((1, 2, 3), offsets, strict=True):
            rows.append((dataset, "lora", "lora", 4, seed, base + 10 * seed, -2.0, "measured"))
            rows.append((dataset, "complora", "complora", 4, seed, base + 10 * seed + offset, -1.0, "measured"))
            rows.append((dataset, "linear_probe", "linear_probe", 4, seed, base, None, "encoders unchanged"))
    rows.append(("A", "zeroshot", "zeroshot", 0, None, 40.0, None, None))
    table = comparisons(runs_frame(rows), "lora")
    a = table[(table["method"] == "complora") & (table["metric"] == "accuracy") & (table["dataset"] == "A")].iloc[0]
    assert (a["n_seeds"], a["mean_difference"], a["ci_low"], a["ci_high"]) == (3, 2.0, -0.48, 4.48)
    assert not a["excludes_zero"]
    average = table[(table["method"] == "complora") & (table["metric"] == "accuracy") & (table["dataset"] == "Average")]
    average = average.iloc[0]
    # Per-seed averages over A and B: 2, 2, 5 -> mean 3, sd sqrt(3), half-width 4.302653 * 1 = 4.30.
    assert (average["datasets"], average["n_seeds"], average["mean_difference"]) == (2, 3, 3.0)
    assert (average["ci_low"], average["ci_high"]) == (round(3 - 4.302653, 2), round(3 + 4.302653, 2))
    retention = table[(table["metric"] == "retention") & (table["dataset"] == "A")]
    assert retention["method"].tolist() == ["complora"], "encoders unchanged: no retention comparison"
    row = retention.iloc[0]
    assert (row["mean_difference"], row["std_difference"], row["excludes_zero"]) == (1.0, 0.0, True)
    assert set(table["method"]) == {"complora", "linear_probe"}, "neither the reference nor zero-shot"
    assert comparisons(runs_frame(rows), "clap").empty, "a reference the study does not run: no comparisons"


def test_verdicts_say_whether_the_interval_excludes_zero():
    base = {"metric": "accuracy", "method": "complora", "family": "complora", "reference_label": "LoRA",
            "shots": 16, "mean_difference": 2.5, "ci_low": 1.26, "ci_high": 3.74, "n_seeds": 3}  # fmt: skip
    assert verdict(pd.Series({**base, "excludes_zero": True})) == (
        "Comp-LoRA's accuracy at 16 shots is higher than LoRA's by 2.50 points (95% CI +1.26 to +3.74, 3 seeds): "
        "beyond seed noise."
    )
    includes = verdict(pd.Series({**base, "ci_low": -0.5, "excludes_zero": False}))
    assert "differs from LoRA's by +2.50 points (95% CI -0.50 to +3.74" in includes and "within seed noise" in includes
    single = {**base, "shots": 1, "ci_low": math.nan, "ci_high": math.nan, "n_seeds": 1, "excludes_zero": None}
    assert "at 1 shot differs" in verdict(pd.Series(single)) and "no interval" in verdict(pd.Series(single))


def test_an_average_needs_datasets_paired_at_every_seed():
    rows = []
    for dataset, seeds in (("A", (1, 2)), ("B", (2, 3))):  # no dataset has all of seeds 1, 2, 3
        for seed in seeds:
            rows.append((dataset, "lora", "lora", 1, seed, 50.0, -1.0, "measured"))
            rows.append((dataset, "complora", "complora", 1, seed, 50.0 - 1e-3, -1.0, "measured"))
    table = comparisons(runs_frame(rows), "lora")
    assert "Average" not in set(table["dataset"]), "no average over datasets that differ from seed to seed"
    a = table[(table["dataset"] == "A") & (table["metric"] == "accuracy")].iloc[0]
    assert str(a["mean_difference"]) == "0.0" and str(a["ci_low"]) == "0.0", "rounded to 0.0, never -0.0"
