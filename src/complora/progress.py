"""Progress bars for long work: live in a terminal, a line every 10 s in a job's log file."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress_bar(iterable: Iterable[Any] | None = None, **options: Any) -> tqdm:
    """``tqdm`` throttled so that job logs stay small."""
    return tqdm(iterable, mininterval=0.1 if sys.stderr.isatty() else 10.0, **options)
