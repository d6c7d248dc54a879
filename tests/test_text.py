"""The text tower on the exact short context, and the causal mask handed to SDPA as ``is_causal``."""

from __future__ import annotations

import functools
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from complora import text
from complora.adapters import AdapterConfig, inject
from complora.adapters.layer import LoraMultiheadAttention
from complora.models import load_clip
from helpers import randomize_adapters

DEMO_CONFIG = Path(__file__).parents[1] / "src/complora/model_configs/demo-vit-tiny.json"
PROMPTS = [
    "a photo of a cat.",
    "a photo of a sulphur-crested cockatoo perched on a weathered fence post at dawn.",
    "x",
]


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "ViT-B-16":
        return open_clip.create_model("ViT-B-16", pretrained=None).eval()
    return load_clip(str(DEMO_CONFIG), "none", seed=0).eval()


def _tokens(model: nn.Module, prompts: list[str]) -> torch.Tensor:
    return open_clip.get_tokenizer("ViT-B-16", context_length=model.context_length)(prompts)


@pytest.fixture(scope="module", params=["ViT-B-16", "demo-vit-tiny"])
def architecture(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize("adapted", [False, True], ids=["plain", "adapted"])
def test_short_context_features_equal_the_full_context(architecture, adapted):
    model = _model(architecture)
    if adapted:
        inject(model, AdapterConfig(dropout=0.0))
        randomize_adapters(model, seed=1)
    # Prompts of different lengths, and one the tokenizer truncates to the whole context (EOT last).
    tokens = _tokens(model, [*PROMPTS, "word " * (2 * model.context_length)])
    assert int(tokens[-1].argmax()) == model.context_length - 1
    with torch.no_grad():
        expected = model.encode_text(tokens)
        mixed = text.encode_text(model, tokens[:3])
        with_full = text.encode_text(model, tokens)
        normalized = text.encode_text(model, tokens[:3], normalize=True)
    short = text.shorten(model, tokens[:3])
    assert short.shape[1] == int(tokens[:3].argmax(dim=-1).max()) + 1 < model.context_length
    assert torch.equal(short, tokens[:3, : short.shape[1]])
    assert text.shorten(model, tokens).shape[1] == model.context_length
    assert (mixed - expected[:3]).abs().max().item() <= 1e-5
    assert (with_full - expected).abs().max().item() <= 1e-5
    assert (normalized - F.normalize(expected[:3], dim=-1)).abs().max().item() <= 1e-5


def test_short_context_gradients_equal_the_full_context():
    torch.manual_seed(0)
    model = load_clip(str(DEMO_CONFIG), "none", seed=0)
    inject(model, AdapterConfig(towers=("text",), dropout=0.0))
    randomize_adapters(model, seed=2)
    tokens = _tokens(model, PROMPTS)
    gradients = []
    for encode in (model.encode_text, lambda t: text.encode_text(model, t)):
        model.zero_grad()
        encode(tokens).square().sum().backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert (gradients[0] - gradients[1]).abs().max().item() <= 1e-5 * gradients[0].abs().max().item()


def test_a_tower_that_cannot_be_shortened_runs_on_the_full_context():
    torch.manual_seed(0)
    model = load_clip(str(DEMO_CONFIG), "none", seed=0).eval()
    tokens = _tokens(model, PROMPTS)
    model.text_pool_type = "last"
    assert not text.shortenable(model)
    assert text.shorten(model, tokens).shape == tokens.shape
    model.text_pool_type = "argmax"
    with torch.no_grad():
        model.attn_mask.fill_(0.0)  # no longer causal: every position reads the padding after it
    assert not text.shortenable(model)
    with torch.no_grad():
        assert torch.equal(text.encode_text(model, tokens), model.encode_text(tokens))


def _attention(batch_first: bool) -> LoraMultiheadAttention:
    torch.manual_seed(0)
    base = nn.MultiheadAttention(32, 4, batch_first=batch_first)
    layer = LoraMultiheadAttention(base, AdapterConfig(dropout=0.0))
    with torch.no_grad():
        for parameter in layer.lora_B.values():
            parameter.normal_(std=0.1)
    return layer.eval()


@pytest.mark.parametrize("batch_first", [True, False])
def test_is_causal_equals_the_mask_path(batch_first):
    layer = _attention(batch_first)
    x = torch.randn(3, 11, 32) if batch_first else torch.randn(11, 3, 32)
    mask = torch.full((11, 11), float("-inf")).triu(1)
    with torch.no_grad():
        masked, _ = layer(x, x, x, need_weights=False, attn_mask=mask)
        causal, _ = layer(x, x, x, need_weights=False, attn_mask=mask, is_causal=True)
        plain, _ = layer.base_layer(x, x, x, need_weights=False, attn_mask=mask)
        plain_causal, _ = layer.base_layer(x, x, x, need_weights=False, attn_mask=mask, is_causal=True)
    assert (masked - causal).abs().max().item() <= 1e-6
    assert (plain - plain_causal).abs().max().item() <= 1e-6


def test_the_causal_hint_reaches_attention_only_for_the_towers_mask(monkeypatch):
    torch.manual_seed(0)
    model = load_clip(str(DEMO_CONFIG), "none", seed=0).eval()
    inject(model, AdapterConfig(towers=("text",), dropout=0.0))
    seen: list[bool] = []
    original = LoraMultiheadAttention.forward

    @functools.wraps(original)  # keeps the signature that says the layer takes is_causal
    def spy(self, *args, **kwargs):
        seen.append(bool(kwargs.get("is_causal")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LoraMultiheadAttention, "forward", spy)
    tokens = _tokens(model, PROMPTS)
    with torch.no_grad():
        text.encode_text(model, tokens)  # a leading slice of the causal buffer
        assert seen and all(seen)
        seen.clear()
        model.encode_text(tokens)  # open_clip's own call passes the buffer itself
        assert seen and all(seen)
        seen.clear()
        other = model.attn_mask.clone()  # equal values, but not the tower's buffer: the mask path
        model.transformer(model.token_embedding(tokens) + model.positional_embedding, attn_mask=other)
        assert seen and not any(seen)
