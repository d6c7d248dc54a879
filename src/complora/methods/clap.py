"""ZS-LP and CLAP (docs/baselines.md): a cosine classifier whose prototypes start at the zero-shot
text prototypes T (the un-normalised mean of the prompts' raw features) and train on ``views`` cached Dassl
views of every k-shot image. CLAP adds a class-wise pull back to them, (1/C) sum_k lambda_k ||p_k - t_k||^2,
lambda_k the mean zero-shot probability of class k over its support views (fixed, as the released code's
``l2`` constraint does). SGD, Dassl's schedule, the last epoch kept, no validation (by design).

As in the official loop, an epoch is as many batches as the k-shot loader has (N // batch, at least 1), each
drawn from a fresh permutation of all cached views.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .feature import FeatureTask, Fitted, cosine_logits, dassl_training, schedule, text_weights
from .taskres import official_prompts

_CLAP = {
    "views": 20,
    "epochs": 300,
    "learning_rate": 0.1,
    "momentum": 0.9,
    "weight_decay": 0,
    "batch_size": 256,
    "warmup_learning_rate": 1e-05,
    "logit_scale": 100,
    "prompts": None,
}
# The official values (the config schema holds the same defaults; a test keeps the two equal).
DEFAULTS = {"zs_lp": _CLAP, "clap": _CLAP}


class Prototypes(nn.Module):
    def __init__(self, text: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.register_buffer("text", text)
        self.prototypes = nn.Parameter(text.clone())
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(features, self.prototypes, self.scale)


def new_classes(family: str, fitted: Fitted, task: FeatureTask) -> nn.Module:
    """Prototypes are trained for the base classes only: the new classes keep their zero-shot prototypes."""
    text = text_weights(task.text, task.prompts(fitted.settings["prompts"], "coop"), "raw")
    return Prototypes(text, fitted.classifier.scale)


def class_confidence(model: Prototypes, features: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """lambda_k: the zero-shot softmax probability of class k, averaged over the views labelled k."""
    with torch.no_grad():
        probabilities = model(features).softmax(dim=-1).gather(1, labels[:, None]).squeeze(1)
    return torch.zeros(classes).index_add_(0, labels, probabilities) / torch.bincount(labels, minlength=classes)


def fit(family: str, task: FeatureTask, settings: dict[str, Any]) -> Fitted:
    settings = {**settings, "prompts": settings["prompts"] or official_prompts(task)}
    classes = len(task.classnames)
    text = text_weights(task.text, task.prompts(settings["prompts"], "coop"), "raw")
    model = Prototypes(text, settings["logit_scale"])
    views = task.support.augmented("dassl", settings["views"])
    features = views.reshape(-1, views.shape[-1])
    labels = task.support.train_labels.repeat(len(views))
    batches_per_epoch = max(1, len(task.support.train_labels) // settings["batch_size"])  # the k-shot loader's
    generator = torch.Generator().manual_seed(task.seed)

    def batches(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(labels), generator=generator)[: batches_per_epoch * settings["batch_size"]]
        return [(features[index], labels[index]) for index in order.split(settings["batch_size"])]

    penalty = None
    figures: dict[str, Any] = {}
    if family == "clap":
        weights = class_confidence(model, features, labels, classes)
        figures["lambda_mean"] = round(float(weights.mean()), 4)

        def penalty() -> torch.Tensor:
            return (weights * (model.prototypes - model.text).square().sum(dim=-1)).mean()

    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=settings["learning_rate"],
        momentum=settings["momentum"],
        weight_decay=settings["weight_decay"],
    )
    figures |= dassl_training(model, optimizer, batches, **schedule(settings), penalty=penalty)
    return Fitted(model, settings, figures)
