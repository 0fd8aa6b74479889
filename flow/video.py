"""Decoding videos into resized BGR frames with OpenCV, chunk by chunk, and telling broken files apart.

OpenCV (FFmpeg inside) reads mp4 / avi / mkv / webm / gif alike. PyAV was not adopted: decoding is
under 2% of the stage's time next to TV-L1 (bench/flow_pipeline.py), so a faster decoder would not
show, and OpenCV is already a dependency.
"""
from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from flow.errors import FlowError
from p3dbase.errors import file_problem, shown

# What the dataset readers and `features` take for a video file: containers OpenCV's FFmpeg decodes.
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv",
                    ".3gp", ".ogv", ".gif")


@contextmanager
def opencv_single_thread() -> Iterator[None]:
    """OpenCV on one thread inside the block; for a process about to fork workers that use OpenCV.

    OpenCV's thread pool does not survive fork: a forked child that uses or reconfigures it waits
    forever on pool threads that exist only in the parent. With the pool shut down before the fork,
    the children inherit one thread (they are the parallelism)."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def parse_size(size: str) -> tuple[int, int] | int | None:
    """`"340x256"` -> (340, 256) (width, height); `"256"` -> 256 (short side); `""` -> None."""
    text = size.strip().lower()
    if not text:
        return None
    parts = text.split("x")
    if len(parts) not in (1, 2) or not all(p.isascii() and p.isdigit() and int(p) > 0 for p in parts):
        raise FlowError(f"flow.size: must be 'WxH', a short side like '256', or '', got {size!r}")
    if len(parts) == 2:
        return int(parts[0]), int(parts[1])
    return int(parts[0])


def size_text(size: str) -> str:
    """`[flow] size` as store.json records it, one spelling per size: "340X256" and "0340x256" ->
    "340x256", "0064" -> "64" (a store made with one was refused to a run given the other)."""
    target = parse_size(size)
    if target is None:
        return ""
    return f"{target[0]}x{target[1]}" if isinstance(target, tuple) else str(target)


def same_size(a: Any, b: Any) -> bool:
    """Whether two recorded `[flow] size` values are one size: "340X256" (a store or checkpoint made
    before size_text) is "340x256". A value that is no size compares as it is."""
    if not (isinstance(a, str) and isinstance(b, str)):  # not text (an edited or foreign record)
        return a == b
    try:
        return size_text(a) == size_text(b)
    except FlowError:  # not a size
        return a == b


def output_size(width: int, height: int, size: str) -> tuple[int, int]:
    """(width, height) of the stored frames for a `width` x `height` video under `[flow] size`."""
    target = parse_size(size)
    if target is None:
        return width, height
    if isinstance(target, tuple):
        return target
    scale = target / min(width, height)
    if width <= height:
        return target, max(1, round(height * scale))
    return max(1, round(width * scale)), target


def resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (width, height): area averaging when shrinking (no aliasing), bilinear otherwise."""
    h, w = frame.shape[:2]
    if (w, h) == size:
        return frame
    shrink = size[0] < w and size[1] < h
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _open_capture(path: Path) -> cv2.VideoCapture:
    """cv2.VideoCapture on `path`. OpenCV converts the name to UTF-8 and crashes the process
    (segfault) on a name that is not valid UTF-8 (Python holds its bytes as lone surrogates), so
    such a file is opened through a temporary UTF-8 symlink, removed once FFmpeg holds the file open."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return cv2.VideoCapture(str(path))
    suffix = path.suffix if path.suffix.isascii() else ""  # some demuxers go by the extension
    folder = tempfile.mkdtemp(prefix="p3d-video-")
    link = os.path.join(folder, "video" + suffix)
    try:
        os.symlink(os.fsencode(path.absolute()), link)
        return cv2.VideoCapture(link)
    finally:
        if os.path.lexists(link):
            os.unlink(link)
        os.rmdir(folder)


def _memory_cap() -> str:
    """", or ..." naming this process's address-space limit when one is set: under `ulimit -v` FFmpeg
    fails to open every video alike, and the reason would blame the files."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return ""
    return f", or too little memory for the decoder: this process may use {limit / 2**30:.1f} GiB (`ulimit -v`)"


