"""Small helpers shared by the test modules."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from complora.adapters import AdapterConfig, adapter_layers, inject
from complora.data.images import EvalTransform
from complora.data.training import TrainingImages

# open_clip's defaults for a 32-pixel model (resize shorter side, bicubic, centre crop, OpenAI mean/std).
TRANSFORM_32 = EvalTransform.from_preprocess_cfg({"size": (32, 32)})


def image_set(folder: Path, images: torch.Tensor, labels: torch.Tensor, **options) -> TrainingImages:
    """uint8 (N, H, W, 3) images written as PNG files under ``folder``, read back as a training set."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(np.asarray(image)).save(folder / f"{index}.png")
        entries.append((f"{index}.png", int(label), f"class{int(label)}"))
    return TrainingImages(folder, entries, (images.shape[1], images.shape[2]), **options)


def table_rows(markdown: str) -> list[list[str]]:
    """A Markdown table's rows as stripped cells (the header first, the separator left out)."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for i, line in enumerate(lines) if i != 1]


def encode(model: nn.Module, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return model.encode_image(images), model.encode_text(texts)


def randomize_adapters(model: nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Give every A and B random non-zero values, so that the update is far from zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for parameter in [*layer.lora_A.values(), *layer.lora_B.values()]:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def train_steps(model: nn.Module, images: torch.Tensor, texts: torch.Tensor, steps: int = 3, seed: int = 0):
    """A few AdamW steps of a CLIP contrastive loss (dropout active); returns the loss of each step."""
    torch.manual_seed(seed)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-2, weight_decay=1e-2)
    model.train()
    losses = []
    for _ in range(steps):
        image_features = nn.functional.normalize(model.encode_image(images), dim=-1)
        text_features = nn.functional.normalize(model.encode_text(texts), dim=-1)
        logits = 100 * image_features @ text_features.T
        loss = nn.functional.cross_entropy(logits, torch.arange(len(images)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    model.eval()
    return losses


def dominant_channel_images(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes (red, green, blue) of uint8 32x32 images told apart by their dominant colour channel."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 60, (3 * per_class, 32, 32, 3), generator=generator, dtype=torch.uint8)
    labels = torch.arange(3).repeat(per_class)
    for index, label in enumerate(labels):
        images[index, ..., label] += 180
    return images, labels


def adapted_tiny(make_tiny, towers=("vision", "text"), device: str | torch.device = "cpu") -> nn.Module:
    """A tiny CLIP on ``device`` with Comp-LoRA (k = 4) on ``towers``, its A drawn from seed 0."""
    model = make_tiny().to(device)
    torch.manual_seed(0)  # inject draws A from torch's global generator, as PEFT does
    inject(model, AdapterConfig(method="complora", k=4, towers=list(towers)))
    return model


def adapter_weights(model: nn.Module) -> list[torch.Tensor]:
    """Copies of every adapter A and B, on the CPU."""
    layers = [layer for _, layer in adapter_layers(model)]
    return [p.detach().cpu().clone() for layer in layers for p in [*layer.lora_A.values(), *layer.lora_B.values()]]


def sigterm_on_call(module: nn.Module, call: int) -> None:
    """Send this process SIGTERM from inside the ``call``-th forward pass of ``module``: mid-step."""
    calls = {"n": 0}

    def hook(*_):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signal.SIGTERM)

    module.register_forward_hook(hook)
