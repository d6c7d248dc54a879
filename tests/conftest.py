"""Shared fixtures: tiny open_clip architectures (real open_clip code, CPU-sized) and inputs for them."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

from complora.models import load_clip
from workflow_project import REDUCED, make_project, run

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 3},
}


@pytest.fixture(scope="session")
def tiny_config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model_configs") / "complora-test-tiny.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return path


@pytest.fixture
def make_tiny(tiny_config_path: Path):
    """Factory for tiny CLIPs in eval mode; the same seed gives the same weights."""

    def make(seed: int = 0) -> torch.nn.Module:
        return load_clip(str(tiny_config_path), "none", seed=seed).eval()

    return make


@pytest.fixture
def tiny_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(123)
    images = torch.randn(3, 3, 32, 32, generator=generator)
    texts = open_clip.tokenize(["a photo of a red square.", "a blue circle", "striped"], context_length=16)
    return images, texts


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reduced demo workflow run locally once (`snakemake --cores 2`); shared by the workflow and SLURM
    tests, which compare their tables with it."""
    project = make_project(tmp_path_factory.mktemp("workflow") / "project", REDUCED)
    result = run(project, "snakemake", "--cores", "2")
    assert result.returncode == 0, result.stderr[-5000:]
    return project
