"""The tools' bad arguments are one FusionError line before any work (the CLI: `error: ...`, exit 2)."""
from pathlib import Path

import pytest

from flow.config import FlowConfig
from fusion.config import EvalConfig
from fusion.errors import FusionError
from fusion.predict import Timeline, predict


def test_predict_timeline_refuses_a_negative_stride(tmp_path):
    """`predict --timeline --stride -1` was a ZeroDivisionError traceback from the snippet sampler."""
    with pytest.raises(FusionError, match=r"^--stride must be >= 1 .* got -1$"):
        predict([tmp_path / "v.avi"], {"rgb": tmp_path / "x.pt"}, FlowConfig(), EvalConfig(),
                timeline=Timeline(tmp_path / "timeline", stride=-1))


def test_predict_timeline_out_that_is_a_file_is_named_as_such(tmp_path):
    """`--timeline --out FILE` failed every video with `[Errno 17] File exists`, blaming the videos."""
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    with pytest.raises(FusionError, match=r"^--out .*notes.txt is a file; --timeline writes into a folder$"):
        predict([tmp_path / "v.avi"], {"rgb": tmp_path / "x.pt"}, FlowConfig(), EvalConfig(),
                timeline=Timeline(Path(out)))
    assert out.read_text() == "mine"
