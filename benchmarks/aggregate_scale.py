"""The aggregation at the paper grid's scale: synthetic metrics.json files for 11 datasets x 5 shots x 3 seeds
x 14 methods (LoRA, Comp-LoRA and four variants, the eight feature-level baselines) plus the zero-shot runs,
then `complora.aggregate` on them (tables, comparisons, plots, summary), timed.

    python benchmarks/aggregate_scale.py [--methods 14] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from complora.aggregate import aggregate
from complora.data.registry import PAPER_DATASETS

ADAPTERS = {"lora": "lora", "complora": "complora", "complora_k8": "complora", "complora_k64": "complora",
            "complora_input": "complora", "complora_output": "complora"}  # fmt: skip
FEATURES = ["linear_probe", "tip_adapter", "tip_adapter_f", "clip_adapter", "taskres", "lp_pp", "zs_lp", "clap"]
BACKBONE = {"model": "ViT-B-16", "pretrained": "openai", "weights_sha256": "ab" * 32}


def write_runs(root: Path, methods: int, rng: np.random.Generator) -> list[Path]:
    families = {**ADAPTERS, **{name: name for name in FEATURES}}
    chosen = dict(list(families.items())[:methods])
    paths = []
    for dataset in PAPER_DATASETS:
        path = root / dataset / "zeroshot" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"dataset": dataset, "method": "zeroshot", "family": "zeroshot", "shots": 0,
                                    "seed": None, "accuracy": 60.0, "retention": {}, "backbone": BACKBONE,
                                    "config_hash": "c", "device": "cuda"}))  # fmt: skip
        paths.append(path)
        for method, family in chosen.items():
            for shots in (1, 2, 4, 8, 16):
                for seed in (1, 2, 3):
                    others = [d for d in PAPER_DATASETS if d != dataset]
                    retention = {} if family in FEATURES else {d: float(rng.normal(-1, 1)) for d in others}
                    run = {"dataset": dataset, "method": method, "family": family, "shots": shots, "seed": seed,
                           "accuracy": float(60 + 2 * np.log2(shots) + rng.normal(0, 1)), "retention": retention,
                           "backbone": BACKBONE, "config_hash": "c", "device": "cuda", "train_seconds": 600.0,
                           "retention_status": "encoders unchanged" if family in FEATURES else None}  # fmt: skip
                    path = root / dataset / method / f"shots{shots}" / f"seed{seed}" / "metrics.json"
                    path.parent.mkdir(parents=True)
                    path.write_text(json.dumps(run))
                    paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", type=int, default=14)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        paths = write_runs(root / "runs", args.methods, np.random.default_rng(0))
        times = []
        for index in range(args.rounds):
            start = time.perf_counter()
            aggregate(paths, root / f"out{index}", Path("workflow/resources/cliplora_table3_vitb16.csv"))
            times.append(time.perf_counter() - start)
        first = root / "out0"
        same = all(
            (first / name).read_bytes() == (root / f"out{i}" / name).read_bytes()
            for i in range(1, args.rounds)
            for name in ("tables/runs.csv", "tables/comparisons.csv", "summary.md", "plots/accuracy_vs_shots.png")
        )
        comparisons = len((first / "tables" / "comparisons.csv").read_text().splitlines()) - 1
    print(json.dumps({"runs": len(paths), "comparison_rows": comparisons, "seconds": [round(t, 2) for t in times],
                      "median_seconds": round(statistics.median(times), 2), "identical_outputs": same}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
