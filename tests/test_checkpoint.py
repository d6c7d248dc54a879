"""Preemption: a training job killed part-way (SIGTERM as SLURM sends, or SIGKILL) and run again resumes from
its last checkpoint and ends, on CPU, with exactly the metrics and adapter of an uninterrupted run.

Marked slow (real training processes, about a minute on 2 cores).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from complora.data.splits import few_shot_split, write_few_shot_split
from complora.demo.datasets import DemoSizes, write_demo_world
from complora.experiment import Backbone, DatasetRef, evaluate_zero_shot
from complora.models import load_clip
from complora.tensorfile import save_tensors

pytestmark = pytest.mark.slow

TASK = "demo_rare_colors"
# Timings, memory and where the run lives differ between any two runs; resumed_at_step is what this tests.
VARYING = {"train_seconds", "eval_seconds", "wall_seconds", "peak_memory_mib", "peak_gpu_memory_mib", "data",
           "resumed_at_step"}  # fmt: skip


@pytest.fixture(scope="module")
def command(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("preempt")
    world = write_demo_world(root / "world", seed=0, sizes=DemoSizes(8, 2, 4, 32))
    weights = root / "weights.safetensors"
    save_tensors(dict(load_clip("demo-vit-tiny", "none", seed=0).state_dict()), weights, {"format": "open_clip"})
    dataset = DatasetRef(TASK, world / TASK, world / TASK / "split.json")
    evaluate_zero_shot(dataset, Backbone("demo-vit-tiny", str(weights)), root / "zs.json", device="cpu")
    few_shot = root / "split.json"
    write_few_shot_split(few_shot_split(world / TASK / "split.json", TASK, 8, 1), few_shot)
    return [sys.executable, "-m", "complora.cli", "train", "--dataset", TASK, "--data", str(world / TASK),
            "--split-file", str(world / TASK / "split.json"), "--few-shot", str(few_shot), "--seed", "1",
            "--method", "lora", "--model", "demo-vit-tiny", "--pretrained", str(weights), "--zero-shot",
            str(root / "zs.json"), "--iterations", "150", "--learning-rate", "0.002", "--checkpoint-every", "10",
            "--threads", "1", "--device", "cpu"]  # fmt: skip


def train(command: list[str], out: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([*command, "--out-dir", str(out)], stderr=subprocess.PIPE, text=True, **kwargs)


def metrics(out: Path) -> dict:
    return {k: v for k, v in json.loads((out / "metrics.json").read_text()).items() if k not in VARYING}


@pytest.fixture(scope="module")
def uninterrupted(command: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    assert train(command, out).wait(timeout=300) == 0
    assert not (out / "checkpoint.pt").exists(), "a finished run removes its checkpoint"
    assert json.loads((out / "metrics.json").read_text())["resumed_at_step"] is None
    return out


def kill_after_first_checkpoint(process: subprocess.Popen, out: Path, signum: int) -> None:
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before any checkpoint"
        time.sleep(0.02)
    os.kill(process.pid, signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_killed_run_resumes_to_the_same_result(signum: int, command: list[str], uninterrupted: Path, tmp_path):
    out = tmp_path / "run"
    process = train(command, out)
    kill_after_first_checkpoint(process, out, signum)
    stopped = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - stopped < 10, "a preempted job exits promptly"
    if signum == signal.SIGTERM:
        assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
        assert "stopped by signal 15 (SIGTERM) at training step" in stderr
        assert f"no metrics written: rerun the same command to resume from {out / 'checkpoint.pt'}" in stderr
    else:
        assert process.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists(), "an interrupted run writes no metrics"
    assert (out / "checkpoint.pt").exists()

    resumed = train(command, out)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-2000:]
    assert metrics(out) == metrics(uninterrupted)
    resumed_at = json.loads((out / "metrics.json").read_text())["resumed_at_step"]
    assert resumed_at is not None and 10 <= resumed_at < 150, "it went on from the checkpoint, not from step 0"
    assert f"resuming from {out / 'checkpoint.pt'} at step {resumed_at}" in stderr
    adapter = "adapter/adapter_model.safetensors"
    assert (out / adapter).read_bytes() == (uninterrupted / adapter).read_bytes()
    assert not (out / "checkpoint.pt").exists()


def test_a_checkpoint_of_another_run_is_not_resumed(command: list[str], uninterrupted: Path, tmp_path: Path):
    out = tmp_path / "run"
    process = train(command, out)
    kill_after_first_checkpoint(process, out, signal.SIGKILL)
    process.wait(timeout=60)
    other_seed = [*command]
    other_seed[other_seed.index("--seed") + 1] = "2"
    other = train(other_seed, out)
    _, stderr = other.communicate(timeout=300)
    assert other.returncode == 0, stderr[-2000:]
    assert "belongs to another run" in stderr and "training starts from step 0" in stderr
    assert json.loads((out / "metrics.json").read_text())["resumed_at_step"] is None
