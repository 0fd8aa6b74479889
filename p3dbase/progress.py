"""Progress bars: one rule for every stage (tqdm on stderr, with a rate and an ETA).

In a terminal the bar redraws in place. Into a file or a pipe (a batch job's log, `| tee`, the run's
own log, p3dbase.runlog) a bar is written as plain lines instead, at most one per LOG_INTERVAL
seconds and the last one when it ends: no carriage returns, no cursor escapes, nothing a log reader
must replay to read.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

# Seconds between lines when stderr is not a terminal (a batch job's log file): a cluster log then shows
# progress and an ETA every half minute instead of thousands of carriage-return redraws.
LOG_INTERVAL = 30.0
# What a terminal redraw is made of: ANSI escape sequences (cursor up, clear line) and carriage returns.
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain_lines(text: str) -> list[str]:
    """The printable lines of terminal output: each carriage return or newline ends a line, escape
    sequences go, blank lines (a bar clearing itself) are dropped."""
    return [line.rstrip() for line in re.split(r"[\r\n]", _ESCAPES.sub("", text)) if line.strip()]


class PlainLines:
    """A text stream for tqdm's `file=` that writes each state of a bar once, as a plain line, to
    the stderr of the moment (so that a redirection or p3dbase.runlog installed later still gets it)."""

    def __init__(self) -> None:
        self._last = ""

    def write(self, text: str) -> int:
        for line in plain_lines(text):
            if line != self._last:
                sys.stderr.write(line + "\n")
                self._last = line
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """`tqdm(iterable, **kwargs)` that redraws freely in a terminal and writes at most one plain line
    per LOG_INTERVAL seconds into a file or pipe. A bar over nothing (total 0: a re-run with all done)
    is not drawn: `flow: 0video [00:00, ?video/s]` said nothing."""
    size = kwargs.get("total", len(iterable) if isinstance(iterable, (list, tuple, range)) else None)
    if size == 0:
        kwargs.setdefault("disable", True)
    if not sys.stderr.isatty() and "file" not in kwargs:
        kwargs.setdefault("mininterval", LOG_INTERVAL)
        kwargs["file"] = PlainLines()
        kwargs.setdefault("ascii", True)  # "#" rather than block characters a log viewer may not show
        kwargs.setdefault("ncols", 100)
    else:
        kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
