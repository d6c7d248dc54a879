"""Tip-Adapter and Tip-Adapter-F (README, "Methods"): a key-value cache of the k-shot images beside
the zero-shot classifier, logits = scale * f W_t + alpha * exp(-beta (1 - f K)) L, with the keys K the
normalised mean of ``augment_views`` augmented features per image (RandomResizedCrop 0.5-1 + flip) and L their
one-hot labels. Tip-Adapter-F trains the keys (AdamW, cosine per iteration, alpha and beta held at their
initial values), one cached augmented view per image and epoch (views other than the keys' own). Both then
search alpha and beta on a grid. On datasets without an official config (the demo's, custom ones) the defaults
are init_alpha 1, search_scale [10, 10] and 20 epochs, the middle of the official values.

Differences from the official code, which selects on the test set: the alpha/beta grid is searched on the
k-shot validation split (min(k, 4) per class, as CLIP-LoRA did; the official code uses the full val split, and
the test set on ImageNet), Tip-Adapter-F keeps its last epoch (the official code keeps the best epoch on test
and reports the larger of two test accuracies), and its epochs cycle through ``train_views`` cached views
instead of drawing a fresh augmentation each epoch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .feature import FeatureTask, Fitted, accuracy, text_weights, view_of_epoch

# The official per-dataset configs: init_alpha, search_scale [largest beta, largest alpha], Tip-F epochs.
OFFICIAL = {
    "Caltech101": (3.0, [12, 5], 20),
    "DTD": (2.0, [13, 13], 20),
    "EuroSAT": (2.0, [12, 10], 100),
    "FGVCAircraft": (5.0, [30, 30], 20),
    "Food101": (1.17, [10, 10], 20),
    "ImageNet": (1.17, [7, 3], 20),
    "Flowers102": (10.0, [50, 50], 20),
    "OxfordPets": (1.17, [7, 3], 20),
    "StanfordCars": (3.0, [20, 10], 20),
    "SUN397": (1.17, [12, 10], 20),
    "UCF101": (3.0, [7, 3], 20),
}
# Datasets without an official config (the demo's, custom ones): a middle of the official values.
OTHER = (1.0, [10, 10], 20)


_TIP = {
    "augment_views": 10,
    "init_alpha": None,
    "init_beta": 1,
    "search": True,
    "search_scale": None,
    "search_step": [200, 20],
    "logit_scale": 100,
    "prompts": None,
}
# The official values (the config schema holds the same defaults; a test keeps the two equal).
DEFAULTS = {
    "tip_adapter": _TIP,
    "tip_adapter_f": {
        **_TIP,
        "train_views": 20,
        "epochs": None,
        "learning_rate": 0.001,
        "eps": 0.0001,
        "weight_decay": 0.01,
        "batch_size": 256,
    },
}


class TipAdapter(nn.Module):
    def __init__(
        self,
        text: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        alpha: float,
        beta: float,
        scale: float,
        train_keys: bool,
    ) -> None:
        super().__init__()
        self.register_buffer("text", text)
        self.register_buffer("values", values)
        if train_keys:
            self.keys = nn.Parameter(keys.clone())
        else:
            self.register_buffer("keys", keys.clone())
        self.alpha, self.beta, self.scale = alpha, beta, scale

    def parts(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-shot logits and affinities to the keys of raw image features."""
        f = F.normalize(features, dim=-1)
        return self.scale * f @ self.text.T, f @ self.keys.T

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        zero_shot, affinity = self.parts(features)
        return zero_shot + self.alpha * torch.exp(-self.beta * (1 - affinity)) @ self.values


