"""Training checkpoints: what a killed run needs to continue exactly where it stopped.

A checkpoint holds the trainable weights, the optimizer and scheduler states, every random number
generator's state, the batch order and the step. It is written atomically beside the run's outputs and is
tied to the run's identity (a hash of its settings, k-shot split, projector, code and library versions), so
a checkpoint left by another run in the same folder, or by other code, is never resumed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path, remove_partial_writes

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpointing:
    """Where a run keeps its checkpoint, how often it writes it (every ``every`` steps, and always at the
    end of training and when stopped by a signal) and which run it belongs to."""

    path: Path
    every: int
    identity: str

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"checkpoints every {self.every} steps: must be 1 or more")

    def save(self, state: dict[str, Any]) -> None:
        with atomic_path(self.path) as temporary:
            torch.save({"format_version": FORMAT_VERSION, "identity": self.identity, **state}, temporary)

    def load(self) -> dict[str, Any] | None:
        """The saved state of this run, or None (no checkpoint, or one that cannot be resumed: then training
        starts from step 0 and overwrites it)."""
        remove_partial_writes(self.path)  # one run owns the folder: a leftover is a killed save's
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # a damaged file of any kind means the same: start again
            log.warning("%s cannot be read (%s); training starts from step 0", self.path, error)
            return None
        if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
            log.warning("%s has another checkpoint format; training starts from step 0", self.path)
            return None
        if state.get("identity") != self.identity:
            log.warning(
                "%s belongs to another run (other settings, split, projector or code); training starts from step 0",
                self.path,
            )
            return None
        return state

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        remove_partial_writes(self.path)
