"""Zero-shot CLIP classification: text classifiers from prompts, and top-1 accuracy."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

DEFAULT_TEMPLATE = "a photo of a {}."


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) with CLIP's normalisation."""
    x = images.permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def image_features(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised image features of uint8 images, computed in batches."""
    device = next(model.parameters()).device
    chunks = [
        F.normalize(model.encode_image(normalize_images(images[i : i + batch_size]).to(device)), dim=-1)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks).float().cpu()


@torch.no_grad()
def text_classifier(
    model: nn.Module, tokenizer: Callable, classnames: list[str], template: str | Sequence[str] = DEFAULT_TEMPLATE
) -> torch.Tensor:
    """(C, D) L2-normalised text features of ``template`` filled with each class name; with several templates,
    the normalised mean of their features (CLIP's prompt ensemble)."""
    device = next(model.parameters()).device
    templates = [template] if isinstance(template, str) else list(template)
    features = []
    for text in templates:
        tokens = tokenizer([text.format(name) for name in classnames]).to(device)
        features.append(F.normalize(model.encode_text(tokens), dim=-1).float().cpu())
    return features[0] if len(features) == 1 else F.normalize(torch.stack(features).mean(dim=0), dim=-1)


def top1(features: torch.Tensor, classifier: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    predictions = (features @ classifier.T).argmax(dim=-1)
    return 100.0 * (predictions == labels).float().mean().item()


def zero_shot_accuracy(
    model: nn.Module,
    tokenizer: Callable,
    images: torch.Tensor,
    labels: torch.Tensor,
    classnames: list[str],
    template: str | Sequence[str] = DEFAULT_TEMPLATE,
) -> float:
    was_training = model.training
    model.eval()
    try:
        return top1(image_features(model, images), text_classifier(model, tokenizer, classnames, template), labels)
    finally:
        model.train(was_training)
