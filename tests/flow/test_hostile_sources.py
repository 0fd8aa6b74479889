"""A video path that is not a video file (a folder named `x.avi`, a FIFO) is named as what it is, not as missing."""
import os

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


def test_a_fifo_named_like_a_video_is_refused_without_blocking(tmp_path):
    """`predict /tmp/pipe.mp4` on a named pipe said "no such video file"; a device like /dev/zero the same.
    Opened, a FIFO would block the reader until a writer came."""
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with pytest.raises(FlowError, match=r"pipe.mp4: not a regular file \(a FIFO, socket or device\)$"):
        VideoReader(fifo)
