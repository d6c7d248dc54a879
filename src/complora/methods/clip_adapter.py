"""CLIP-Adapter (docs/baselines.md): a bias-free bottleneck MLP d -> d/reduction -> d with a ReLU
after each layer, blended into the raw image feature, g' = ratio A(g) + (1 - ratio) g, and classified by
cosine against the frozen text classifier. Only the MLP trains (Dassl SGD schedule, CoOp's epochs per shot),
one cached Dassl view (RandomResizedCrop 0.08-1 + flip) per image and epoch, the last epoch kept.

The official repository is one trainer file hard-coded to RN50 (d = 1024) with no optimiser config; here
d is the backbone's and the optimisation is the CoOp command the README points to (SGD lr 0.002, batch 32).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..schedules import coop_epochs
from .feature import FeatureTask, Fitted, seeded_init, text_weights, train_on_views

# The official values (the config schema holds the same defaults; a test keeps the two equal).
DEFAULTS = {
    "clip_adapter": {
        "ratio": 0.2,
        "reduction": 4,
        "views": 20,
        "epochs": None,
        "learning_rate": 0.002,
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "batch_size": 32,
        "warmup_learning_rate": 1e-05,
        "logit_scale": 100,
        "prompts": None,
    },
}


class ClipAdapter(nn.Module):
    def __init__(self, text: torch.Tensor, reduction: int, ratio: float, scale: float) -> None:
        super().__init__()
        dim = text.shape[1]
        self.register_buffer("text", text)
        self.down = nn.Linear(dim, dim // reduction, bias=False)
        self.up = nn.Linear(dim // reduction, dim, bias=False)
        self.ratio, self.scale = ratio, scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        adapted = F.relu(self.up(F.relu(self.down(features))))
        blended = self.ratio * adapted + (1 - self.ratio) * features
        return self.scale * F.normalize(blended, dim=-1) @ self.text.T


def new_classes(family: str, fitted: Fitted, task: FeatureTask) -> nn.Module:
    """The trained image-feature adapter, classified against the new classes' prompts."""
    model = fitted.classifier
    text = text_weights(task.text, task.prompts(fitted.settings["prompts"], "coop"), "normalized")
    adapter = ClipAdapter(text, fitted.settings["reduction"], model.ratio, model.scale)
    adapter.load_state_dict({**model.state_dict(), "text": text})
    return adapter.eval()


def fit(family: str, task: FeatureTask, settings: dict[str, Any]) -> Fitted:
    settings = {
        **settings,
        "epochs": settings["epochs"] or coop_epochs(task.dataset, task.shots),
        # CoOp's own prompt per dataset, which for ImageNet is the single "a photo of a {}.", not the ensemble.
        "prompts": settings["prompts"] or ("template" if len(task.coop_templates) > 1 else "coop"),
    }
    text = text_weights(task.text, task.prompts(settings["prompts"], "coop"), "normalized")
    model = seeded_init(
        task.seed, lambda: ClipAdapter(text, settings["reduction"], settings["ratio"], settings["logit_scale"])
    )
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=settings["learning_rate"],
        momentum=settings["momentum"],
        weight_decay=settings["weight_decay"],
    )
    return Fitted(model, settings, train_on_views(model, optimizer, task, settings))
