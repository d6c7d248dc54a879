"""The GPU figures of benchmarks/gpu_check.sh: training-step times, evaluation throughput, and what they
mean for one 16-shot ImageNet run and for the paper grid. Prints a JSON line after each stage (the last one
has everything).

- Steps: the 16-shot-ImageNet-shaped step of ``adapter_step.py`` (ViT-B-16 random weights, 32 images at
  224^2, bf16 autocast, fused AdamW) for LoRA and Comp-LoRA, ``--steps`` steps each in alternating blocks,
  at 1,000 prompts (ImageNet) and at 100 (the time per step is taken as linear in the prompts between
  them, for the other datasets); the CLIP-LoRA-style reference at 1,000 prompts for the ratio, and LoRA
  through torch.compile (``complora train --compile``) with its compilation time.
- Evaluation: complora's streamed top-1 (pinned non-blocking copies, normalisation on the GPU, bf16 image
  tower, float32 classifier) over ``--eval-images`` uint8 images in memory, batch 256: images per second
  of the model side; the evaluation cache's reads come on top (benchmarks/README.md, eval_scale.py).
- Extrapolation: CLIP-LoRA's protocol, 500 x shots iterations, then the run's own test split and the ten
  retention test splits (133,696 images in all; docs/datasets.md), for every dataset x shots
  x seed x {LoRA, Comp-LoRA} of config/paper.yaml, plus each dataset's zero-shot evaluation. Lower bounds:
  the GPU's side only, without reading the evaluation caches, cutting the training crops (ImageNet 16-shot
  decodes its originals per batch), the Comp-LoRA ablation's 96 jobs or the feature store.
- Prompt learners (``prompt_step.py``): CoOp (4), CoOp (16), KgCoOp and CoCoOp steps at both prompt counts,
  CoCoOp's test per image, and their GPU hours on the paper grid and its base-to-new option.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import open_clip
import torch

from adapter_step import make_model, make_step, prompts, random_model, timed
from complora.adapters import AdapterConfig
from complora.data.images import EvalTransform
from complora.data.registry import load_registry
from complora.data.testset import ArrayPixels, TestSplit
from complora.evaluation import top1_accuracies
from complora.subspace import build_projector
from prompt_step import grid_hours, measure

SHOTS = (1, 2, 4, 8, 16)
SEEDS = 3
METHODS = ("lora", "complora")
REGISTRY = load_registry()


def step_seconds(
    device: torch.device, classes: int, steps: int, variants: tuple[str, ...], projector, warmup: int = 3
) -> dict:
    generator = torch.Generator().manual_seed(0)
    tokens = open_clip.tokenize(prompts(classes)).to(device)
    images = torch.randn(32, 3, 224, 224, generator=generator).to(device)
    labels = torch.randint(0, classes, (32,), generator=generator).to(device)
    runs = {}
    for variant in variants:
        model = make_model(variant, device, projector if variant == "complora" else None)
        runs[variant] = make_step(model, variant, images, tokens, labels)
    for run in runs.values():
        timed(run, device, warmup)  # kernels chosen (compiled), allocator filled
    blocks = 4
    totals = dict.fromkeys(variants, 0.0)
    for block in range(blocks):
        for variant in variants if block % 2 == 0 else variants[::-1]:
            totals[variant] += timed(runs[variant], device, max(1, steps // blocks)) / blocks
    return totals


def eval_images_per_second(device: torch.device, count: int) -> float:
    model = random_model(device).eval()
    transform = EvalTransform.for_model(model)
    pixels = np.random.default_rng(0).integers(0, 256, (count, 224, 224, 3), dtype=np.uint8)
    test = TestSplit("synthetic", torch.zeros(count, dtype=torch.long), ["c"] * 1000, ArrayPixels(pixels))
    classifier = torch.nn.functional.normalize(torch.randn(1000, 512, device=device), dim=-1)
    top1_accuracies(model, TestSplit("warm-up", test.labels[:256], test.classnames, ArrayPixels(pixels[:256])),
                    [classifier], transform)  # fmt: skip
    return count / timed(lambda: top1_accuracies(model, test, [classifier], transform), device, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per method at 1,000 prompts")
    parser.add_argument("--eval-images", type=int, default=8192)
    parser.add_argument("--device", default="cuda", help="cpu only to smoke-test this script (with --prompts 20 10)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps before each measurement")
    parser.add_argument("--prompts", type=int, nargs=2, default=(1000, 100), metavar=("MANY", "FEW"))
    args = parser.parse_args()
    device = torch.device(args.device)
    many, few = args.prompts
    projector = build_projector(random_model(device), AdapterConfig(method="complora", k=32))

    gpu = device.type == "cuda"
    report: dict = {"gpu": torch.cuda.get_device_name(device) if gpu else "none (smoke test)",
                    "torch": torch.__version__, "prompts": [many, few]}  # fmt: skip

    def emit() -> None:
        # A line after every stage: a run cut short by its time limit still leaves what it measured.
        if gpu:
            report["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        print(json.dumps(report), flush=True)

    at_1000 = step_seconds(device, many, args.steps, METHODS, projector, args.warmup)
    at_100 = step_seconds(device, few, max(4, args.steps // 4), METHODS, projector, args.warmup)
    report["step_seconds_1000_prompts"] = {m: round(v, 4) for m, v in at_1000.items()}
    report["step_seconds_100_prompts"] = {m: round(v, 4) for m, v in at_100.items()}
    report["ratio_complora_over_lora"] = round(at_1000["complora"] / at_1000["lora"], 3)
    emit()
    throughput = eval_images_per_second(device, args.eval_images)

    def step(method: str, classes: int) -> float:
        slope = (at_1000[method] - at_100[method]) / (many - few)
        return at_100[method] + slope * (classes - few)

    evaluated = sum(spec.counts["test"] for spec in REGISTRY.values())
    imagenet_16 = {m: 500 * 16 * step(m, 1000) + evaluated / throughput for m in METHODS}
    runs = [(spec, shots, method) for spec in REGISTRY.values() for shots in SHOTS for method in METHODS]
    grid = sum(SEEDS * (500 * k * step(method, spec.classes) + evaluated / throughput) for spec, k, method in runs)
    grid += evaluated / throughput  # each dataset's zero-shot run
    report |= {
        "eval_images_per_second": round(throughput, 1),
        "evaluated_images_per_run": evaluated,
        "imagenet_16shot_run_minutes_lower_bound": {m: round(v / 60, 1) for m, v in imagenet_16.items()},
        "paper_grid_gpu_hours_lower_bound": round(grid / 3600, 1),
        "paper_grid_runs": len(runs) * SEEDS,
    }
    emit()
    reference = step_seconds(device, many, max(4, args.steps // 10), ("cliplora",), projector, args.warmup)["cliplora"]
    report["cliplora_reference_step_seconds_1000_prompts"] = round(reference, 4)
    report["ratio_lora_over_cliplora"] = round(at_1000["lora"] / reference, 3)
    emit()
    start = time.perf_counter()
    try:
        steps = step_seconds(device, many, max(4, args.steps // 4), ("lora+compile",), projector, args.warmup)
    except Exception as error:  # Inductor or Triton failing on this machine is a finding, not a crash
        report["compile_error"] = repr(error)[:500]
    else:
        compiled = steps["lora+compile"]
        report["lora_compiled_step_seconds_1000_prompts"] = round(compiled, 4)
        report["ratio_compiled_over_eager"] = round(compiled / at_1000["lora"], 3)
        report["lora_compile_seconds_with_its_timed_steps"] = round(time.perf_counter() - start, 1)
    emit()
    rounds = max(3, args.steps // 20)
    learned = measure(device, many, rounds), measure(device, few, rounds)
    report["prompt_step_seconds"] = {
        family: [round(figures["step_seconds"][family], 4) for figures in learned]
        for family in learned[0]["step_seconds"]
    }
    report["prompt_learning_gpu_hours"] = grid_hours(*learned, (many, few))
    emit()


if __name__ == "__main__":
    main()