@torch.no_grad()
def search(model: TipAdapter, features: torch.Tensor, labels: torch.Tensor, scale: list[float], steps: list[int]):
    """The official grid: beta_i = 0.1 + i (S_beta - 0.1) / n_beta, alpha_j likewise; the first strict
    improvement wins (ties to the smaller beta, then alpha). Returns (alpha, beta, accuracy)."""
    zero_shot, affinity = model.parts(features)
    best = (model.alpha, model.beta, -1.0)
    for i in range(steps[0]):
        beta = 0.1 + i * (scale[0] - 0.1) / steps[0]
        cache = torch.exp(-beta * (1 - affinity)) @ model.values
        for j in range(steps[1]):
            alpha = 0.1 + j * (scale[1] - 0.1) / steps[1]
            score = accuracy(zero_shot + alpha * cache, labels)
            if score > best[2]:
                best = (alpha, beta, score)
    return best


def new_classes(family: str, fitted: Fitted, task: FeatureTask) -> nn.Module:
    """The cache holds no image of a new class, so its term adds nothing to their logits: the new classes
    are classified by the zero-shot part alone, from the same prompts."""
    model = fitted.classifier
    text = text_weights(task.text, task.prompts(fitted.settings["prompts"], "coop"), "normalized")
    values = torch.zeros(len(model.values), len(task.classnames))
    return TipAdapter(text, model.keys.detach(), values, model.alpha, model.beta, model.scale, train_keys=False)


def resolve(task: FeatureTask, settings: dict[str, Any]) -> dict[str, Any]:
    init_alpha, search_scale, epochs = OFFICIAL.get(task.dataset, OTHER)
    resolved = dict(settings)
    resolved["init_alpha"] = init_alpha if settings["init_alpha"] is None else settings["init_alpha"]
    resolved["search_scale"] = search_scale if settings["search_scale"] is None else settings["search_scale"]
    resolved["prompts"] = settings["prompts"] or "coop"
    if "epochs" in settings:
        resolved["epochs"] = epochs if settings["epochs"] is None else settings["epochs"]
    return resolved


def fit(family: str, task: FeatureTask, settings: dict[str, Any]) -> Fitted:
    settings = resolve(task, settings)
    support = task.support
    text = text_weights(task.text, task.prompts(settings["prompts"], "coop"), "normalized")
    keys = F.normalize(support.augmented("tip", settings["augment_views"]).mean(dim=0), dim=-1)
    values = F.one_hot(support.train_labels, len(task.classnames)).float()
    trained = family == "tip_adapter_f"
    model = TipAdapter(
        text, keys, values, settings["init_alpha"], settings["init_beta"], settings["logit_scale"], train_keys=trained
    )
    figures: dict[str, Any] = {}
    if trained:
        figures |= _train_keys(model, task, settings)
    if settings["search"]:
        alpha, beta, score = search(
            model, support.val, support.val_labels, settings["search_scale"], settings["search_step"]
        )
        model.alpha, model.beta = alpha, beta
        figures["val_accuracy"] = round(100 * score, 2)
    figures |= {"alpha": model.alpha, "beta": model.beta}
    return Fitted(model, settings, figures)


def _train_keys(model: TipAdapter, task: FeatureTask, settings: dict[str, Any]) -> dict[str, Any]:
    # Views the cache keys were not made of: the official code crops afresh for training.
    views = task.support.augmented("tip", settings["augment_views"] + settings["train_views"])[
        settings["augment_views"] :
    ]
    labels = task.support.train_labels
    generator = torch.Generator().manual_seed(task.seed)
    per_epoch = math.ceil(len(labels) / settings["batch_size"])
    iterations = settings["epochs"] * per_epoch
    optimizer = torch.optim.AdamW(
        [model.keys], lr=settings["learning_rate"], eps=settings["eps"], weight_decay=settings["weight_decay"]
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)
    loss = torch.tensor(0.0)
    for epoch in range(settings["epochs"]):
        features = view_of_epoch(views, epoch)
        for batch in torch.randperm(len(labels), generator=generator).split(settings["batch_size"]):
            loss = F.cross_entropy(model(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return {"iterations": iterations, "final_loss": round(loss.item(), 4)}
