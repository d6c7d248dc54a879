"""LoRA / Comp-LoRA adapters on real open_clip models: exactness, the projection's guarantees, I/O."""

from __future__ import annotations

import copy
import math

import open_clip
import pytest
import torch
from open_clip.transformer import Attention
from torch import nn

from complora.adapters import (
    AdapterConfig,
    AdapterConfigError,
    AdapterMismatchError,
    AdapterTargetError,
    adapter_layers,
    adapter_state,
    export_merged,
    inject,
    load_adapter,
    merge,
    read_adapter_metadata,
    save_adapter,
    trainable_parameters,
    unmerge,
)
from complora.adapters.layer import LoraDropout
from complora.adapters.sites import matrix_weight
from complora.errors import ComploraError
from complora.subspace import ProjectorError, build_projector
from helpers import encode, randomize_adapters, train_steps


def _max_diff(first: tuple[torch.Tensor, ...], second: tuple[torch.Tensor, ...]) -> float:
    return max((a - b).abs().max().item() for a, b in zip(first, second, strict=True))


# ---- configuration --------------------------------------------------------------------------------


def test_config_defaults_are_cliplora():
    config = AdapterConfig()
    assert (config.rank, config.alpha, config.dropout, config.targets) == (2, 1.0, 0.25, ("q", "k", "v"))
    assert config.scale == pytest.approx(1 / math.sqrt(2))
    assert AdapterConfig(scaling="linear").scale == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("method", "dora", "method"),
        ("rank", 0, "rank"),
        ("scaling", "log", "scaling"),
        ("dropout", 1.0, "dropout"),
        ("targets", ["q", "x"], "targets"),
        ("towers", ["audio"], "towers"),
        ("layers", [], "layers"),
        ("k", -1, "k"),
        ("k", 1.5, "k"),
        ("k", "energy:0", "k"),
        ("k", "lots", "k"),
        ("side", "left", "side"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value, fragment):
    with pytest.raises(AdapterConfigError, match=fragment):
        AdapterConfig(**{field: value})


def test_config_parses_k_forms_and_round_trips():
    assert AdapterConfig(k="16").k == 16
    assert AdapterConfig(k="0.25").k == 0.25
    assert AdapterConfig(k="energy:0.5").k == "energy:0.5"
    config = AdapterConfig(method="complora", targets=["v", "q"], layers=[3, 1], k="energy:0.9", side="input")
    assert config.targets == ("q", "v") and config.layers == (1, 3)
    assert AdapterConfig.from_dict(config.to_dict()) == config
    with pytest.raises(AdapterConfigError, match="unknown adapter config fields"):
        AdapterConfig.from_dict({"rnak": 4})


# ---- injection on open_clip architectures -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "matrices", "parameters"),
    [
        ("ViT-B-16", 72, 184_320),  # docs/design.md: CLIP-LoRA's count on ViT-B/16
        ("ViT-B-32", 72, 184_320),
        ("ViT-L-14", 108, 24 * 3 * 2 * 2048 + 12 * 3 * 2 * 1536),
    ],
)
def test_default_config_counts_on_real_architectures(name, matrices, parameters):
    # The meta device builds the real architecture without allocating its weights.
    with torch.device("meta"):
        model = open_clip.create_model(name, device="meta")
    names = inject(model, AdapterConfig())
    assert len(names) == matrices
    assert trainable_parameters(model) == parameters
    assert all(".lora_" in name for name, p in model.named_parameters() if p.requires_grad)


def test_inject_selects_towers_targets_and_layers(make_tiny):
    model = make_tiny()
    names = inject(model, AdapterConfig(towers=["text"], targets=["v", "o"], layers=[0, -1]))
    assert names == [
        "transformer.resblocks.0.attn.v",
        "transformer.resblocks.0.attn.o",
        "transformer.resblocks.2.attn.v",
        "transformer.resblocks.2.attn.o",
    ]
    assert trainable_parameters(model) == 4 * 2 * (48 + 48)


@pytest.mark.parametrize("method", ["lora", "complora"])
def test_adapted_model_equals_original_at_init(make_tiny, tiny_inputs, method):
    model = make_tiny()
    before = encode(model, *tiny_inputs)
    inject(model, AdapterConfig(method=method, k=4, targets=["q", "k", "v", "o"]))
    with torch.no_grad():
        assert _max_diff(before, encode(model, *tiny_inputs)) <= 1e-5


