"""The base-to-new protocol (CoCoOp's): each dataset's classes split by label into base classes, the first
half (rounded up: labels 0 .. ceil(C/2) - 1), and new classes, the rest. k-shot images are drawn from the base
classes only and methods train on them; the test split is read as two tasks, the base classes' images
classified among the base classes and the new classes' images among the new classes, and a method is scored
by their accuracies and harmonic mean.

The split depends on the labels alone (the split file's order), so it is the same for every seed and method.
"""

from __future__ import annotations

import math

ALL, BASE_TO_NEW = "all", "base_to_new"
PROTOCOLS = (ALL, BASE_TO_NEW)
BASE, NEW = "base", "new"
GROUPS = (BASE, NEW)


def base_classes(classes: int) -> int:
    """How many of ``classes`` (labels 0 .. classes - 1) are base classes: the first ceil(classes / 2)."""
    if classes < 2:
        raise ValueError(f"base-to-new needs at least 2 classes, got {classes}")
    return math.ceil(classes / 2)


def class_groups(classes: int) -> list[str]:
    """The group of each label, in label order."""
    count = base_classes(classes)
    return [BASE] * count + [NEW] * (classes - count)


def harmonic_mean(base: float, new: float) -> float:
    """CoCoOp's H: 2 base new / (base + new), 0 when both are 0."""
    return 2 * base * new / (base + new) if base + new else 0.0


def groups_for(protocol: str, classes: int) -> list[str] | None:
    """The class groups an evaluation under ``protocol`` classifies within (None: all classes at once)."""
    return class_groups(classes) if protocol == BASE_TO_NEW else None


def scores(protocol: str, accuracy: float | None, groups: dict[str, float] | None) -> dict[str, float | None]:
    """A run's accuracy fields (%, rounded to 2 places) from its all-class ``accuracy`` and its ``groups``'.
    Under base-to-new ``accuracy`` becomes the base classes' (the task trained on, the reference of the gain)
    with the new classes' and the harmonic mean beside it, and the all-class accuracy is kept as
    ``all_classes_accuracy`` (the reference of retention on other datasets; None where not measured). A
    ``groups`` without ``new``: the method has no new-class predictions."""
    if protocol != BASE_TO_NEW:
        return {"accuracy": round(accuracy, 2)}
    base, new = round(groups[BASE], 2), groups.get(NEW)
    new = round(new, 2) if new is not None else None
    return {
        "accuracy": base,
        "base_accuracy": base,
        "new_accuracy": new,
        "harmonic_mean": round(harmonic_mean(base, new), 2) if new is not None else None,
        "all_classes_accuracy": round(accuracy, 2) if accuracy is not None else None,
    }
