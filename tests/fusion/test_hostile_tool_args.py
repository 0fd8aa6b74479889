"""The tools' bad arguments are one FusionError line before any work (the CLI: `error: ...`, exit 2)."""
from pathlib import Path

import pytest

from flow.config import FlowConfig
from fusion.config import EvalConfig
from fusion.errors import FusionError
from fusion.predict import Timeline, predict


@pytest.mark.parametrize("stride", [-1, 0])
def test_predict_timeline_refuses_a_stride_below_one(tmp_path, stride):
    """`predict --timeline --stride -1` was a ZeroDivisionError traceback from the snippet sampler; 0 meant
    the clip length, where `features --stride 0` is refused: one meaning for both commands."""
    with pytest.raises(FusionError, match=rf"^--stride must be >= 1 .* got {stride}$"):
        predict([tmp_path / "v.avi"], {"rgb": tmp_path / "x.pt"}, FlowConfig(), EvalConfig(),
                timeline=Timeline(tmp_path / "timeline", stride=stride))


def test_predict_timeline_out_that_is_a_file_is_named_as_such(tmp_path):
    """`--timeline --out FILE` failed every video with `[Errno 17] File exists`, blaming the videos."""
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    with pytest.raises(FusionError, match=r"^--out .*notes.txt is a file; --timeline writes into a folder$"):
        predict([tmp_path / "v.avi"], {"rgb": tmp_path / "x.pt"}, FlowConfig(), EvalConfig(),
                timeline=Timeline(Path(out)))
    assert out.read_text() == "mine"


def test_predict_with_no_readable_video_names_the_file_once(tmp_path):
    """The one line said `no video could be scored: /x/gone.avi: /x/gone.avi: no such video file`."""
    from tests.builders import checkpoint_with_statistics

    ckpt = checkpoint_with_statistics(tmp_path / "rgb.pt")
    gone = tmp_path / "gone.avi"
    with pytest.raises(FusionError) as caught:
        predict([gone], {"rgb": ckpt}, FlowConfig(), EvalConfig(clips=1, crops="center", jobs=1), progress=False)
    assert str(caught.value) == f"no video could be scored: {gone}: no such video file"