@pytest.mark.slow
def test_vitb16_adapted_equals_original_at_init():
    model = open_clip.create_model("ViT-B-16").eval()
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    texts = open_clip.tokenize(["a photo of a dog.", "a photo of a cat."])
    with torch.no_grad():
        before = encode(model, images, texts)
        assert len(inject(model, AdapterConfig(method="complora", k=32))) == 72
        assert _max_diff(before, encode(model, images, texts)) <= 1e-5


def test_inject_refuses_unknown_attention_modules(make_tiny):
    model = make_tiny()
    block = model.visual.transformer.resblocks[1]
    block.attn = Attention(64, num_heads=4)
    with pytest.raises(AdapterTargetError, match=r"visual\.transformer\.resblocks\.1\.attn is a .*Attention"):
        inject(model, AdapterConfig())
    assert not any(True for _ in adapter_layers(model)), "nothing may be wrapped when inject fails"


def test_inject_refuses_layer_out_of_range(make_tiny):
    with pytest.raises(AdapterTargetError, match=r"block index \[5\] out of range for the vision tower"):
        inject(make_tiny(), AdapterConfig(layers=[0, 5]))


def test_inject_refuses_towers_without_transformer_blocks():
    with torch.device("meta"):
        model = open_clip.create_model("RN50", device="meta")
    with pytest.raises(AdapterTargetError, match="vision tower of this CLIP is a ModifiedResNet"):
        inject(model, AdapterConfig(towers=["vision"]))
    assert len(inject(model, AdapterConfig(towers=["text"]))) == 36


def test_inject_twice_is_refused(make_tiny):
    model = make_tiny()
    inject(model, AdapterConfig())
    with pytest.raises(ComploraError, match="already carries adapters"):
        inject(model, AdapterConfig())


# ---- exactness against a dense reference --------------------------------------------------------------


def _dense_update(weight: torch.Tensor, b: torch.Tensor, a: torch.Tensor, scale: float, k: int, side: str):
    """gamma * P_out B A P_in with the projectors built densely from a fresh SVD (the reference)."""
    u, _, vh = torch.linalg.svd(weight.double())
    eye_out, eye_in = torch.eye(weight.shape[0], dtype=torch.float64), torch.eye(weight.shape[1], dtype=torch.float64)
    p_out = eye_out - u[:, :k] @ u[:, :k].T if side in ("both", "output") else eye_out
    p_in = eye_in - vh[:k].T @ vh[:k] if side in ("both", "input") else eye_in
    return (scale * p_out @ b.double() @ a.double() @ p_in).float()


@pytest.mark.parametrize(
    ("method", "side"), [("lora", "both"), ("complora", "both"), ("complora", "input"), ("complora", "output")]
)
def test_adapted_attention_equals_dense_reference_in_both_towers(make_tiny, tiny_inputs, method, side):
    model = make_tiny()
    reference = copy.deepcopy(model)
    config = AdapterConfig(method=method, k=5, side=side, targets=["q", "k", "v", "o"], dropout=0.0)
    inject(model, config)
    randomize_adapters(model, seed=1)
    with torch.no_grad():
        for layer_name, layer in adapter_layers(model):
            reference_attn = reference.get_submodule(layer_name)
            for target in config.targets:
                weight = matrix_weight(reference_attn, target)
                k = 5 if method == "complora" else 0
                update = _dense_update(weight, layer.lora_B[target], layer.lora_A[target], config.scale, k, side)
                weight.add_(update)
        adapted, dense = encode(model, *tiny_inputs), encode(reference, *tiny_inputs)
    assert _max_diff(adapted, dense) <= 1e-5
    # The update is far from zero, so the comparison has teeth.
    assert _max_diff(adapted, encode(make_tiny(), *tiny_inputs)) > 1e-2


