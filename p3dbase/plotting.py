"""The one way in to matplotlib for every picture the pipeline draws: the Agg backend (files, no
display) and text drawn exactly as written.

Class names, video ids and titles come from users' folders and annotation files. matplotlib would
read a name holding two `$` as TeX ("save $$$", "a $5 or $10 bet") and raise on one it cannot parse,
losing the whole report; `drawing` turns that parsing off while a figure is built (matplotlib reads
the setting when each text is made). matplotlib is imported only when a picture is drawn: stages
that draw nothing never pay for it.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def drawing(fn: F) -> F:
    """Decorate a function that builds a figure: Agg, and no TeX parsing of any text it adds."""
    @functools.wraps(fn)
    def draw(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        matplotlib.use("Agg")
        with matplotlib.rc_context({"text.parse_math": False}):
            return fn(*args, **kwargs)

    return draw  # type: ignore[return-value]
