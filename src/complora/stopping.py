"""Stopping a job on SIGTERM or SIGINT: what SLURM sends on preemption or time-out, and Ctrl-C.

Outside a protected section the signal stops the job at once. Inside one (the training loop) it is
recorded, and the section's owner stops at the next safe point, after the step it is in and a checkpoint,
so a preempted job loses no work. Once a job is past the point of no return (its results are being
written), :meth:`StopSignals.disarm` lets it finish.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class JobStopped(BaseException):
    """The job was asked to stop by a signal. ``exit_code`` follows the shell's 128 + signal number.

    A BaseException, like KeyboardInterrupt: code that turns errors into messages (``except Exception``)
    must not swallow a stop."""

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
        self._armed = True
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
        if not self._armed:
            return
        self.signum = signum
        if not self._protected:
            raise JobStopped(signum)

    def disarm(self) -> None:
        """From now on signals are ignored: the job is writing its results and ends in a moment."""
        self._armed = False

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
