"""The `complora` command's promises to the workflow: a job records only a request that describes its own
flags, a full disk or a Ctrl-C ends it with one line and nothing half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from complora.cli import main

BIN = Path(sys.executable).parent


def split_file(path: Path) -> Path:
    entries = [[f"c{label}/{i}.jpg", label, f"class {label}"] for label in range(2) for i in range(3)]
    path.write_text(json.dumps({"train": entries, "val": entries, "test": entries}))
    return path


def test_a_request_that_does_not_describe_the_flags_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture):
    request = {"dataset": "d", "method": "zeroshot", "template": "a photo of a {}.", "protocol": "all",
               "coop_templates": [], "device": "--device cpu",
               "backbone": {"model": "demo-vit-tiny", "pretrained": "elsewhere.safetensors"}}  # fmt: skip
    code = main(["evaluate", "--dataset", "d", "--data", str(tmp_path), "--split-file", str(split_file(tmp_path / "s")),
                 "--model", "demo-vit-tiny", "--pretrained", "none", "--device", "cpu", "--out",
                 str(tmp_path / "metrics.json"), "--request", json.dumps(request)])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2 and "--request does not describe this job's flags" in error
    assert 'backbone: the request says {"model": "demo-vit-tiny", "pretrained": "elsewhere.safetensors"}' in error
    assert not (tmp_path / "metrics.json").exists()


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 256 KiB tmpfs, filled up (needs root, as in CI)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)]).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        handle = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(handle, b"\0" * 4096):
                pass
        except OSError:
            pass  # full
        finally:
            os.close(handle)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing(
    tmp_path: Path, full_disk: Path, capsys: pytest.CaptureFixture
):
    out = full_disk / "shots1_seed1.json"
    code = main(["split", "--split-file", str(split_file(tmp_path / "s.json")), "--dataset", "d", "--shots", "1",
                 "--seed", "1", "--out", str(out)])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2 and "no space left on device while writing" in error and "free space and rerun" in error
    assert "Traceback" not in error
    assert sorted(path.name for path in full_disk.iterdir()) == ["filler"], "nothing half-written"


def test_ctrl_c_while_a_job_starts_prints_one_line(tmp_path: Path):
    command = [str(BIN / "complora"), "evaluate", "--dataset", "d", "--data", str(tmp_path), "--split-file",
               str(split_file(tmp_path / "s.json")), "--model", "demo-vit-tiny", "--pretrained", "none",
               "--device", "cpu", "--out", str(tmp_path / "metrics.json")]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # importing torch and open_clip
    process.send_signal(signal.SIGINT)
    _, error = process.communicate(timeout=60)
    assert "Traceback" not in error, error
    assert process.returncode == 130 and "interrupted; nothing finished was written" in error, error
    assert not (tmp_path / "metrics.json").exists()
