"""Training-step cost of the prompt learners (CoOp (4), CoOp (16), KgCoOp, CoCoOp) on ViT-B-16, and what it
means for the paper grid.

A step is complora's own (complora.methods.prompt_learning through the shared loop's pieces): the frozen
image tower forward on the family's official batch (32 images at 224^2; KgCoOp 128; CoCoOp 1), the frozen
text tower forward and backward on ``--prompts`` class prompts of ImageNet's name lengths (CoCoOp: the
prompts of its one image, conditioned by the Meta-Net), cross-entropy at scale 100 (KgCoOp: plus its
knowledge-guided term), and SGD. The families alternate round by round in one process. CoCoOp's test cost is
measured too: one text pass per class for every test image.

Extrapolation: the official epochs per shot and batch sizes give every job's optimiser steps exactly
(``steps_per_job``); a step is measured at two prompt counts (``--prompts MANY FEW``) and taken as linear in
the prompts between and beyond them (the image tower the constant, the text tower the slope), and so is
CoCoOp's test per image. The hours sum them over config/paper.yaml's 11 datasets x shots x 3 seeds, and over
the base-to-new option (16 shots of the base classes). On the CPU the figures are CPU hours;
benchmarks/gpu_check.sh runs the same on a GPU. Prints one JSON report.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections.abc import Callable

import open_clip
import torch

from adapter_step import prompts, random_model, synchronize, timed
from complora.data.base_to_new import base_classes
from complora.data.images import EvalTransform, normalize
from complora.data.registry import load_registry
from complora.finetune import SGD_DASSL, FinetuneSettings, dassl_epoch_steps
from complora.methods.prompt_learning import DEFAULTS, Objective, resolve

FAMILIES = tuple(DEFAULTS)
SHOTS, SEEDS = (1, 2, 4, 8, 16), 3


def class_names(count: int) -> list[str]:
    """ImageNet-length class names: the words of adapter_step's prompts."""
    return [text.removeprefix("a photo of a ").removesuffix(".") for text in prompts(count)]


def steps_per_job(family: str, dataset: str, classes: int, shots: int) -> int:
    settings = resolve(family, dataset, shots, DEFAULTS[family], ["a photo of a {}."])
    return settings["epochs"] * dassl_epoch_steps(classes * shots, settings["batch_size"])


def make_step(family: str, model: torch.nn.Module, names: list[str], device: torch.device):
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    mean, std = EvalTransform.for_model(model).normalization(device)
    settings = resolve(family, "ImageNet", 16, DEFAULTS[family], ["a photo of a {}."])
    objective = Objective(
        family, model, tokenizer, names, settings, 0, normalize=lambda crops: normalize(crops, mean, std)
    )
    batch = DEFAULTS[family]["batch_size"]
    generator = torch.Generator().manual_seed(0)
    crops = torch.randint(0, 256, (batch, 224, 224, 3), dtype=torch.uint8, generator=generator).to(device)
    labels = torch.randint(0, len(names), (batch,), generator=generator).to(device)
    training = FinetuneSettings(
        iterations=1,
        batch_size=batch,
        learning_rate=settings["learning_rate"],
        weight_decay=settings["weight_decay"],
        optimizer=SGD_DASSL,
        momentum=settings["momentum"],
    )
    optimizer, _ = training.optimizer_and_schedule(list(objective.learner.parameters()), device)

    def step() -> None:
        loss = objective.loss(crops, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return objective, step


def measure(device: torch.device, count: int, rounds: int, families: tuple[str, ...] = FAMILIES) -> dict:
    """Median seconds per step of each family at ``count`` prompts, and CoCoOp's test seconds per image."""
    model = random_model(device).eval()
    names = class_names(count)
    made = {family: make_step(family, model, names, device) for family in families}
    for _, step in made.values():
        timed(step, device, 1)  # the first step allocates
    times: dict[str, list[float]] = {family: [] for family in families}
    for index in range(rounds):
        for family in families if index % 2 == 0 else families[::-1]:
            times[family].append(timed(made[family][1], device, 1))
    report = {"step_seconds": {f: statistics.median(v) for f, v in times.items()}}
    if "cocoop" in made:
        classify = made["cocoop"][0].classifier(names)
        features = torch.nn.functional.normalize(torch.randn(8, model.visual.output_dim, device=device), dim=-1)
        with torch.no_grad():
            report["cocoop_test_seconds_per_image"] = timed(lambda: classify(features), device, 2) / len(features)
    synchronize(device)
    return report


def linear(at_many: float, at_few: float, many: int, few: int) -> Callable[[int], float]:
    """The line through the two measurements, as a function of the prompt count."""
    slope = (at_many - at_few) / (many - few)
    return lambda classes: at_few + slope * (classes - few)


def grid_hours(many: dict, few: dict, counts: tuple[int, int]) -> dict:
    """Hours of each family on the paper grid and on its base-to-new option."""
    registry = load_registry(None)
    hours: dict[str, dict[str, float]] = {}
    for family in many["step_seconds"]:
        step = linear(many["step_seconds"][family], few["step_seconds"][family], *counts)
        total = base = 0.0
        for name, spec in registry.items():
            total += SEEDS * sum(steps_per_job(family, name, spec.classes, k) * step(spec.classes) for k in SHOTS)
            half = base_classes(spec.classes)
            base += SEEDS * steps_per_job(family, name, half, 16) * step(half)
            if family == "cocoop":  # every test image against every class of its task
                test = linear(many["cocoop_test_seconds_per_image"], few["cocoop_test_seconds_per_image"], *counts)
                images = spec.counts["test"]
                total += SEEDS * len(SHOTS) * images * test(spec.classes)
                new = spec.classes - half
                base += SEEDS * images * (half * test(half) + new * test(new)) / spec.classes
        hours[family] = {"paper_grid": round(total / 3600, 1), "base_to_new": round(base / 3600, 1)}
    return hours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, nargs=2, default=(100, 20), metavar=("MANY", "FEW"),
                        help="class prompts per step, the two counts of the line (1000 100 on a GPU)")  # fmt: skip
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    families, (many, few) = tuple(args.families), args.prompts
    at_many, at_few = measure(device, many, args.rounds, families), measure(device, few, args.rounds, families)
    imagenet = {f: steps_per_job(f, "ImageNet", 1000, 16) for f in families}
    lines = {f: linear(at_many["step_seconds"][f], at_few["step_seconds"][f], many, few) for f in families}
    unit = "gpu_hours" if device.type == "cuda" else "cpu_hours"
    report = {
        "model": "ViT-B-16 (random init)",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "threads": args.threads,
        "prompts": [many, few],
        "batch_sizes": {family: DEFAULTS[family]["batch_size"] for family in families},
        f"step_seconds_{many}_prompts": {f: round(v, 4) for f, v in at_many["step_seconds"].items()},
        f"step_seconds_{few}_prompts": {f: round(v, 4) for f, v in at_few["step_seconds"].items()},
        "cocoop_test_seconds_per_image": [
            round(figures["cocoop_test_seconds_per_image"], 5) for figures in (at_many, at_few)
        ] if "cocoop" in families else None,
        "steps_per_16shot_imagenet_job": imagenet,
        f"imagenet_16shot_job_{unit}": {
            f: round(imagenet[f] * lines[f](1000) / 3600, 2) for f in families
        },
        f"estimated_{unit}": grid_hours(at_many, at_few, (many, few)),
    }  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
