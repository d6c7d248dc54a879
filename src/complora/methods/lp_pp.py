"""LP++ (README, "Methods"): logits = W f + b + alpha * (f W_t), with visual prototypes W (started
at the class sums of the normalised k-shot features), a bias, and class-wise blending weights alpha of the
zero-shot text logits (started at alpha_init_scale times the mean cosine of each image with its own class
prompt). Full-batch steps whose sizes come from Lipschitz bounds instead of a learning-rate search:
lr_W = 4N / lambda_max(F^T F) for (W, b), SGD with momentum, and lr_alpha = N / (4 max_k sum_i (f_i t_k)^2)
for alpha every ``alpha_every`` iterations. The iteration kept is the one with the best k-shot validation
accuracy (ties to the later one).

Differences from the official code: its validation split holds k images per class (here the k-shot split's
min(k, 4)); its alpha gradient is never zeroed, so each alpha step uses the sum of all gradients so far
(``alpha_gradient: cumulative`` reproduces that; the default uses the current gradient).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .feature import FeatureTask, Fitted, accuracy, seeded_init, text_weights

# The official values (the config schema holds the same defaults; a test keeps the two equal).
DEFAULTS = {
    "lp_pp": {
        "views": 1,
        "epochs": 300,
        "alpha_every": 10,
        "alpha_init_scale": 250,
        "momentum": 0.9,
        "alpha_gradient": "current",
        "prompts": None,
    },
}


class LinearProbePlusPlus(nn.Module):
    def __init__(self, prototypes: torch.Tensor, text: torch.Tensor, alpha: torch.Tensor) -> None:
        super().__init__()
        self.visual = nn.Linear(prototypes.shape[1], prototypes.shape[0])  # the bias: nn.Linear's default init
        with torch.no_grad():
            self.visual.weight.copy_(prototypes)
        self.register_buffer("text", text)
        self.alpha = nn.Parameter(alpha.clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = F.normalize(features, dim=-1)
        return self.visual(f) + self.alpha * (f @ self.text.T)


def step_sizes(features: torch.Tensor, text: torch.Tensor) -> tuple[float, float]:
    """(lr_W, lr_alpha) of LP++ for normalised features (N, D) and text weights (C, D)."""
    count = len(features)
    largest = torch.linalg.eigvalsh(features.double().T @ features.double()).max()
    text_logits = features.double() @ text.double().T
    return float(4 * count / largest), float(count / (4 * text_logits.square().sum(dim=0).max()))


def fit(family: str, task: FeatureTask, settings: dict[str, Any]) -> Fitted:
    settings = {**settings, "prompts": settings["prompts"] or "coop"}
    classes = len(task.classnames)
    views = task.support.augmented("tip", settings["views"])
    features = F.normalize(views.reshape(-1, views.shape[-1]), dim=-1)
    labels = task.support.train_labels.repeat(len(views))
    text = text_weights(task.text, task.prompts(settings["prompts"], "coop"), "normalized")
    prototypes = torch.zeros(classes, features.shape[1]).index_add_(0, labels, features)  # class sums
    own = (features * text[labels]).sum(dim=-1)
    own_mean = torch.zeros(classes).index_add_(0, labels, own) / torch.bincount(labels, minlength=classes)
    alpha = torch.full((classes,), settings["alpha_init_scale"] * float(own_mean.mean()))
    model = seeded_init(task.seed, lambda: LinearProbePlusPlus(prototypes, text, alpha))
    lr_visual, lr_alpha = step_sizes(features, text)
    optimizer = torch.optim.SGD(model.visual.parameters(), lr=lr_visual, momentum=settings["momentum"])
    best, best_score, best_iteration = None, -1.0, 0
    for iteration in range(settings["epochs"]):
        model.train()
        if settings["alpha_gradient"] == "current":
            model.alpha.grad = None
        loss = F.cross_entropy(model(features), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if iteration % settings["alpha_every"] == 0:
            with torch.no_grad():
                model.alpha -= lr_alpha * model.alpha.grad
        model.eval()
        with torch.no_grad():
            score = accuracy(model(task.support.val), task.support.val_labels)
        if score >= best_score:
            best, best_score, best_iteration = copy.deepcopy(model.state_dict()), score, iteration
    model.load_state_dict(best)
    model.alpha.grad = None
    figures = {
        "iterations": settings["epochs"],
        "best_iteration": best_iteration,
        "val_accuracy": round(100 * best_score, 2),
        "lr_visual": lr_visual,
        "lr_alpha": lr_alpha,
    }
    return Fitted(model, settings, figures)
