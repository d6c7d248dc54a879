"""Zero-shot CLIP classification: text classifiers from prompts, and top-1 accuracy streamed over batches.

Memory stays that of one batch whatever the test split's size: each batch is classified by every classifier
as it passes and only the counts of correct predictions are kept. On CUDA the uint8 batch goes through
pinned memory with a non-blocking copy, is normalised on the device, and the towers run under bf16
autocast while the classifier (features @ class weights) stays float32; on the CPU everything is float32.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .data.images import EvalTransform, normalize
from .data.testset import TestSplit
from .text import encode_text

DEFAULT_TEMPLATE = "a photo of a {}."
DEFAULT_BATCH_SIZE = 256


class Top1(NamedTuple):
    """Top-1 accuracy (%) and the sha256 of the predicted labels (int32, in test-split order): equal digests
    mean the very same predictions, which is what a comparison of two evaluation paths needs.

    With class groups (the base-to-new protocol) ``groups`` holds each group's accuracy (%): its images, each
    classified among its own group's classes; ``accuracy`` and the digest stay those of all the classes."""

    accuracy: float
    predictions_sha256: str
    groups: dict[str, float] | None = None


# A classifier: (C, D) unit class weights, or a function from unit image features to (N, C) logits (a
# classifier conditioned on each image, CoCoOp's).
Classifier = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


def within_groups(logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Predictions among the classes of each image's own group (``groups``: a group index per class)."""
    other = groups.unsqueeze(0) != groups[labels].unsqueeze(1)
    return logits.masked_fill(other, float("-inf")).argmax(dim=-1)


def group_accuracies(predicted: torch.Tensor, labels: torch.Tensor, groups: Sequence[str]) -> dict[str, float]:
    """Accuracy (%) over each group's images, the groups named per class in label order."""
    names = list(dict.fromkeys(groups))
    index = torch.tensor([names.index(group) for group in groups], device=labels.device)[labels]
    correct = predicted == labels
    return {
        name: 100.0 * (correct[index == position].sum().cpu().float() / int((index == position).sum())).item()
        for position, name in enumerate(names)
    }


def predictions_sha256(predictions: Sequence[int] | torch.Tensor) -> str:
    return hashlib.sha256(torch.as_tensor(predictions).to(torch.int32).cpu().numpy().tobytes()).hexdigest()


def tower_autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@torch.no_grad()
def text_classifier(
    model: nn.Module, tokenizer: Callable, classnames: list[str], template: str | Sequence[str] = DEFAULT_TEMPLATE
) -> torch.Tensor:
    """(C, D) float32 L2-normalised text features of ``template`` filled with each class name; with several
    templates, the normalised mean of their features (CLIP's prompt ensemble). On the model's device."""
    device = next(model.parameters()).device
    templates = [template] if isinstance(template, str) else list(template)
    features = []
    for text in templates:
        tokens = tokenizer([text.format(name) for name in classnames]).to(device)
        with tower_autocast(device):
            encoded = encode_text(model, tokens)
        features.append(F.normalize(encoded.float(), dim=-1))
    return features[0] if len(features) == 1 else F.normalize(torch.stack(features).mean(dim=0), dim=-1)


@torch.no_grad()
def top1_accuracies(
    model: nn.Module,
    test: TestSplit,
    classifiers: Sequence[Classifier],
    transform: EvalTransform,
    batch_size: int = DEFAULT_BATCH_SIZE,
    class_groups: Sequence[str] | None = None,
) -> list[Top1]:
    """Top-1 of each classifier on the test split, in one pass over its images; with ``class_groups`` (a
    group name per class) each image is classified among its group's classes (:class:`Top1`)."""
    device = next(model.parameters()).device
    labels = test.labels.to(device)
    if class_groups is not None:
        names = list(dict.fromkeys(class_groups))
        group_of_class = torch.tensor([names.index(group) for group in class_groups], device=device)
    # Predictions stay on the device until the end: reading them back per batch would wait for the GPU.
    predictions: list[list[torch.Tensor]] = [[] for _ in classifiers]
    grouped: list[list[torch.Tensor]] = [[] for _ in classifiers]
    classifiers = [c.to(device) if isinstance(c, torch.Tensor) else c for c in classifiers]
    mean, std = transform.normalization(device)
    start = 0
    for array in test.pixels.batches(batch_size):
        batch = torch.from_numpy(array)
        if device.type == "cuda":
            batch = batch.pin_memory().to(device, non_blocking=True)
        with tower_autocast(device):
            encoded = model.encode_image(normalize(batch, mean, std))
        features = F.normalize(encoded.float(), dim=-1)
        for index, classifier in enumerate(classifiers):
            logits = features @ classifier.T if isinstance(classifier, torch.Tensor) else classifier(features)
            predictions[index].append(logits.argmax(dim=-1))
            if class_groups is not None:
                grouped[index].append(within_groups(logits, labels[start : start + len(array)], group_of_class))
        start += len(array)
    if start != len(labels):
        raise RuntimeError(f"{test.name}: {start} images were evaluated for {len(labels)} labels")
    # The share in float32, as the mean of a float32 mask gives it: the demo's published numbers stay those
    # it had when accuracy was computed that way.
    results = []
    for predicted, within in zip(predictions, grouped, strict=True):
        predicted = torch.cat(predicted)
        correct = (predicted == labels).sum().cpu()
        groups = group_accuracies(torch.cat(within), labels, class_groups) if class_groups is not None else None
        results.append(Top1(100.0 * (correct.float() / len(labels)).item(), predictions_sha256(predicted), groups))
    return results


def zero_shot_accuracies(
    model: nn.Module,
    tokenizer: Callable,
    test: TestSplit,
    templates: Sequence[str | Sequence[str]],
    transform: EvalTransform,
    batch_size: int = DEFAULT_BATCH_SIZE,
    class_groups: Sequence[str] | None = None,
) -> list[Top1]:
    """Zero-shot top-1 with each template (or prompt ensemble), in one pass over the images."""
    was_training = model.training
    model.eval()
    try:
        classifiers = [text_classifier(model, tokenizer, test.classnames, template) for template in templates]
        return top1_accuracies(model, test, classifiers, transform, batch_size, class_groups)
    finally:
        model.train(was_training)
