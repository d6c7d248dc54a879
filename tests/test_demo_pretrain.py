"""Pretraining the demo's tiny CLIP: a loadable checkpoint, honest metadata, reproducible weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import open_clip
import pytest
import torch

from complora.demo.datasets import DemoSizes, write_demo_world
from complora.demo.pretrain import CHECKPOINT_FILE, PretrainSettings, QualityGates, build_pool, pretrain
from complora.errors import ComploraError
from complora.fingerprint import weights_sha256

TINY_RUN = PretrainSettings(steps=3, batch_size=16, pool_size=48, warmup_steps=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sizes = DemoSizes(train_per_class=2, val_per_class=1, test_per_class=6, image_size=32)
    return write_demo_world(tmp_path_factory.mktemp("demo") / "world", seed=0, sizes=sizes)


def test_architecture_is_known_to_open_clip():
    assert "demo-vit-tiny" in open_clip.list_models()
    model = open_clip.create_model("demo-vit-tiny")
    assert model.visual.image_size == (32, 32)


def test_pretrain_writes_a_checkpoint_plain_open_clip_loads(world, tmp_path):
    torch.set_num_threads(2)
    metadata = pretrain(world, tmp_path, seed=0, settings=TINY_RUN)
    assert json.loads((tmp_path / "metadata.json").read_text()) == metadata
    for field in ("architecture", "seed", "steps", "wall_seconds", "weights_sha256", "zero_shot_top1", "quality_gates"):
        assert field in metadata
    assert set(metadata["zero_shot_top1"]) == set(json.loads((world / "world.json").read_text())["tasks"])
    plain = open_clip.create_model("demo-vit-tiny", pretrained=str(tmp_path / CHECKPOINT_FILE))
    assert weights_sha256(plain) == metadata["weights_sha256"]


def test_same_seed_and_threads_give_the_same_weights(world, tmp_path):
    torch.set_num_threads(2)
    first = pretrain(world, tmp_path / "a", seed=0, settings=TINY_RUN)
    second = pretrain(world, tmp_path / "b", seed=0, settings=TINY_RUN)
    third = pretrain(world, tmp_path / "c", seed=1, settings=TINY_RUN)
    assert first["weights_sha256"] == second["weights_sha256"] != third["weights_sha256"]


def test_pool_never_contains_a_test_image():
    images, scenes, dropped = build_pool(seed=0, size=20, image_size=16, excluded=set())
    assert dropped == 0 and len(images) == len(scenes) == 20 and not any(scene.night for scene in scenes)
    excluded = {hashlib.sha256(images[3].tobytes()).hexdigest()}
    again, _, dropped = build_pool(seed=0, size=20, image_size=16, excluded=excluded)
    assert dropped == 1 and all(hashlib.sha256(image.tobytes()).hexdigest() not in excluded for image in again)


def test_quality_gates():
    gates = QualityGates()
    chance = {"a": 20.0, "b": 20.0, "c": 20.0}
    assert gates.check({"a": 80.0, "b": 60.0, "c": 30.0}, chance)["passed"]
    assert not gates.check({"a": 80.0, "b": 59.0, "c": 30.0}, chance)["passed"]
    assert not gates.check({"a": 80.0, "b": 60.0, "c": 41.0}, chance)["passed"]
    assert gates.check({"a": 80.0, "b": 60.0, "c": 20.0}, chance)["at_chance"] == ["c"]


def test_missing_world_is_a_clear_error(tmp_path):
    with pytest.raises(ComploraError, match="generate the world with `complora demo-data` first"):
        pretrain(tmp_path, tmp_path / "out", settings=TINY_RUN)


@pytest.mark.slow
def test_reduced_pretraining_learns_the_captioned_tasks(world, tmp_path):
    # A few hundred small steps already teach the attributes every caption names; the full-size gates
    # (benchmarks/README.md) need the default settings.
    torch.set_num_threads(2)
    settings = PretrainSettings(steps=150, batch_size=128, pool_size=4000, warmup_steps=20)
    metadata = pretrain(world, tmp_path, seed=0, settings=settings)
    accuracy = metadata["zero_shot_top1"]
    assert accuracy["demo_colors"] >= 60 and accuracy["demo_scenes"] >= 60, accuracy
    assert all(accuracy[task] > metadata["chance_top1"][task] for task in ("demo_colors", "demo_scenes", "demo_shapes"))
