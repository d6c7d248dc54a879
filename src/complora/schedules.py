"""The official schedules of the Dassl-based baselines (CoOp's code base: CoOp, CoCoOp, KgCoOp, CLIP-Adapter,
TaskRes, CLAP), the README's "Methods": a constant warm-up epoch, then a cosine over the epochs
shifted by one, and CoOp's epochs per shot."""

from __future__ import annotations

import math

IMAGENET = "ImageNet"


def coop_epochs(dataset: str, shots: int) -> int:
    """CoOp's epochs per shot: 50 / 100 / 100 / 200 / 200 for 1 / 2 / 4 / 8 / 16 shots, ImageNet 50 always."""
    if dataset == IMAGENET or shots <= 1:
        return 50
    return 100 if shots <= 4 else 200


def dassl_learning_rate(epoch: int, base: float, epochs: int, warmup: float) -> float:
    """Dassl's cosine with a constant warm-up epoch: epoch 0 at ``warmup``, epoch e >= 1 at
    base * (1 + cos(pi (e - 1) / epochs)) / 2."""
    if epoch == 0:
        return warmup
    return base * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))