class VideoReader:
    """Frames of one video file, resized, in chunks. Raises FlowError naming the file when it
    cannot be read: missing, empty, unreadable (permissions), not a video, no decodable frame, or (with
    `max_pixels` > 0) frames that would be larger than `max_pixels` after resizing."""

    def __init__(self, path: Path | str, size: str = "", max_pixels: int = 0):
        self.path = Path(path)
        self.size = size
        self.max_pixels = max_pixels
        # Unreadable for this user is said as such: OpenCV would call it "not a video", after a warning.
        if problem := file_problem(self.path, "video file"):
            raise FlowError(f"{shown(self.path)}: {problem}")
        if self.path.stat().st_size == 0:
            raise FlowError(f"{shown(self.path)}: empty file")
        self._cap = _open_capture(self.path)
        if not self._cap.isOpened():
            raise FlowError(f"{shown(self.path)}: cannot open (not a video OpenCV/FFmpeg can read, or "
                            f"its header is missing{_memory_cap()})")
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        # The container's own frame count (0 when it does not say); used to spot truncated files.
        self.declared_frames = int(count) if math.isfinite(count) and count > 0 else 0
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if math.isfinite(fps) and fps > 0 else 0.0  # the container's frame rate; 0 = unknown
        self.frames_read = 0
        # Each frame's presentation time (s, from the container's timestamps: a variable frame rate
        # included), as FFmpeg gives it while reading; NaN where a container gives none.
        self.timestamps: list[float] = []
        self.out_size: tuple[int, int] | None = None
        width, height = (self._cap.get(p) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT))
        if math.isfinite(width) and math.isfinite(height) and width >= 1 and height >= 1:
            self._check_pixels(int(width), int(height))  # before a frame is decoded

    def _check_pixels(self, width: int, height: int) -> tuple[int, int]:
        """The stored size of `width` x `height` frames; FlowError if it exceeds `max_pixels`."""
        out = output_size(width, height, self.size)
        if self.max_pixels > 0 and out[0] * out[1] > self.max_pixels:
            self._cap.release()
            raise FlowError(f"{shown(self.path)}: frames of {width}x{height} would be processed at "
                            f"{out[0]}x{out[1]} ({out[0] * out[1]:,} pixels), more than [flow] "
                            f"max_pixels = {self.max_pixels:,}: set [flow] size (e.g. '340x256') or "
                            "raise max_pixels")
        return out

    def frames(self) -> Iterator[np.ndarray]:
        """Every decodable frame, resized, uint8 [H, W, 3] BGR."""
        try:
            while True:
                ok, frame = self._cap.read()
                if not ok or frame is None:
                    return
                if frame.ndim == 2:
                    frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
                elif frame.shape[2] == 4:
                    frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
                if self.out_size is None:
                    # From the first frame; a stream changing resolution midway is resized to it.
                    self.out_size = self._check_pixels(frame.shape[1], frame.shape[0])
                self.frames_read += 1
                msec = self._cap.get(cv2.CAP_PROP_POS_MSEC)
                self.timestamps.append(msec / 1000.0 if math.isfinite(msec) and msec >= 0 else math.nan)
                yield resize(frame, self.out_size)
        finally:
            self._cap.release()

    def chunks(self, first: int, rest: int) -> Iterator[np.ndarray]:
        """The frames as uint8 [T, H, W, 3] arrays: `first` frames, then `rest` at a time."""
        chunk: list[np.ndarray] = []
        limit = first
        for frame in self.frames():
            chunk.append(frame)
            if len(chunk) == limit:
                yield np.stack(chunk)
                chunk, limit = [], rest
        if chunk:
            yield np.stack(chunk)

    def check_complete(self, tolerance: float) -> None:
        """FlowError if fewer frames decoded than the container declares, beyond `tolerance`
        (a share of the declared count; containers estimating their count from the duration are
        often one frame off)."""
        if self.frames_read == 0:
            raise FlowError(f"{shown(self.path)}: no frame could be decoded")
        missing = self.declared_frames - self.frames_read
        if missing > max(1.0, tolerance * self.declared_frames):
            raise FlowError(f"{shown(self.path)}: truncated or corrupt: decoded {self.frames_read} of the "
                            f"{self.declared_frames} frames the container declares (to accept it, raise "
                            f"flow.missing_frames_tolerance, now {tolerance:g}, to "
                            f"{missing / self.declared_frames:.2f} or more; 1.0 turns the check off)")
