"""Pretrained weights as an artifact: from a local checkpoint, or a tag that fails at once when offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from complora.errors import ComploraError
from complora.fingerprint import weights_sha256
from complora.models import load_clip
from complora.tensorfile import save_tensors
from complora.weights import CHECKPOINT_FILE, fetch_weights


def test_local_checkpoint_becomes_an_artifact(tmp_path: Path):
    model = load_clip("demo-vit-tiny", "none", seed=4)
    save_tensors(dict(model.state_dict()), tmp_path / "mine.safetensors", {"format": "open_clip"})
    metadata = fetch_weights("demo-vit-tiny", str(tmp_path / "mine.safetensors"), tmp_path / "out", tmp_path / "cache")
    assert metadata["weights_sha256"] == weights_sha256(model) and metadata["source"]["kind"] == "file"
    assert json.loads((tmp_path / "out" / "metadata.json").read_text()) == metadata
    reloaded = load_clip("demo-vit-tiny", str(tmp_path / "out" / CHECKPOINT_FILE))
    assert weights_sha256(reloaded) == metadata["weights_sha256"]


def test_offline_tag_fails_at_once_saying_what_to_fetch(tmp_path: Path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there: as offline as it gets
    command = [sys.executable, "-m", "complora.cli", "weights", "--model", "ViT-B-16", "--pretrained", "openai",
               "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and time.perf_counter() - start < 60
    assert "cannot be reached" in result.stderr and "timm/vit_base_patch16_clip_224.openai" in result.stderr
    assert "backbone.pretrained" in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("model", "pretrained", "message"),
    [("ViT-B-16", "no-such-tag", "tags: "), ("ViT-Nope", "openai", "not an open_clip architecture")],
)
def test_unknown_tag_or_model(model: str, pretrained: str, message: str, tmp_path: Path):
    with pytest.raises(ComploraError, match=message):
        fetch_weights(model, pretrained, tmp_path / "out", tmp_path / "cache")