def test_text_tower_causal_mask_is_kept(make_tiny):
    model = make_tiny()
    inject(model, AdapterConfig(towers=["text"], dropout=0.0))
    randomize_adapters(model)
    tokens = open_clip.tokenize(["a red square on grass"], context_length=16)
    changed = tokens.clone()
    changed[0, 8] = 1234  # a token after the end-of-text position
    with torch.no_grad():
        # Features are read at the end-of-text token; a later token may not influence them.
        assert torch.equal(model.encode_text(tokens), model.encode_text(changed))


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("batch_first", [True, False])
def test_layer_matches_multihead_attention_with_masks_and_cross_attention(batch_first):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    reference = copy.deepcopy(attention)
    model = nn.Module()
    model.transformer = nn.Module()
    model.transformer.resblocks = nn.ModuleList([nn.Module()])
    model.transformer.resblocks[0].attn = attention
    inject(model, AdapterConfig(towers=["text"], targets=["q", "k", "v", "o"], dropout=0.0))
    randomize_adapters(model, seed=3)
    layer = model.transformer.resblocks[0].attn
    with torch.no_grad():
        for target in layer.targets:
            matrix_weight(reference, target).add_(layer.delta_weight(target))
    shape = (2, 5, 32) if batch_first else (5, 2, 32)
    x, memory = torch.randn(shape), torch.randn((*shape[:-1], 32))
    float_mask = torch.triu(torch.full((5, 5), float("-inf")), 1)
    bool_mask = torch.rand(5, 5) > 0.7
    bool_mask.fill_diagonal_(False)
    padding = torch.tensor([[False, False, False, True, True], [False] * 5])
    per_head = torch.randn(2 * 4, 5, 5)
    cases = [
        {"attn_mask": float_mask},
        {"attn_mask": bool_mask},
        {"key_padding_mask": padding},
        {"attn_mask": float_mask, "key_padding_mask": padding},
        {"attn_mask": per_head},
    ]
    with torch.no_grad():
        for kwargs in cases:
            ours = layer(x, x, x, need_weights=False, **kwargs)[0]
            theirs = reference(x, x, x, need_weights=False, **kwargs)[0]
            assert (ours - theirs).abs().max() <= 1e-5, kwargs
        ours = layer(x, memory, memory, need_weights=False)[0]
        theirs = reference(x, memory, memory, need_weights=False)[0]
        assert (ours - theirs).abs().max() <= 1e-5


# ---- Comp-LoRA's guarantees ------------------------------------------------------------------------


def test_complora_with_k0_is_exactly_lora(make_tiny, tiny_inputs):
    results = {}
    for method in ("lora", "complora"):
        torch.manual_seed(7)
        model = make_tiny()
        inject(model, AdapterConfig(method=method, k=0, targets=["q", "k", "v", "o"]))
        losses = train_steps(model, *tiny_inputs, steps=4, seed=11)
        gradients = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        with torch.no_grad():
            results[method] = (losses, gradients, encode(model, *tiny_inputs))
    (lora_losses, lora_grads, lora_out), (comp_losses, comp_grads, comp_out) = results["lora"], results["complora"]
    assert all(torch.equal(a, b) for a, b in zip(lora_losses, comp_losses, strict=True))
    assert lora_grads.keys() == comp_grads.keys()
    assert all(torch.equal(lora_grads[name], comp_grads[name]) for name in lora_grads)
    assert all(torch.equal(a, b) for a, b in zip(lora_out, comp_out, strict=True))


@pytest.mark.parametrize("side", ["both", "input", "output"])
def test_complora_update_leaves_principal_directions_untouched(make_tiny, tiny_inputs, side):
    k = 6
    ratios = {}
    for method in ("lora", "complora"):
        model = make_tiny()
        projector = build_projector(model, AdapterConfig(method="complora", k=k))
        inject(model, AdapterConfig(method=method, k=k, side=side), projector)
        train_steps(model, *tiny_inputs, steps=3)
        layers = list(adapter_layers(model))
        pretrained = {
            (name, target): matrix_weight(layer.base_layer, target).detach().clone()
            for name, layer in layers
            for target in layer.targets
        }
        merge(model)
        worst_left, worst_right = 0.0, 0.0
        for (name, target), weight in pretrained.items():
            layer = model.get_submodule(name)
            update = (matrix_weight(layer.base_layer, target).detach() - weight).double()
            basis = projector.bases[f"{name}.{target}"]
            norm = update.norm().item()
            assert norm > 0
            worst_left = max(worst_left, (basis.u[:, :k].double().T @ update).norm().item() / norm)
            worst_right = max(worst_right, (update @ basis.v[:, :k].double()).norm().item() / norm)
        ratios[method] = (worst_left, worst_right)
    left, right = ratios["complora"]
    if side in ("both", "output"):
        assert left <= 1e-5
    if side in ("both", "input"):
        assert right <= 1e-5
    assert min(ratios["lora"]) > 1e-2, "LoRA's update is not confined, so the check above has teeth"


