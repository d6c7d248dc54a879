"""TaskRes with the regular base (README, "Methods"): the text classifier T (the un-normalised
mean of the prompts' raw text features) plus a learned residual, t' = T + alpha X with X starting at zero,
classified by cosine. Adam with L2 weight decay, Dassl's schedule, one cached Dassl view per image and epoch,
the last epoch kept. At step 0 it is zero-shot CLIP with its prompts.

Official dataset choices kept as the defaults of null settings: learning rate 2e-3 (ImageNet 2e-4), alpha
0.5 (Flowers102 1.0), 100 epochs up to 4 shots and 200 beyond, ImageNet's 7 prompts plus one more: the
study's prompt_template ("a photo of a {}." in both shipped configs, the official eighth prompt).
The official configs are RN50's; here the backbone is the study's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..schedules import IMAGENET
from .feature import FeatureTask, Fitted, cosine_logits, text_weights, train_on_views

# The official values (the config schema holds the same defaults; a test keeps the two equal).
DEFAULTS = {
    "taskres": {
        "alpha": None,
        "views": 20,
        "epochs": None,
        "learning_rate": None,
        "weight_decay": 0.0005,
        "batch_size": 256,
        "warmup_learning_rate": 1e-05,
        "logit_scale": 100,
        "prompts": None,
    },
}


class TaskResidual(nn.Module):
    def __init__(self, base: torch.Tensor, alpha: float, scale: float) -> None:
        super().__init__()
        self.register_buffer("base", base)
        self.residual = nn.Parameter(torch.zeros_like(base))
        self.alpha, self.scale = alpha, scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(features, self.base + self.alpha * self.residual, self.scale)


def new_classes(family: str, fitted: Fitted, task: FeatureTask) -> nn.Module:
    """A residual is learned for the base classes only: the new classes keep their text base (no residual)."""
    base = text_weights(task.text, task.prompts(fitted.settings["prompts"], "coop"), "raw")
    return TaskResidual(base, fitted.classifier.alpha, fitted.classifier.scale)


def official_prompts(task: FeatureTask) -> str:
    """CoOp's prompt, and on an ensemble (ImageNet's 7) the study's single prompt added (7 + 1)."""
    return "coop+template" if len(task.coop_templates) > 1 else "coop"


def fit(family: str, task: FeatureTask, settings: dict[str, Any]) -> Fitted:
    defaults = {
        "alpha": 1.0 if task.dataset == "Flowers102" else 0.5,
        "learning_rate": 2e-4 if task.dataset == IMAGENET else 2e-3,
        "epochs": 100 if task.shots <= 4 else 200,
        "prompts": official_prompts(task),
    }
    settings = {**settings, **{key: value for key, value in defaults.items() if settings[key] is None}}
    base = text_weights(task.text, task.prompts(settings["prompts"], "coop"), "raw")
    model = TaskResidual(base, settings["alpha"], settings["logit_scale"])
    optimizer = torch.optim.Adam(
        model.parameters(), lr=settings["learning_rate"], weight_decay=settings["weight_decay"]
    )
    return Fitted(model, settings, train_on_views(model, optimizer, task, settings))
