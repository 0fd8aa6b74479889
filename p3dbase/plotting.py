"""The one way in to matplotlib for every picture the pipeline draws: the Agg backend (files, no
display) and text drawn exactly as written.

Class names, video ids and titles come from users' folders and annotation files. matplotlib would
read a name holding two `$` as TeX ("save $$$", "a $5 or $10 bet") and raise on one it cannot parse,
losing the whole report; `with drawing():` turns that parsing off while a figure is built and saved
(matplotlib reads the setting when each text is made, tick labels included, some at save time), and
gives it back after, so a caller's own figures keep TeX. A context manager, not a decorator: the
ground never calls up into the code that draws. matplotlib is imported only when a picture is
drawn: stages that draw nothing never pay for it.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_y(ax: Any) -> None:
    """A log scale on a matplotlib Axes' y axis, with plain tick labels ("0.1", "40"). matplotlib's
    own are TeX ("$\\mathdefault{10^{1}}$"), which `drawing` keeps from being parsed: the labels showed
    as that source text. Linear when nothing drawn is positive (a loss of 0 on one class): matplotlib
    warned twice per picture that such data cannot be log-scaled."""
    from matplotlib import ticker

    if not any(y > 0 for line in ax.get_lines() for y in line.get_ydata()):
        return

    class PlainLog(ticker.LogFormatter):
        def __call__(self, x: float, pos: int | None = None) -> str:
            return f"{x:g}" if super().__call__(x, pos) else ""  # matplotlib picks which ticks to label

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PlainLog())
    ax.yaxis.set_minor_formatter(PlainLog(labelOnlyBase=False))


@contextmanager
def drawing() -> Iterator[None]:
    """Build (and save) a figure inside: Agg, and no TeX parsing of any text added."""
    import matplotlib

    matplotlib.use("Agg")
    with matplotlib.rc_context({"text.parse_math": False}):
        yield
