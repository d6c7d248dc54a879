"""Small helpers shared by the test modules."""

from __future__ import annotations

import torch
from torch import nn

from complora.adapters import adapter_layers


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
