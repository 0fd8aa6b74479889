"""Network outputs over time: one clip (a snippet) every `stride` frames of a video, streamed.

A snippet at frame s covers frames [s, s + W) for RGB and the flow images [s, s + W) (frames s to
s + W) for flow, W being the streams' clip length; the starts are 0, stride, 2 stride, ... while a
whole snippet fits in the positions every stream has (N frames for RGB alone, N - 1 flow images as
soon as a flow stream is given, so the rows of both streams are the same snippets). The tail shorter
than a stride is not covered. A video with fewer positions than one window gives one snippet at 0,
read looped (as eval reads a short video) and marked `padded`; a single frame with a flow stream
is refused. A snippet's times in seconds are its frames' container timestamps (Snippets.time_at),
so a variable frame rate is placed right.

The video is never held whole: frames are decoded in order into a buffer holding one batch of
snippets (`batch` starts: (batch - 1) x stride + W + 1 frames, or batch x (W + 1) where the stride
leaves frames between snippets, which are decoded and let go), TV-L1 runs on the pairs the batch needs
and not yet computed (where windows overlap, once per pair), the network scores the batch, and the
frames and flow before the next start are dropped. Memory is then bounded by the batch, not by the
video's length; the outputs themselves (T rows per stream) are the only thing that grows.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from flow.config import FlowConfig
from flow.encoding import encode
from flow.errors import FlowError
from flow.stage import make_backend
from flow.tvl1 import to_gray
from fusion.engine import Engine
from fusion.errors import FusionError
from fusion.inputs import open_reader
from fusion.views import View, ViewPlan
from p3dbase.errors import shown


@dataclass
class Snippets:
    """A video's outputs over time: per stream, one row per snippet (mirrored views averaged)."""
    num_frames: int
    fps: float  # the container's frame rate; 0 = unknown (a frame folder)
    window: int
    stride: int
    starts: list[int]
    padded: bool  # fewer positions than one window: one looped snippet
    logits: dict[str, np.ndarray]  # float32 [T, C]
    pool5: dict[str, np.ndarray]  # float32 [T, D]
    seconds: dict[str, float] = field(default_factory=dict)  # decode, flow, network_rgb, network_flow
    thumbnails: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (frame index, small BGR image)
    stamps: np.ndarray | None = None  # float64 [num_frames]: each frame's time (s) from the container; None: unknown

    def time_at(self, frame: int) -> float | None:
        """The time (s) frame `frame` starts: its timestamp, so that a variable frame rate (phones,
        screen recordings) is placed right; past the last frame, a frame's median duration on from it;
        frame / fps without timestamps; None when neither is known (a frame folder)."""
        if self.stamps is not None:
            last = len(self.stamps) - 1
            if frame <= last:
                return float(self.stamps[frame])
            step = float(np.median(np.diff(self.stamps))) if last > 0 else (1.0 / self.fps if self.fps else 0.0)
            return float(self.stamps[last] + (frame - last) * step)
        return frame / self.fps if self.fps else None

    def times(self) -> list[tuple[float, float]] | None:
        """(start, end) seconds of each snippet: from its first frame's time to the time of the frame
        after its window (time_at); None when unknown."""
        if self.time_at(0) is None:
            return None
        return [(self.time_at(s), self.time_at(s + self.window)) for s in self.starts]


def frame_times(timestamps: Sequence[float] | None, count: int) -> np.ndarray | None:
    """The first `count` frame times as an array, or None unless every one is known and each is later
    than the one before (a container without usable timestamps: times then come from the frame rate)."""
    if timestamps is None or len(timestamps) < count or count < 1:
        return None
    stamps = np.asarray(timestamps[:count], dtype=np.float64)
    if not np.isfinite(stamps).all() or (np.diff(stamps) <= 0).any():
        return None
    return stamps


