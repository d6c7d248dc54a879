"""Few-shot fine-tuning: augmentation, determinism, and the frozen-text-tower shortcut."""

from __future__ import annotations

import open_clip
import torch

from complora.adapters import AdapterConfig, adapter_layers, inject
from complora.finetune import FinetuneSettings, augment, finetune
from complora.splitfile import sample_few_shot


def _few_shot_problem() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Three classes of 32x32 images told apart by their dominant colour channel, four shots each."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 60, (12, 32, 32, 3), generator=generator, dtype=torch.uint8)
    labels = torch.arange(3).repeat(4)
    for index, label in enumerate(labels):
        images[index, ..., label] += 180
    return images, labels, ["red", "green", "blue"]


def test_augment_is_reproducible_and_keeps_the_size():
    images = torch.randint(0, 255, (4, 32, 32, 3), dtype=torch.uint8)
    first = augment(images, (0.08, 1.0), torch.Generator().manual_seed(3))
    second = augment(images, (0.08, 1.0), torch.Generator().manual_seed(3))
    assert first.shape == (4, 3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, second)
    assert not torch.equal(first, augment(images, (0.08, 1.0), torch.Generator().manual_seed(4)))


def _adapted(make_tiny, towers=("vision", "text")):
    model = make_tiny()
    torch.manual_seed(0)  # inject draws A from torch's global generator, as PEFT does
    inject(model, AdapterConfig(method="complora", k=4, towers=list(towers)))
    return model


def test_finetune_fits_the_few_shot_set_and_is_deterministic(make_tiny):
    images, labels, names = _few_shot_problem()
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    settings = FinetuneSettings(iterations=40, batch_size=8, learning_rate=5e-3)
    runs = []
    for _ in range(2):
        model = _adapted(make_tiny)
        runs.append((finetune(model, tokenizer, images, labels, names, settings, seed=5), model))
    (first, model_a), (second, model_b) = runs
    assert first["final_loss"] == second["final_loss"]
    weights_a = [p for _, layer in adapter_layers(model_a) for p in layer.lora_B.values()]
    weights_b = [p for _, layer in adapter_layers(model_b) for p in layer.lora_B.values()]
    assert all(torch.equal(a, b) for a, b in zip(weights_a, weights_b, strict=True))
    assert any(w.abs().sum() > 0 for w in weights_a), "training moved the adapters"
    assert first["final_loss"] < 1.0, first  # ln(3) = 1.10 is chance


def test_frozen_text_tower_is_encoded_once(make_tiny):
    images, labels, names = _few_shot_problem()
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    calls = {"text": 0}
    for towers, expected in ((("vision",), 1), (("vision", "text"), 5)):
        model = _adapted(make_tiny, towers)
        calls["text"] = 0
        model.transformer.register_forward_hook(lambda *_: calls.__setitem__("text", calls["text"] + 1))
        finetune(model, tokenizer, images, labels, names, FinetuneSettings(iterations=5, batch_size=4))
        assert calls["text"] == expected


def test_few_shot_sampling_follows_coop():
    entries = [(f"{label}/{index}.png", label, f"class{label}") for label in range(3) for index in range(5)]
    entries += [("2/extra.png", 2, "class2")]
    picked = sample_few_shot(entries, shots=4, seed=1)
    assert [label for _, label, _ in picked] == [0] * 4 + [1] * 4 + [2] * 4
    assert len({path for path, _, _ in picked}) == 12, "no repeats when a class has enough items"
    assert picked == sample_few_shot(entries, shots=4, seed=1) != sample_few_shot(entries, shots=4, seed=2)
    scarce = sample_few_shot(entries, shots=8, seed=1)
    # A class with fewer items than shots is drawn with replacement, so it must repeat some.
    assert len(scarce) == 24 and len({path for path, label, _ in scarce if label == 0}) <= 5
