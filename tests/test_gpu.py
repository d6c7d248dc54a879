"""What only a CUDA GPU can check (marker ``gpu``; skipped without one; ``benchmarks/gpu_check.sh`` runs them):
a bf16 training step, the CUDA generator in checkpoints and a resume to the same weights, the GPU claim of
``--device auto``, zero-shot evaluation from the evaluation cache on the GPU, and the prompt learners' bf16
steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from complora.checkpoint import Checkpointing
from complora.data.evalcache import build_eval_cache
from complora.data.images import normalize
from complora.data.testset import DatasetRef, open_test_split
from complora.devices import select_device
from complora.errors import ComploraError
from complora.evaluation import zero_shot_accuracies
from complora.finetune import FinetuneSettings, finetune
from complora.methods.prompt_learning import DEFAULTS, Objective, resolve
from complora.stopping import JobStopped, StopSignals
from helpers import TRANSFORM_32, adapted_tiny, adapter_weights, dominant_channel_images, image_set, sigterm_on_call

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)"),
]
NAMES = ["red", "green", "blue"]


@pytest.fixture
def coloured() -> tuple[torch.Tensor, torch.Tensor]:
    return dominant_channel_images(per_class=8)


def test_a_training_step_runs_the_towers_in_bf16_and_learns(make_tiny, coloured, tmp_path: Path):
    device = select_device("cuda")
    images = image_set(tmp_path / "images", *coloured)
    model = adapted_tiny(make_tiny, device=device)
    dtypes = []
    model.visual.register_forward_hook(lambda _module, _args, output: dtypes.append(output.dtype))
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    settings = FinetuneSettings(iterations=60, batch_size=8, learning_rate=5e-3)
    figures = finetune(model, tokenizer, images, NAMES, settings, seed=3, transform=TRANSFORM_32)
    assert set(dtypes) == {torch.bfloat16}, "the image tower ran under bf16 autocast"
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad), "fp32 master weights"
    losses = [loss for _, loss, _ in figures["curve"]]
    assert np.isfinite(losses).all() and figures["final_loss"] < 1.0, figures["curve"][-5:]


def test_a_resumed_gpu_run_restores_the_cuda_generator_and_ends_at_the_same_weights(
    make_tiny, coloured, tmp_path: Path
):
    device = select_device("cuda")
    images = image_set(tmp_path / "images", *coloured)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    settings = FinetuneSettings(iterations=12, batch_size=4, learning_rate=5e-3)
    whole = adapted_tiny(make_tiny, device=device)
    expected = finetune(whole, tokenizer, images, NAMES, settings, seed=5, transform=TRANSFORM_32)

    checkpointing = Checkpointing(tmp_path / "checkpoint.pt", every=4, identity="gpu-run")
    stopped = adapted_tiny(make_tiny, device=device)
    sigterm_on_call(stopped.visual, 7)
    with StopSignals() as stop, pytest.raises(JobStopped):
        finetune(stopped, tokenizer, images, NAMES, settings, seed=5, transform=TRANSFORM_32,
                 checkpointing=checkpointing, stop=stop)  # fmt: skip
    saved = torch.load(checkpointing.path, weights_only=True)
    assert saved["loop"]["step"] == 7 and saved["cuda_rng"] is not None

    resumed = adapted_tiny(make_tiny, device=device)
    figures = finetune(resumed, tokenizer, images, NAMES, settings, seed=5, transform=TRANSFORM_32,
                       checkpointing=checkpointing)  # fmt: skip
    assert figures["resumed_at_step"] == 7
    # Dropout masks after the resume come from the restored CUDA generator: other masks would move the
    # weights far more than the kernels' rounding differences.
    for a, b in zip(adapter_weights(resumed), adapter_weights(whole), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert [step for step, _, _ in figures["curve"]] == [step for step, _, _ in expected["curve"]]


def test_auto_claims_the_gpu_and_a_missing_index_is_refused():
    assert select_device("auto").type == "cuda"
    with pytest.raises(ComploraError, match="CUDA GPU"):
        select_device(f"cuda:{torch.cuda.device_count()}")


def test_evaluation_from_the_cache_on_the_gpu_predicts_what_the_cpu_does(make_tiny, coloured, tmp_path: Path):
    images, labels = coloured
    root = tmp_path / "test"
    root.mkdir()
    entries = []
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image.numpy()).save(root / f"{index}.png")
        entries.append((f"{index}.png", int(label), NAMES[int(label)]))
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": [], "val": [], "test": [list(entry) for entry in entries]}))
    build_eval_cache("colours", root, split_file, entries, TRANSFORM_32, tmp_path / "cache")
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    results = {}
    for device in ("cpu", "cuda"):
        model = make_tiny().to(device)
        test = open_test_split(DatasetRef("colours", root, split_file, tmp_path / "cache"), TRANSFORM_32)
        (results[device],) = zero_shot_accuracies(model, tokenizer, test, ["a photo of a {}."], TRANSFORM_32, 7)
    # bf16 towers on the GPU may flip a near tie; at most one image of 24.
    assert abs(results["cuda"].accuracy - results["cpu"].accuracy) <= 100 / 24 + 1e-6


@pytest.mark.parametrize("family", ["coop4", "kgcoop", "cocoop"])
def test_prompt_learning_steps_in_bf16_and_trains_only_its_context(make_tiny, coloured, family: str):
    device = select_device("cuda")
    model = make_tiny().to(device).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    settings = resolve(family, "colours", 4, DEFAULTS[family], ["a photo of a {}."])
    mean, std = TRANSFORM_32.normalization(device)
    made = Objective(family, model, tokenizer, NAMES, settings, 0, normalize=lambda crops: normalize(crops, mean, std))
    crops = coloured[0][:4].to(device)
    dtypes = []
    model.visual.register_forward_hook(lambda _module, _args, output: dtypes.append(output.dtype))
    loss = made.loss(crops, coloured[1][:4].to(device))
    loss.backward()
    assert set(dtypes) == {torch.bfloat16} and torch.isfinite(loss)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.dtype == torch.float32 and p.grad is not None for p in made.learner.parameters())
    classifier = made.classifier(NAMES)
    features = torch.nn.functional.normalize(torch.randn(5, model.visual.output_dim, device=device), dim=-1)
    logits = features @ classifier.T if isinstance(classifier, torch.Tensor) else classifier(features)
    assert logits.shape == (5, len(NAMES)) and torch.isfinite(logits).all()
