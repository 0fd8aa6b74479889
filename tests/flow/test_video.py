import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flow.errors import FlowError
from flow.video import VideoReader, output_size, parse_size
from tests.builders import moving_square, write_video

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("size,src,expected", [
    ("340x256", (1920, 1080), (340, 256)),
    ("256", (1920, 1080), (455, 256)),
    ("256", (480, 640), (256, 341)),
    ("", (426, 240), (426, 240)),
    ("128", (128, 96), (171, 128)),
])
def test_output_size(size, src, expected):
    assert output_size(*src, size) == expected


@pytest.mark.parametrize("bad", ["x256", "340x", "-3", "3x4x5", "big"])
def test_bad_size(bad):
    with pytest.raises(FlowError, match="flow.size"):
        parse_size(bad)


@pytest.mark.parametrize("ext", [".avi", ".mp4", ".mkv"])
def test_reads_every_frame_in_chunks(tmp_path, ext):
    frames = moving_square(11)
    path = write_video(tmp_path / f"v{ext}", frames)
    reader = VideoReader(path, "32x24")
    chunks = list(reader.chunks(4, 3))
    assert [len(c) for c in chunks] == [4, 3, 3, 1]
    assert chunks[0].shape[1:] == (24, 32, 3) and chunks[0].dtype == np.uint8
    assert reader.frames_read == 11 and reader.declared_frames == 11
    reader.check_complete(0.02)


def test_lossless_video_decodes_to_the_written_frames(tmp_path):
    frames = moving_square(5)
    path = write_video(tmp_path / "v.mkv", frames)  # FFV1 is lossless
    got = np.concatenate(list(VideoReader(path).chunks(10, 10)))
    assert np.array_equal(got, frames)


