"""The interface of feature-level methods: a family fits a classifier on a k-shot split's frozen-tower
features (and may use its validation features), and the classifier maps raw test image features to logits.

``fit`` never sees the test split: the orchestration (complora.fitting) reads the test features only after
the classifier is fitted. Under the base-to-new protocol a family whose classifier can name classes it was
not fitted on has ``new_classes(family, fitted, task)``: the classifier of ``task``'s (new) classes.

Shared pieces of the official protocols live here: zero-shot text weights by either ensembling rule,
Dassl's epoch schedule (a constant warm-up epoch, then a cosine shifted by one epoch, complora.schedules)
and its batching.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..features.store import SupportFeatures, TextFeatures
from ..schedules import dassl_learning_rate


@dataclass(frozen=True)
class FeatureTask:
    """Everything a feature-level method may learn from: one k-shot split of a dataset, and its prompts."""

    dataset: str
    shots: int
    seed: int
    classnames: list[str]
    support: SupportFeatures
    text: TextFeatures
    template: str  # the study's prompt_template
    coop_templates: list[str]  # CoOp's prompt (or ImageNet's ensemble) for the dataset

    def prompts(self, choice: str | None, official: str) -> list[str]:
        """The templates of a prompt choice (``coop``, ``template``, ``coop+template``; None: ``official``)."""
        choice = choice or official
        sets = {
            "coop": self.coop_templates,
            "template": [self.template],
            "coop+template": list(dict.fromkeys([*self.coop_templates, self.template])),
        }
        return sets[choice]


@dataclass
class Fitted:
    """A fitted classifier, the settings it was fitted with (nulls resolved) and what the fit chose."""

    classifier: nn.Module
    settings: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.classifier.parameters())


def text_weights(text: TextFeatures, templates: list[str], rule: str) -> torch.Tensor:
    """(C, D) text classifier from templates: ``normalized`` averages the unit features and renormalises
    (Tip-Adapter, LP++, CLIP-LoRA); ``raw`` averages the raw features (TaskRes, CLAP), left un-normalised."""
    features = text.of(templates)
    if rule == "normalized":
        return F.normalize(F.normalize(features, dim=-1).mean(dim=0), dim=-1)
    if rule == "raw":
        return features.mean(dim=0)
    raise ValueError(f"unknown ensembling rule {rule!r}")


def cosine_logits(features: torch.Tensor, weights: torch.Tensor, scale: float) -> torch.Tensor:
    return scale * F.normalize(features, dim=-1) @ F.normalize(weights, dim=-1).T


def set_learning_rate(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value


def epoch_batches(count: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch in batches, dropping the last partial batch only when there is a full one (Dassl)."""
    order = torch.randperm(count, generator=generator)
    if count < batch_size:
        return [order]
    return list(order[: count - count % batch_size].split(batch_size))


def view_of_epoch(views: torch.Tensor, epoch: int) -> torch.Tensor:
    """The cached augmented view that stands for the fresh augmentation of epoch ``epoch``."""
    return views[epoch % len(views)]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=-1) == labels).float().mean())


Batches = Callable[[int], list[tuple[torch.Tensor, torch.Tensor]]]


def cycled_view_batches(
    views: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Batches:
    """An epoch's batches as Dassl's loader gives them, from the cached view standing for that epoch's
    fresh augmentation."""

    def batches(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        features = view_of_epoch(views, epoch)
        return [(features[index], labels[index]) for index in epoch_batches(len(labels), batch_size, generator)]

    return batches


def dassl_training(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    *,
    epochs: int,
    learning_rate: float,
    warmup_learning_rate: float,
    penalty: Callable[[], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Cross-entropy (plus ``penalty``) over ``epochs`` epochs at Dassl's per-epoch learning rate; the last
    epoch's model is kept (Dassl's ``last_step``)."""
    iterations, loss = 0, torch.tensor(0.0)
    model.train()
    for epoch in range(epochs):
        set_learning_rate(optimizer, dassl_learning_rate(epoch, learning_rate, epochs, warmup_learning_rate))
        for features, labels in batches(epoch):
            loss = F.cross_entropy(model(features), labels)
            if penalty is not None:
                loss = loss + penalty()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            iterations += 1
    model.eval()
    return {"iterations": iterations, "final_loss": round(loss.item(), 4)}


def schedule(settings: dict[str, Any]) -> dict[str, Any]:
    """The Dassl schedule keys of a family's settings, as :func:`dassl_training` takes them."""
    return {key: settings[key] for key in ("epochs", "learning_rate", "warmup_learning_rate")}


def train_on_views(model: nn.Module, optimizer: torch.optim.Optimizer, task: FeatureTask, settings: dict[str, Any]):
    """Dassl training on the k-shot split's cached Dassl views, one view standing for each epoch's crops."""
    generator = torch.Generator().manual_seed(task.seed)
    views = task.support.augmented("dassl", settings["views"])
    batches = cycled_view_batches(views, task.support.train_labels, settings["batch_size"], generator)
    return dassl_training(model, optimizer, batches, **schedule(settings))


def seeded_init(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """A module whose random initialisation comes from ``seed``, leaving the global generator alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