class _Buffer:
    """The frames and flow images decoded so far and not yet dropped, with VideoFrames' interface."""

    def __init__(self):
        self.frames: dict[int, np.ndarray] = {}
        self.flows: dict[int, np.ndarray] = {}
        self.num_frames = 0  # frames read so far (the video's count once it ended)
        self.path = ""

    @property
    def num_flows(self) -> int:
        return max(self.num_frames - 1, 0)

    def rgb(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([self.frames[i] for i in indices])

    def flow(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([self.flows[i] for i in indices])

    def drop_before(self, index: int) -> None:
        for table in (self.frames, self.flows):
            for i in [i for i in table if i < index]:
                del table[i]


def snippet_plan(stride: int, mirror: bool) -> ViewPlan:
    return ViewPlan("snippets", crops="center", mirror=mirror, stride=stride)


def run_snippets(path: Path | str, engine: Engine, flow_cfg: FlowConfig, stride: int, *, mirror: bool = False,
                 batch: int = 16, on_frames: Callable[[int, int], None] | None = None,
                 thumbnails: int = 0, on_rows: Callable[[dict[str, np.ndarray]], None] | None = None) -> Snippets:
    """Every stream's outputs on the snippets of one video (a file or a frame folder), streamed.
    `mirror`: each snippet averaged with its mirror (flow: x inverted), as the feature protocol does.
    `on_frames(read, declared)` after each batch (a progress bar's hook). `thumbnails`: that many
    evenly spaced frames kept, 72 px high, for a picture (fusion.timeline). `on_rows({stream: pool5
    rows})` takes each batch's features as they come, which are then not kept (`pool5` is left empty:
    an hour of P3D-199 rows is 221 MB, the caller writes them out). FlowError naming the video
    when it cannot be read or is truncated (beyond flow.missing_frames_tolerance)."""
    windows = {s.clip_len for s in engine.streams}
    if len(windows) != 1:
        raise FusionError(f"the streams have different clip lengths ({sorted(windows)}): their snippets would not "
                          "cover the same frames")
    window = windows.pop()
    has_flow = any(s.name == "flow" for s in engine.streams)
    extra = 1 if has_flow else 0  # a flow window of W images reads W + 1 frames
    reader = open_reader(path, flow_cfg.size, flow_cfg.max_pixels)
    frames = reader.frames()
    buffer = _Buffer()
    buffer.path = shown(path)
    backend = make_backend(flow_cfg) if has_flow else None
    seconds = {"decode": 0.0, "flow": 0.0}  # and network_<stream>
    rows: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {s.name: [] for s in engine.streams}  # logits, pool5
    starts: list[int] = []
    ended = False
    next_start = 0
    flips = (False, True) if mirror else (False,)
    total = reader.declared_frames
    keep = {round(k * (total - 1) / max(thumbnails - 1, 1)) for k in range(thumbnails)} if total else set()
    kept: list[tuple[int, np.ndarray]] = []

    def read_until(count: int) -> None:
        nonlocal ended
        started = time.perf_counter()
        while not ended and buffer.num_frames < count:
            frame = next(frames, None)
            if frame is None:
                ended = True
                reader.check_complete(flow_cfg.missing_frames_tolerance)
                break
            if buffer.num_frames % stride < window + extra:  # in a snippet's frames: a stride past them skips
                buffer.frames[buffer.num_frames] = frame  # the rest (was: held to the next start, a whole video)
            if buffer.num_frames in keep:
                height = 72
                width = max(1, round(frame.shape[1] * height / frame.shape[0]))
                kept.append((buffer.num_frames, cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)))
            buffer.num_frames += 1
        seconds["decode"] += time.perf_counter() - started

    def compute_flow(needed: set[int]) -> None:
        started = time.perf_counter()
        todo = sorted(needed - set(buffer.flows))
        runs: list[list[int]] = []
        for i in todo:  # consecutive runs of at most batch_pairs pairs: one TV-L1 call each
            if runs and i == runs[-1][-1] + 1 and len(runs[-1]) < flow_cfg.batch_pairs:
                runs[-1].append(i)
            else:
                runs.append([i])
        for run in runs:
            gray = to_gray(np.stack([buffer.frames[i] for i in range(run[0], run[-1] + 2)]))
            for offset, image in enumerate(encode(backend.compute(gray), flow_cfg.bound)):
                buffer.flows[run[0] + offset] = image
        seconds["flow"] += time.perf_counter() - started

    def score(batch_starts: list[int], looped: bool) -> None:
        if has_flow:
            positions = buffer.num_flows
            compute_flow({(s + k) % positions if looped else s + k for s in batch_starts for k in range(window)})
        views = [View(s, "center", f) for s in batch_starts for f in flips]
        batch_rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for s in engine.streams:
            started = time.perf_counter()
            out = engine.run(s.name, buffer, [], views=[views])[0]
            per = len(flips)  # a snippet's rows: unmirrored then mirrored, averaged at once (memory)
            batch_rows[s.name] = (out.logits.reshape(-1, per, out.logits.shape[1]).mean(axis=1, dtype=np.float32),
                                  out.pool5.reshape(-1, per, out.pool5.shape[1]).mean(axis=1, dtype=np.float32))
            seconds[f"network_{s.name}"] = seconds.get(f"network_{s.name}", 0.0) + time.perf_counter() - started
        if on_rows:
            on_rows({name: pool5 for name, (_, pool5) in batch_rows.items()})
        for name, (logits, pool5) in batch_rows.items():
            rows[name].append((logits, np.empty((0, pool5.shape[1]), np.float32) if on_rows else pool5))
        starts.extend(batch_starts)

    while True:
        last = next_start + (batch - 1) * stride  # the batch's last snippet start
        read_until(last + window + extra)
        if ended:  # the last start whose window the video holds
            last = min(last, buffer.num_frames - extra - window)
        wanted = list(range(next_start, last + 1, stride))
        if not wanted:
            break
        score(wanted, looped=False)
        next_start = wanted[-1] + stride
        buffer.drop_before(next_start)
        if on_frames:
            on_frames(buffer.num_frames, reader.declared_frames)
    padded = not starts
    if padded:
        if buffer.num_frames - extra < 1:
            raise FlowError(f"{shown(path)}: only one frame, flow needs at least two")
        score([0], looped=True)  # every frame is still in the buffer: nothing was dropped
    if on_frames:
        on_frames(buffer.num_frames, buffer.num_frames)
    logits, pool5 = {}, {}
    for name in list(rows):
        parts = rows.pop(name)  # each batch's rows freed as the stream's are joined
        logits[name] = np.concatenate([p[0] for p in parts])
        pool5[name] = np.concatenate([p[1] for p in parts])
        del parts
    return Snippets(buffer.num_frames, reader.fps, window, stride, starts, padded, logits, pool5, seconds, kept,
                    frame_times(reader.timestamps, buffer.num_frames))
