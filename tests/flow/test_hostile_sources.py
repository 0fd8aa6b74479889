"""A video path that is a folder (a directory named `x.avi`) is named as a folder, not as missing."""
import pytest

from flow.errors import FlowError
from flow.video import VideoReader


def test_a_folder_named_like_a_video_is_said_to_be_a_folder(tmp_path):
    folder = tmp_path / "v_Class_g01_c01.avi"
    folder.mkdir()
    with pytest.raises(FlowError, match=r"v_Class_g01_c01.avi: a folder, not a video file$"):
        VideoReader(folder)
    with pytest.raises(FlowError, match=r"gone.avi: no such video file$"):
        VideoReader(tmp_path / "gone.avi")