def test_unreadable_files_raise_with_the_path(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(FlowError, match="empty.mp4: empty file"):
        VideoReader(empty)
    junk = tmp_path / "junk.avi"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(FlowError, match="junk.avi: cannot open"):
        VideoReader(junk)
    with pytest.raises(FlowError, match="no such video file"):
        VideoReader(tmp_path / "missing.avi")


def test_truncated_videos_are_detected(tmp_path):
    data = write_video(tmp_path / "v.avi", moving_square(40)).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])
    reader = VideoReader(cut)
    list(reader.frames())
    assert 0 < reader.frames_read < 40
    with pytest.raises(FlowError, match=r"truncated or corrupt: decoded \d+ of the 40 frames"):
        reader.check_complete(0.02)
    reader.check_complete(1.0)  # the check can be turned off
    mp4 = write_video(tmp_path / "v.mp4", moving_square(40)).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(mp4[: len(mp4) // 2])  # index at the end: lost
    with pytest.raises(FlowError, match="cut.mp4: cannot open"):
        VideoReader(tmp_path / "cut.mp4")


def test_real_gif_and_large_video(shared_data):
    gif = VideoReader(shared_data / "clips" / "i3d_cricket" / "v_CricketShot_g04_c01_rgb.gif", "32")
    frames = np.concatenate(list(gif.chunks(64, 64)))
    assert frames.shape == (79, 32, 32, 3)
    gif.check_complete(0.02)
    big = VideoReader(shared_data / "clips" / "drink_water__ntu_S001C001P001R001A001.avi", "340x256")
    first = next(big.chunks(2, 2))
    assert first.shape == (2, 256, 340, 3)


NON_UTF8_SCRIPT = """
import os, sys, numpy as np
from flow.video import VideoReader
path = os.fsdecode(sys.argv[1].encode() + b"/caf\\xe9.mkv")
reader = VideoReader(path)
frames = np.concatenate(list(reader.chunks(3, 3)))
np.save(sys.argv[1] + "/frames.npy", frames)
print(reader.frames_read, reader.declared_frames)
"""


def test_a_file_name_that_is_not_utf8_is_read(tmp_path):
    """OpenCV segfaults on such a name (rc 139, no message); it is read through a UTF-8 symlink.
    In a subprocess, so that a crash fails this test instead of ending the test run."""
    frames = moving_square(5)
    path = write_video(tmp_path / "cafe.mkv", frames)  # FFV1: lossless, so the frames compare exactly
    try:
        os.rename(path, os.fsencode(tmp_path) + b"/caf\xe9.mkv")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    result = subprocess.run([sys.executable, "-c", NON_UTF8_SCRIPT, str(tmp_path)], capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, f"rc {result.returncode}: {result.stderr}"
    assert result.stdout.split() == ["5", "5"]
    assert np.array_equal(np.load(tmp_path / "frames.npy"), frames)
    assert sorted(os.listdir(tmp_path)) == [b"caf\xe9.mkv".decode("utf-8", "surrogateescape"), "frames.npy"]
    # missing or empty: the message is printable (the name's bytes as \xNN)
    with pytest.raises(FlowError, match=r"caf\\xe9\.mkv: no such video file"):
        VideoReader(os.fsdecode(os.fsencode(tmp_path) + b"/missing/caf\xe9.mkv"))


def test_frames_larger_than_max_pixels_are_refused_before_decoding(tmp_path):
    path = write_video(tmp_path / "v.avi", moving_square(3, width=64, height=48))
    with pytest.raises(FlowError, match=r"v\.avi: frames of 64x48 would be processed at 64x48 \(3,072 pixels\), "
                                        r"more than \[flow\] max_pixels = 3,071: set \[flow\] size"):
        VideoReader(path, "", max_pixels=3071)
    assert VideoReader(path, "", max_pixels=3072).declared_frames == 3  # the limit itself is allowed
    small = VideoReader(path, "32x24", max_pixels=768)  # the limit applies after resizing
    assert next(small.chunks(3, 3)).shape == (3, 24, 32, 3)
    assert next(VideoReader(path, "", max_pixels=0).chunks(3, 3)).shape == (3, 48, 64, 3)  # 0: no limit


def test_progress_bars_write_a_line_per_interval_into_a_log_file(monkeypatch):
    # A batch job's stderr is a file: the bar must not redraw thousands of times into it.
    import io

    from p3dbase import progress
    log = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", log)
    bar = progress.progress_bar(range(5000), desc="flow")
    assert bar.mininterval == progress.LOG_INTERVAL
    for _ in bar:
        pass
    text = log.getvalue()
    # Plain lines only (no carriage-return redraws, no cursor escapes): the start and the end.
    assert "\r" not in text and "\x1b" not in text and "5000/5000" in text
    assert 1 <= len(text.splitlines()) <= 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_child_forked_inside_opencv_single_thread_can_reconfigure_opencv():
    # Without the helper, the child's cv2.setNumThreads waits forever on the parent's pool threads.
    script = """
import os, cv2, numpy as np
from flow.video import opencv_single_thread
cv2.setNumThreads(4)
img = np.random.rand(2000, 2000).astype(np.float32)
for _ in range(5):
    cv2.GaussianBlur(img, (31, 31), 5)
with opencv_single_thread():
    pid = os.fork()
    if pid == 0:
        cv2.setNumThreads(1)
        cv2.GaussianBlur(img, (31, 31), 5)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), cv2.getNumThreads())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["0", "4"], out.stderr[-2000:]


def test_same_size_reads_spellings_of_one_size_and_never_raises():
    from flow.video import same_size, size_text

    assert size_text("0340X256") == "340x256" and size_text(" 0064 ") == "64" and size_text("") == ""
    assert same_size("340X256", "340x256") and same_size("064", "64") and not same_size("64", "340x256")
    # records of other types (an edited store.json, a foreign checkpoint) compare as they are
    assert not same_size(b"64", "64") and not same_size(64, "64") and same_size(None, None)
    assert same_size("odd", "odd") and not same_size("odd", "64")
