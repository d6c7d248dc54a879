"""Device selection: auto falls back to the CPU; a device that is not there is refused with what is."""

from __future__ import annotations

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
