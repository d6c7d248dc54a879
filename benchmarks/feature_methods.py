"""Cost of the feature-level baselines on the demo: the feature store built once per dataset, then every
feature-level method of config.yaml fitted and evaluated on every (dataset, shots, seed) cell, in one process
with complora's own code (what the `features` and `fit` jobs run, without their process starts).

Run it in a project where the demo has run (`snakemake --cores all` or `dvc repro`): it reads the demo world,
the pretrained weights, the k-shot splits, the evaluation caches and the zero-shot runs from there, and writes
its stores and runs under a temporary folder. Prints a JSON report; see benchmarks/README.md for the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
import yaml

from complora.configcheck import check_config, load_schema
from complora.data.testset import DatasetRef
from complora.demo.tasks import TASKS
from complora.features.store import build_store
from complora.fitting import FitSpec, fit_and_evaluate
from complora.methods.families import FEATURE, store_views, views_needed
from complora.methods.registry import family_settings, study_methods
from complora.runrecord import Backbone, load_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="a project where the demo has run")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    project = args.project.resolve()
    schema = load_schema(project / "workflow" / "schemas" / "config.schema.yaml")
    config = check_config(yaml.safe_load((project / "config.yaml").read_text()), schema, datasets=list(TASKS))
    methods = [method for method in study_methods(config).values() if method.kind == FEATURE]
    views = store_views([views_needed(method.family, method.settings) for method in methods])
    backbone_id = config["backbone"]["model"]
    checkpoint = project / f"resources/models/{backbone_id}/open_clip_model.safetensors"
    backbone = Backbone(backbone_id, str(checkpoint))
    template = config["prompt_template"]
    store_seconds, fit_seconds = {}, {method.name: 0.0 for method in methods}
    cells = 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        model, tokenizer, transform = load_backbone(backbone, torch.device("cpu"))
        for dataset in config["datasets"]:
            world = project / "resources/data/demo_world" / dataset
            ref = DatasetRef(
                dataset, world, world / "split.json", project / f"resources/evalcache/{dataset}/{backbone_id}"
            )
            splits = [
                project / f"resources/splits/{dataset}/shots{shots}_seed{seed}.json"
                for shots in config["shots"]
                for seed in config["seeds"]
            ]
            store = Path(work) / "features" / dataset
            began = time.perf_counter()
            build_store(ref, model, tokenizer, transform, splits, [template], views,
                        store, threads=args.threads)  # fmt: skip
            store_seconds[dataset] = round(time.perf_counter() - began, 2)
            for method in methods:
                spec = FitSpec(
                    dataset=ref,
                    name=method.name,
                    family=method.family,
                    settings=family_settings(method.family, method.settings),
                    backbone=backbone,
                    features=store,
                    few_shot_files=splits,
                    zero_shot_run=project / f"results/runs/{dataset}/zeroshot/metrics.json",
                    model_metadata=project / f"resources/models/{backbone_id}/metadata.json",
                    template=template,
                )
                began = time.perf_counter()
                runs = fit_and_evaluate(spec, Path(work) / "runs" / dataset / method.name)
                fit_seconds[method.name] += time.perf_counter() - began
                cells += len(runs)
    total = time.perf_counter() - start
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {args.threads} threads",
        "torch": torch.__version__,
        "views": views,
        "cells": cells,
        "store_seconds": store_seconds,
        "fit_seconds": {name: round(seconds, 2) for name, seconds in fit_seconds.items()},
        "total_seconds": round(total, 2),
        "target_seconds": 120,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
