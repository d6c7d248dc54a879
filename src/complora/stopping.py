"""Stopping a job on SIGTERM or SIGINT: what SLURM sends on preemption or time-out, and Ctrl-C.

Outside a protected section the signal stops the job at once. Inside one (a training step and its
checkpoint) it is recorded, and the section's owner stops at the next safe point, after saving its state,
so a preempted job loses at most one step of work.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class JobStopped(Exception):
    """The job was asked to stop by a signal. ``exit_code`` follows the shell's 128 + signal number."""

    def __init__(self, signum: int, detail: str = "") -> None:
        self.signum = signum
        self.detail = detail
        super().__init__(f"stopped by signal {signum} ({signal.Signals(signum).name}){detail}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Context manager that turns SIGTERM / SIGINT into :class:`JobStopped` (restoring the previous
    handlers on exit); :meth:`protected` defers the stop to :meth:`stop_if_requested`."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._protected = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        for signum in HANDLED_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if not self._protected:
            raise JobStopped(signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextmanager
    def protected(self) -> Iterator[None]:
        """A section a signal must not interrupt; the caller checks :attr:`requested` afterwards."""
        self._protected = True
        try:
            yield
        finally:
            self._protected = False

    def stop_if_requested(self, detail: str = "") -> None:
        if self.signum is not None:
            raise JobStopped(self.signum, detail)
