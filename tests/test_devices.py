"""Device selection: auto falls back to the CPU; a device that is not there is refused with what is; concurrent
jobs on a workstation claim different GPUs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from complora.devices import select_device
from complora.errors import ComploraError


def test_auto_and_cpu():
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert select_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(("device", "message"), [("gpu0", "not a torch device"), ("meta", "cpu or cuda")])
def test_bad_names(device: str, message: str):
    with pytest.raises(ComploraError, match=message):
        select_device(device)


def test_missing_gpu_index_is_refused():
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    expected = "no CUDA GPU is visible" if visible == 0 else f"only {visible} CUDA GPU"
    with pytest.raises(ComploraError, match=expected):
        select_device(f"cuda:{visible + 7}")


CLAIM = """
import sys, time
from pathlib import Path
from complora.devices import claim_first_free
print(claim_first_free(["gpu-a", "gpu-b"], Path(sys.argv[1])), flush=True)
time.sleep(float(sys.argv[2]))
"""


def claim_in_process(directory: Path, hold_seconds: float) -> tuple[subprocess.Popen, str]:
    """A separate process claims a GPU and holds it; returns the process and the index it got."""
    process = subprocess.Popen(
        [sys.executable, "-c", CLAIM, str(directory), str(hold_seconds)], stdout=subprocess.PIPE, text=True
    )
    return process, process.stdout.readline().strip()


def test_concurrent_jobs_claim_different_gpus_and_a_claim_ends_with_its_process(tmp_path: Path):
    first, first_index = claim_in_process(tmp_path, 60)
    second, second_index = claim_in_process(tmp_path, 60)
    try:
        assert {first_index, second_index} == {"0", "1"}
        third, third_index = claim_in_process(tmp_path, 0)
        assert third_index == "None", "both GPUs are held"
        first.kill()  # a killed job's claim goes with it: no stale lock to clean up
        first.wait(timeout=30)
        fourth, fourth_index = claim_in_process(tmp_path, 0)
        assert fourth_index == first_index
        for process in (third, fourth):
            process.wait(timeout=30)
    finally:
        for process in (first, second):
            process.kill()
            process.wait(timeout=30)
