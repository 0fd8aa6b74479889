"""Text from users (class names, video ids) is drawn as written: matplotlib would read two `$` as TeX
and raise on what it cannot parse, losing the picture and the report with it."""
import io

import matplotlib
import pytest

from p3dbase.plotting import drawing, pyplot

TEX_TRAPS = ["a$^$b", "save $$$ now", r"$\frac$"]


def _draw(text: str) -> bytes:
    fig, ax = pyplot().subplots()
    ax.set_yticks(range(len(TEX_TRAPS)), [*TEX_TRAPS[:-1], text])
    ax.set_title(text)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    pyplot().close(fig)
    return buffer.getvalue()


def test_without_drawing_matplotlib_fails_on_these_names():
    # The premise: if matplotlib stopped parsing `$` by default, this test says so.
    with pytest.raises(ValueError):
        _draw("a$^$b")


@pytest.mark.parametrize("text", TEX_TRAPS)
def test_drawing_draws_them_and_leaves_matplotlib_as_it_was(text):
    with drawing():
        assert _draw(text).startswith(b"\x89PNG")
    assert matplotlib.rcParams["text.parse_math"] is True  # a caller's own figures still get TeX
