"""Linear probe, as CoOp's ``lpclip`` (README, "Methods"): multinomial logistic regression with an
L2 penalty (sklearn, L-BFGS) on the raw, un-augmented image features of the k-shot images. C, the inverse
regularisation strength, is chosen on the k-shot validation split: the best of a coarse grid (ties to the
larger C), then log-bisection rounds around it; the last round's winner is the probe.

Difference from the official code: its ImageNet "val" is drawn from the test set (CoOp's ImageNet has
val = test); here the validation images are always the k-shot split's own, drawn from the dataset's val split.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from .feature import FeatureTask, Fitted

# The official values (the config schema holds the same defaults; a test keeps the two equal).
DEFAULTS = {
    "linear_probe": {"c_grid": [1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6], "search_steps": 8, "max_iter": 1000},
}


class LinearProbe(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


def fit(family: str, task: FeatureTask, settings: dict[str, Any]) -> Fitted:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x, y = task.support.train.double().numpy(), task.support.train_labels.numpy()
    x_val, y_val = task.support.val.double().numpy(), task.support.val_labels.numpy()
    fits: dict[float, Any] = {}
    unconverged = 0

    def probe(c: float) -> Any:
        nonlocal unconverged
        if c not in fits:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                fits[c] = LogisticRegression(C=c, solver="lbfgs", max_iter=settings["max_iter"]).fit(x, y)
            unconverged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
        return fits[c]

    def score(c: float) -> float:
        return float(np.mean(probe(c).predict(x_val) == y_val))

    grid = sorted((float(c) for c in settings["c_grid"]), reverse=True)
    scores = [score(c) for c in grid]
    best = grid[scores.index(max(scores))]  # the first maximum: ties go to the larger C
    low, high, winner = best / 10, best * 10, best
    for _ in range(settings["search_steps"]):
        middle = 10 ** ((math.log10(low) + math.log10(high)) / 2)
        if score(low) < score(high):
            winner, low = high, middle
        else:
            winner, high = low, middle
    model = probe(winner)
    weight, bias = torch.from_numpy(model.coef_).float(), torch.from_numpy(model.intercept_).float()
    if weight.shape[0] == 1:  # sklearn keeps one row for two classes: logit of class 1 against class 0
        weight, bias = torch.cat([torch.zeros_like(weight), weight]), torch.cat([torch.zeros_like(bias), bias])
    figures = {
        "C": winner,
        "val_accuracy": round(100 * score(winner), 2),
        "fits": len(fits),
        "unconverged": unconverged,
    }
    return Fitted(LinearProbe(weight, bias), dict(settings), figures)
