"""Aggregation: the tidy runs table, summaries with mean/std/n_seeds, Table-3-shaped Markdown and HTML,
paired comparisons, plots, a summary, and refusals (stale runs included)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from complora.aggregate import aggregate
from complora.cli import main
from complora.errors import ComploraError
from helpers import table_rows

BACKBONE = {"model": "demo-vit-tiny", "pretrained": "w.safetensors", "weights_sha256": "ab" * 32}


def write_run(
    root: Path, dataset: str, method: str, shots: int, seed: int | None, accuracy: float, retention: dict
) -> Path:
    path = root / dataset / method / f"shots{shots}" / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True)
    run = {"dataset": dataset, "method": method, "shots": shots, "seed": seed, "accuracy": accuracy,
           "retention": retention, "backbone": BACKBONE, "config_hash": "c", "device": "cpu", "train_seconds": 1.0,
           "versions": {"complora": "0.1.0"}}  # fmt: skip
    path.write_text(json.dumps(run))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "runs"
    paths = [write_run(root, "A", "zeroshot", 0, None, 50.0, {}), write_run(root, "B", "zeroshot", 0, None, 30.0, {})]
    run = json.loads(paths[0].read_text())  # A's zero-shot run also measured CoOp's prompt for A
    paths[0].write_text(json.dumps({**run, "coop_prompts": {"templates": ["a {} thing."], "accuracy": 52.0}}))
    for dataset, base in (("A", 60.0), ("B", 40.0)):
        for method, shift, forget in (("lora", 0.0, -4.0), ("complora", -1.0, -1.0)):
            for shots in (1, 4):
                for seed in (1, 2, 3):
                    accuracy = base + shift + shots + seed  # seeds 1, 2, 3: mean base+shift+shots+2, std 1
                    retention = {"A": forget + seed, "B": forget - seed, "C": forget}
                    retention.pop(dataset)
                    paths.append(write_run(root, dataset, method, shots, seed, accuracy, retention))
    return paths


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_tables_plots_and_summary(runs: list[Path], tmp_path: Path):
    out = tmp_path / "results"
    figures = aggregate(runs, out)
    accuracy = read_csv(out / "tables" / "accuracy.csv")
    assert list(accuracy[0]) == ["dataset", "method", "family", "shots", "mean", "std", "n_seeds"]
    assert len(accuracy) == 3 + 2 * 2 * 2
    coop = next(r for r in accuracy if r["method"] == "zeroshot-coop-prompts")
    assert (coop["dataset"], coop["shots"], coop["mean"]) == ("A", "0", "52.0")
    row = next(r for r in accuracy if (r["dataset"], r["method"], r["shots"]) == ("A", "lora", "4"))
    assert (float(row["mean"]), float(row["std"]), int(row["n_seeds"])) == (66.0, 1.0, 3)
    zero = next(r for r in accuracy if r["method"] == "zeroshot" and r["dataset"] == "B")
    assert (zero["shots"], zero["mean"], zero["std"], zero["n_seeds"]) == ("0", "30.0", "", "1")

    retention = read_csv(out / "tables" / "retention.csv")
    a_lora = {
        r["retention_dataset"]: r for r in retention if (r["dataset"], r["method"], r["shots"]) == ("A", "lora", "1")
    }
    assert set(a_lora) == {"B", "C", "mean"}
    assert float(a_lora["B"]["mean"]) == -6.0 and float(a_lora["C"]["mean"]) == -4.0
    assert float(a_lora["mean"]["mean"]) == -5.0 and int(a_lora["mean"]["n_seeds"]) == 3

    table = table_rows((out / "tables" / "accuracy.md").read_text())
    assert table[0] == ["shots", "method", "A", "B", "Average"]
    assert table[1] == ["0", "Zero-shot CLIP", "50.00", "30.00", "40.00"]
    assert table[2] == ["0", "Zero-shot CLIP (CoOp prompts)", "52.00", "-", "-"]
    assert ["4", "LoRA", "66.00", "46.00", "56.00"] in table and ["4", "Comp-LoRA", "65.00", "45.00", "55.00"] in table
    retention_md = table_rows((out / "tables" / "retention.md").read_text())
    assert ["1", "LoRA", "-5.00", "-3.00", "-4.00"] in retention_md
    assert ["1", "Comp-LoRA", "-2.00", "+0.00", "-1.00"] in retention_md
    html = (out / "tables" / "accuracy.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<td>Zero-shot CLIP (CoOp prompts)</td>" in html
    assert "<script" not in html and "http" not in html, "self-contained, nothing to fetch"

    every = read_csv(out / "tables" / "runs.csv")
    assert len(every) == len(runs) and list(every[0])[:5] == ["dataset", "method", "family", "shots", "seed"]
    first = every[0]
    assert (first["dataset"], first["method"], first["seed"], first["accuracy"]) == ("A", "zeroshot", "", "50.0")
    lora = next(r for r in every if (r["dataset"], r["method"], r["shots"], r["seed"]) == ("A", "lora", "4", "3"))
    assert float(lora["accuracy"]) == 67.0 and float(lora["mean_retention"]) == -5.5 and lora["device"] == "cpu"

    assert figures["accuracy"]["lora"] == {"shots1": 53.0, "shots4": 56.0}
    assert figures["retention"]["complora"]["shots4"] == -1.0
    assert json.loads((out / "metrics.json").read_text()) == {**figures, "runs": len(runs)}
    for name in (
        "accuracy_A.png",
        "accuracy_B.png",
        "retention.png",
        "accuracy_vs_shots.png",
        "accuracy_vs_retention.png",
    ):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "plots" / "training_curves.png").exists(), "none of these runs has a curve"
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# Results summary")
    assert ["LoRA", "53.00", "56.00", "-4.00", "-4.00"] in table_rows(summary.split("## Average over datasets")[1])


def test_same_runs_give_the_same_files(runs: list[Path], tmp_path: Path):
    aggregate(runs, tmp_path / "one")
    aggregate(list(reversed(runs)), tmp_path / "two")
    for path in sorted((tmp_path / "one").rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (tmp_path / "two" / path.relative_to(tmp_path / "one")).read_bytes(), path


def test_refusals(runs: list[Path], tmp_path: Path, capsys):
    with pytest.raises(ComploraError, match="pass each run once"):
        aggregate([*runs, runs[-1]], tmp_path / "out")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"dataset": "A"}))
    with pytest.raises(ComploraError, match=r"broken\.json lacks"):
        aggregate([broken], tmp_path / "out")
    other = json.loads(runs[0].read_text())
    other["backbone"] = {**BACKBONE, "weights_sha256": "cd" * 32}
    other["dataset"] = "Z"
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(other))
    with pytest.raises(ComploraError, match="2 different pretrained weights"):
        aggregate([*runs, foreign], tmp_path / "out")
    assert main(["aggregate", str(tmp_path / "missing.json"), "--out", str(tmp_path / "out")]) == 2
    assert "missing.json does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_published_numbers_beside_ours(runs: list[Path], tmp_path: Path):
    reference = tmp_path / "table3.csv"
    reference.write_text(
        "shots,method,A,B,Z,Average\n0,CLIP,51.5,31.5,9.0,30.7\n1,CoOp (4),1,1,1,1\n1,CLIP-LoRA,62.0,42.0,9.0,37.7\n"
    )
    aggregate(runs, tmp_path / "out", reference)
    table = table_rows((tmp_path / "out" / "tables" / "accuracy.md").read_text())
    assert ["0", "Zero-shot CLIP (published)", "51.50", "31.50", "41.50"] in table
    assert ["1", "CLIP-LoRA (published)", "62.00", "42.00", "52.00"] in table
    assert not any("CoOp (4)" in row[1] for row in table), "only the published rows of the families we ran"
    published = table.index(["1", "CLIP-LoRA (published)", "62.00", "42.00", "52.00"])
    assert table[published - 1][:2] == ["1", "LoRA"], "a published row stands right after ours"
    assert table[published + 1][:2] == ["1", "Comp-LoRA"]
    reference.write_text("no,header\n")
    with pytest.raises(ComploraError, match="is not a shots,method"):
        aggregate(runs, tmp_path / "bad", reference)


def test_variants_and_classifier_only_methods_are_labelled_by_name(runs: list[Path], tmp_path: Path):
    root = tmp_path / "more"
    for dataset in ("A", "B"):
        for seed in (1, 2, 3):
            variant = write_run(root, dataset, "complora_k8", 1, seed, 70.0, {"C": -0.5})
            run = json.loads(variant.read_text())
            variant.write_text(json.dumps({**run, "family": "complora"}))
            tip = write_run(root, dataset, "tip_adapter_f", 1, seed, 65.0, {})
            run = json.loads(tip.read_text())
            tip.write_text(json.dumps({**run, "family": "tip_adapter_f", "retention_status": "encoders unchanged"}))
            runs += [variant, tip]
    reference = tmp_path / "table3.csv"
    reference.write_text("shots,method,A,B\n1,TIP-Adapter-F,61.0,41.0\n1,CLIP-Adapter,1,1\n")
    aggregate(runs, tmp_path / "out", reference)
    accuracy = table_rows((tmp_path / "out" / "tables" / "accuracy.md").read_text())
    rows = [row[1] for row in accuracy if row[0] == "1"]
    assert rows == ["LoRA", "Comp-LoRA", "complora_k8", "Tip-Adapter-F", "TIP-Adapter-F (published)"], rows
    retention = table_rows((tmp_path / "out" / "tables" / "retention.md").read_text())
    assert ["1", "Tip-Adapter-F", "encoders unchanged", "encoders unchanged", "encoders unchanged"] in retention
    assert ["1", "complora_k8", "-0.50", "-0.50", "-0.50"] in retention
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert ["Tip-Adapter-F", "65.00", "-", "unchanged", "unchanged"] in table_rows(
        summary.split("## Average over datasets")[1].split("##")[0]
    )
    last = read_csv(tmp_path / "out" / "tables" / "accuracy.csv")[-1]
    assert (last["method"], last["family"]) == ("tip_adapter_f", "tip_adapter_f")
    compared = read_csv(tmp_path / "out" / "tables" / "comparisons.csv")
    assert {r["method"] for r in compared if r["metric"] == "retention"} == {"complora", "complora_k8"}, (
        "retention is compared only among methods that change the encoders"
    )
    assert {r["method"] for r in compared if r["metric"] == "accuracy"} == {"complora", "complora_k8", "tip_adapter_f"}