def test_complora_k_as_fraction_and_energy(make_tiny):
    model = make_tiny()
    inject(model, AdapterConfig(method="complora", k=0.25))
    directions = adapter_state(model).directions
    assert directions["visual.transformer.resblocks.0.attn.q"] == 16
    assert directions["transformer.resblocks.0.attn.q"] == 12
    energetic = make_tiny()
    inject(energetic, AdapterConfig(method="complora", k="energy:0.5"))
    assert all(0 < k < 48 for k in adapter_state(energetic).directions.values())


# ---- merge, save, load, export ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "complora"])
def test_merge_unmerge_restores_weights_exactly(make_tiny, tiny_inputs, method):
    model = make_tiny()
    inject(model, AdapterConfig(method=method, k=4, targets=["q", "k", "v", "o"]))
    randomize_adapters(model)
    original = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        unmerged_out = encode(model, *tiny_inputs)
        merge(model)
        merged_out = encode(model, *tiny_inputs)
    assert _max_diff(unmerged_out, merged_out) <= 1e-5
    assert any(not torch.equal(original[n], t) for n, t in model.state_dict().items()), "merge changed nothing"
    model.train()
    with pytest.raises(RuntimeError, match="unmerge"):
        model.encode_image(tiny_inputs[0])
    model.eval()
    unmerge(model)
    assert all(torch.equal(original[name], tensor) for name, tensor in model.state_dict().items())


@pytest.mark.parametrize("method", ["lora", "complora"])
def test_save_load_reproduces_outputs(make_tiny, tiny_inputs, tmp_path, method):
    model = make_tiny()
    inject(model, AdapterConfig(method=method, k=4))
    randomize_adapters(model)
    save_adapter(model, tmp_path / "adapter")
    with torch.no_grad():
        expected = encode(model, *tiny_inputs)
    fresh = make_tiny()
    names = load_adapter(fresh, tmp_path / "adapter")
    assert names == list(adapter_state(model).matrices)
    with torch.no_grad():
        assert _max_diff(expected, encode(fresh, *tiny_inputs)) == 0.0
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {"adapter_model.safetensors", "adapter_config.json"}


def test_load_refuses_other_base_config_or_projector(make_tiny, tmp_path):
    model = make_tiny(seed=0)
    inject(model, AdapterConfig(method="complora", k=4))
    save_adapter(model, tmp_path / "adapter")

    with pytest.raises(AdapterMismatchError, match="trained on base complora-test-tiny/none"):
        load_adapter(make_tiny(seed=1), tmp_path / "adapter")

    other_config = make_tiny(seed=0)
    inject(other_config, AdapterConfig(method="complora", k=4, rank=4))
    with pytest.raises(AdapterMismatchError, match="rank: 2 != 4"):
        load_adapter(other_config, tmp_path / "adapter")

    # Without a projector file the adapter is tied to the base weights and directions, not to SVD bytes.
    computed_elsewhere = make_tiny(seed=0)
    inject(computed_elsewhere, AdapterConfig(method="complora", k=4), build_projector(model, AdapterConfig(k=8)))
    load_adapter(computed_elsewhere, tmp_path / "adapter")

    with_file = make_tiny(seed=0)
    inject(with_file, AdapterConfig(method="complora", k=4), build_projector(with_file, AdapterConfig(k=4)))
    save_adapter(with_file, tmp_path / "with_file")
    other_file = make_tiny(seed=0)
    inject(other_file, AdapterConfig(method="complora", k=4), build_projector(other_file, AdapterConfig(k=8)))
    with pytest.raises(AdapterMismatchError, match="trained with projector file"):
        load_adapter(other_file, tmp_path / "with_file")


def test_save_adapter_needs_to_know_the_base(tiny_config_path, tmp_path):
    model = open_clip.create_model(tiny_config_path.stem)
    inject(model, AdapterConfig())
    with pytest.raises(ComploraError, match="pass base_model= and pretrained="):
        save_adapter(model, tmp_path / "adapter")
    save_adapter(model, tmp_path / "adapter", base_model=tiny_config_path.stem, pretrained="none")
    metadata = read_adapter_metadata(tmp_path / "adapter")
    assert metadata["base"]["model"] == tiny_config_path.stem and metadata["versions"]["open_clip"] == "3.3.0"


