"""Choosing the torch device a job runs on, with an error that says what is available."""

from __future__ import annotations

import torch

from .errors import ComploraError


def select_device(device: str) -> torch.device:
    """``auto`` is the first visible CUDA GPU, else the CPU; anything else must name a device that exists."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as error:
        raise ComploraError(f"--device {device}: not a torch device ({error}); use auto, cpu, cuda or cuda:N") from None
    if chosen.type == "cuda":
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if visible == 0:
            raise ComploraError(f"--device {device}: no CUDA GPU is visible here; use --device auto or cpu")
        if chosen.index is not None and chosen.index >= visible:
            raise ComploraError(f"--device {device}: only {visible} CUDA GPU(s) visible, cuda:0 to cuda:{visible - 1}")
    elif chosen.type != "cpu":
        raise ComploraError(f"--device {device}: complora runs on cpu or cuda devices")
    return chosen
