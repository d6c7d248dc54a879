"""Few-shot fine-tuning: augmentation, determinism, the frozen-text-tower shortcut, checkpoints and stopping."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
from pathlib import Path

import open_clip
import pytest
import torch

from complora.adapters import adapter_layers
from complora.checkpoint import Checkpointing
from complora.data.splits import sample_few_shot
from complora.data.training import TrainingImages
from complora.finetune import FinetuneSettings, curve_interval, finetune
from complora.stopping import JobStopped, StopSignals
from helpers import TRANSFORM_32, adapted_tiny, adapter_weights, dominant_channel_images, image_set, sigterm_on_call


@pytest.fixture
def problem(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[TrainingImages, list[str]]:
    """Three classes of 32x32 images told apart by their dominant colour channel, four shots each
    (``TrainingImages`` options by indirect parametrisation)."""
    images, labels = dominant_channel_images(per_class=4)
    options = getattr(request, "param", {})
    return image_set(tmp_path / "images", images, labels, **options), ["red", "green", "blue"]


def test_finetune_fits_the_few_shot_set_and_is_deterministic(make_tiny, problem):
    images, names = problem
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    settings = FinetuneSettings(iterations=40, batch_size=8, learning_rate=5e-3)
    runs = []
    for _ in range(2):
        model = adapted_tiny(make_tiny)
        runs.append((finetune(model, tokenizer, images, names, settings, seed=5, transform=TRANSFORM_32), model))
    (first, model_a), (second, model_b) = runs
    assert first["final_loss"] == second["final_loss"]
    weights_a = [p for _, layer in adapter_layers(model_a) for p in layer.lora_B.values()]
    weights_b = [p for _, layer in adapter_layers(model_b) for p in layer.lora_B.values()]
    assert all(torch.equal(a, b) for a, b in zip(weights_a, weights_b, strict=True))
    assert any(w.abs().sum() > 0 for w in weights_a), "training moved the adapters"
    assert first["final_loss"] < 1.0, first  # ln(3) = 1.10 is chance


def test_the_training_curve_has_about_a_hundred_points_with_the_schedules_rates(make_tiny, problem):
    images, names = problem
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    settings = FinetuneSettings(iterations=201, batch_size=4, learning_rate=5e-3, min_learning_rate=1e-5)
    figures = finetune(adapted_tiny(make_tiny), tokenizer, images, names, settings, seed=5, transform=TRANSFORM_32)
    steps, losses, rates = zip(*figures["curve"], strict=True)
    assert steps == (*range(2, 201, 2), 201), "every curve_interval(201) = 2 steps, and the last one"
    assert rates[0] == pytest.approx(5e-3, rel=1e-3) and rates[-1] == pytest.approx(1e-5, rel=0.05)
    assert all(a >= b for a, b in itertools.pairwise(rates)), "cosine: the rate only falls"
    assert sum(losses[-10:]) < sum(losses[:10]), "the loss falls as the few-shot set is fitted"
    assert losses[-1] == figures["final_loss"], "the last point is the last step alone"
    assert curve_interval(8000) == 80 and curve_interval(40) == 1


def test_frozen_text_tower_is_encoded_once(make_tiny, problem):
    images, names = problem
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    calls = {"text": 0}
    for towers, expected in ((("vision",), 1), (("vision", "text"), 5)):
        model = adapted_tiny(make_tiny, towers)
        calls["text"] = 0
        model.transformer.register_forward_hook(lambda *_: calls.__setitem__("text", calls["text"] + 1))
        finetune(model, tokenizer, images, names, FinetuneSettings(iterations=5, batch_size=4), transform=TRANSFORM_32)
        assert calls["text"] == expected


@pytest.mark.parametrize("problem", [{}, {"memory_limit_mib": 0}], ids=["in-memory", "decoded-per-batch"],
                         indirect=True)  # fmt: skip
def test_a_run_stopped_mid_step_resumes_from_its_checkpoint_to_the_same_weights(
    make_tiny, problem, tmp_path: Path, request: pytest.FixtureRequest
):
    images, names = problem
    assert images.in_memory == (request.node.callspec.id == "in-memory")
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    settings = FinetuneSettings(iterations=12, batch_size=4, learning_rate=5e-3)
    whole = adapted_tiny(make_tiny)
    expected = finetune(whole, tokenizer, images, names, settings, seed=5, transform=TRANSFORM_32)

    checkpointing = Checkpointing(tmp_path / "checkpoint.pt", every=4, identity="run-a")
    stopped = adapted_tiny(make_tiny)
    sigterm_on_call(stopped.visual, 7)
    with StopSignals() as stop, pytest.raises(JobStopped, match=r"signal 15 \(SIGTERM\) at training step 7 of 12"):
        finetune(
            stopped,
            tokenizer,
            images,
            names,
            settings,
            seed=5,
            transform=TRANSFORM_32,
            checkpointing=checkpointing,
            stop=stop,
        )
    assert torch.load(checkpointing.path, weights_only=True)["loop"]["step"] == 7, "saved after the step it hit"

    resumed = adapted_tiny(make_tiny)
    figures = finetune(
        resumed, tokenizer, images, names, settings, seed=5, transform=TRANSFORM_32, checkpointing=checkpointing
    )
    assert figures["resumed_at_step"] == 7 and figures["final_loss"] == expected["final_loss"]
    assert all(torch.equal(a, b) for a, b in zip(adapter_weights(resumed), adapter_weights(whole), strict=True))
    assert figures["curve"] == expected["curve"], "the curve's points before the stop come from the checkpoint"


def test_a_signal_outside_a_step_stops_at_once():
    with StopSignals(), pytest.raises(JobStopped) as stopped:
        os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the previous handler is back"


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_a_damaged_or_foreign_checkpoint_is_not_resumed(content, make_tiny, problem, tmp_path: Path, caplog):
    images, names = problem
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    settings = FinetuneSettings(iterations=6, batch_size=4, learning_rate=5e-3)
    path = tmp_path / "checkpoint.pt"
    if content is None:  # a checkpoint of another run (another identity) in the same folder
        finetune(adapted_tiny(make_tiny), tokenizer, images, names, settings, seed=1, transform=TRANSFORM_32,
                 checkpointing=Checkpointing(path, every=2, identity="other-run"))  # fmt: skip
    else:
        path.write_bytes(content)
    expected = finetune(adapted_tiny(make_tiny), tokenizer, images, names, settings, seed=5, transform=TRANSFORM_32)
    with caplog.at_level(logging.WARNING, logger="complora.checkpoint"):
        figures = finetune(adapted_tiny(make_tiny), tokenizer, images, names, settings, seed=5, transform=TRANSFORM_32,
                           checkpointing=Checkpointing(path, every=2, identity="this-run"))  # fmt: skip
    assert figures["resumed_at_step"] is None and figures["final_loss"] == expected["final_loss"]
    assert "training starts from step 0" in caplog.text
    assert torch.load(path, weights_only=True)["identity"] == "this-run", "this run's checkpoint replaced it"


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


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile's CPU backend needs a C compiler")
def test_a_compiled_step_trains_as_the_eager_one(make_tiny, problem):
    images, names = problem
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    runs = []
    settings = FinetuneSettings(iterations=6, batch_size=4, learning_rate=5e-3)
    for compiled in (False, True):
        model = adapted_tiny(make_tiny)
        figures = finetune(model, tokenizer, images, names, settings, seed=5, transform=TRANSFORM_32,
                           compile_step=compiled)  # fmt: skip
        runs.append((figures, model))
    (eager, eager_model), (compiled, compiled_model) = runs
    assert compiled["final_loss"] == pytest.approx(eager["final_loss"], rel=1e-4)
    for a, b in zip(adapter_weights(compiled_model), adapter_weights(eager_model), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)  # fused kernels round differently
