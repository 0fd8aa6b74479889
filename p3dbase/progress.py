"""Progress bars: one rule for every stage (tqdm on stderr, with a rate and an ETA)."""
from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

# Seconds between lines when stderr is not a terminal (a batch job's log file): a cluster log then shows
# progress and an ETA every half minute instead of thousands of carriage-return redraws.
LOG_INTERVAL = 30.0


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """`tqdm(iterable, **kwargs)` that redraws freely in a terminal and writes at most one line per
    LOG_INTERVAL seconds into a log file."""
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", LOG_INTERVAL)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