def test_saving_again_replaces_the_checkpoint(make_tiny, tiny_inputs, tmp_path):
    model = make_tiny()
    inject(model, AdapterConfig(dropout=0.0))
    save_adapter(model, tmp_path / "adapter")
    randomize_adapters(model, seed=5)
    save_adapter(model, tmp_path / "adapter")
    fresh = make_tiny()
    load_adapter(fresh, tmp_path / "adapter")
    with torch.no_grad():
        assert _max_diff(encode(model, *tiny_inputs), encode(fresh, *tiny_inputs)) == 0.0


def test_failed_inject_leaves_the_model_untouched(make_tiny, tiny_inputs):
    model = make_tiny()
    vision_only = build_projector(model, AdapterConfig(method="complora", k=4, towers=["vision"]))
    with pytest.raises(ProjectorError):
        inject(model, AdapterConfig(method="complora", k=4), vision_only)
    assert not any(True for _ in adapter_layers(model))
    assert all(parameter.requires_grad for parameter in model.parameters())
    assert len(inject(model, AdapterConfig(method="complora", k=4))) == 15


def test_interrupted_adapter_save_is_refused(make_tiny, tmp_path):
    model = make_tiny()
    inject(model, AdapterConfig())
    save_adapter(model, tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_config.json").unlink()
    with pytest.raises(AdapterMismatchError, match="not a finished adapter checkpoint"):
        load_adapter(make_tiny(), tmp_path / "adapter")


def test_inject_refuses_stale_projector(make_tiny):
    projector = build_projector(make_tiny(seed=0), AdapterConfig(method="complora", k=4))
    with pytest.raises(ProjectorError, match=r"stale projector: it was built from weights .* this model's weights"):
        inject(make_tiny(seed=1), AdapterConfig(method="complora", k=4), projector)


def test_inject_refuses_projector_too_small_or_for_other_matrices(make_tiny):
    model = make_tiny()
    small = build_projector(model, AdapterConfig(method="complora", k=2))
    with pytest.raises(ProjectorError, match="rebuild it with --k-max 4"):
        inject(make_tiny(), AdapterConfig(method="complora", k=4), small)
    vision_only = build_projector(model, AdapterConfig(method="complora", k=4, towers=["vision"]))
    with pytest.raises(ProjectorError, match=r"no basis for transformer\.resblocks\.0\.attn\.q"):
        inject(make_tiny(), AdapterConfig(method="complora", k=4), vision_only)


def test_export_merged_loads_in_plain_open_clip(make_tiny, tiny_inputs, tiny_config_path, tmp_path):
    model = make_tiny()
    inject(model, AdapterConfig(method="complora", k=4, targets=["q", "k", "v", "o"]))
    randomize_adapters(model)
    path = export_merged(model, tmp_path / "merged.safetensors")
    plain = open_clip.create_model(tiny_config_path.stem, pretrained=str(path)).eval()
    with torch.no_grad():
        assert _max_diff(encode(model, *tiny_inputs), encode(plain, *tiny_inputs)) <= 1e-5
    assert not any(layer.merged for _, layer in adapter_layers(model)), "export leaves the model as it found it"


def test_adapters_train_under_autocast(make_tiny, tiny_inputs):
    model = make_tiny()
    inject(model, AdapterConfig(method="complora", k=4, targets=["q", "k", "v", "o"]))
    randomize_adapters(model)
    with torch.no_grad():
        full = encode(model, *tiny_inputs)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images, texts = encode(model, *tiny_inputs)
    assert images.dtype == torch.bfloat16
    (images.float().square().sum() + texts.float().square().sum()).backward()
    gradients = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in gradients)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = encode(model, *tiny_inputs)
    assert all(torch.allclose(a.float(), b, rtol=0.1, atol=0.1) for a, b in zip(low, full, strict=True))


def test_the_lora_dropout_keeps_each_input_with_probability_one_minus_p_and_rescales():
    dropout = LoraDropout(0.25)
    x = torch.ones(200, 500)
    torch.manual_seed(0)
    dropped = dropout(x)
    kept = dropped != 0
    values = sorted(dropped.unique().tolist())
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.75)
    assert kept.float().mean().item() == pytest.approx(0.75, abs=0.005)
    torch.manual_seed(0)
    assert torch.equal(dropout(x), dropped), "the mask comes from torch's generator"
    assert torch.equal(dropout.eval()(x), x)
    gradient = torch.ones(3, 4, requires_grad=True)
    LoraDropout(0.5)(gradient).sum().backward()
    assert set(gradient.grad.unique().tolist()) <= {0.0, 2.0}, "gradients flow through the kept inputs only"
