"""Any video file (or frame folder) as the streams see a stored one, with TV-L1 flow computed on the fly.

`predict` and `features` run on users' own videos, which are in no frame + flow store. A video is
decoded with the flow package's reader, keeping just the frames the views read (placed for the frame
count the container declares, or counted first when it declares none). TV-L1 (the flow package's backend, every
`[flow]` setting) then runs only on the frame pairs behind the flow views' images — 160 pairs for
10 clips of 16, however long the video — and its output is encoded to uint8 exactly as the flow stage
stores it. The result answers `rgb(indices)` / `flow(indices)` like the store's VideoFrames, so the
evaluation's StreamRunner scores it unchanged.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from flow.config import FlowConfig
from flow.encoding import encode
from flow.errors import FlowError
from flow.stage import make_backend
from flow.tvl1 import to_gray
from fusion.inputs import open_reader
from fusion.views import View
from streams.clips import window

ViewsFor = Callable[[str, int], Sequence[View]]  # (modality, positions) -> the views to score


class DecodedVideo:
    """The decoded frames and encoded flow a set of views needs, with the store's VideoFrames reading
    interface (uint8 BGR [T, H, W, 3]; uint8 flow [T, H, W, 2], x then y, 128 = still)."""

    def __init__(self, path: Path, num_frames: int, frames: dict[int, np.ndarray], flows: dict[int, np.ndarray]):
        self.path = path
        self.num_frames = num_frames
        self.num_flows = max(num_frames - 1, 0)
        self._frames = frames
        self._flows = flows
        first = next(iter(frames.values()))
        self.height, self.width = first.shape[:2]

    def rgb(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([self._get(self._frames, i, "frame") for i in indices])

    def flow(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([self._get(self._flows, i, "flow") for i in indices])

    def _get(self, images: dict[int, np.ndarray], index: int, what: str) -> np.ndarray:
        if index not in images:
            raise FlowError(f"{self.path}: {what} {index} was not decoded (only those of the planned views are)")
        return images[index]

    def close(self) -> None:
        self._frames.clear()
        self._flows.clear()

    def __enter__(self) -> DecodedVideo:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def count_frames(path: Path, size: str, max_pixels: int = 0) -> int:
    reader = open_reader(path, size, max_pixels)
    return sum(1 for _ in reader.frames())


def positions(views: Iterable[View], clip_len: int, length: int) -> set[int]:
    """Images (frames or flow images) the views read, looping over a video shorter than a clip."""
    return {i for v in views for i in window(v.start, clip_len, length)}


def _runs(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive runs [first, last] of sorted indices."""
    runs: list[tuple[int, int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def decode_for_views(path: Path | str, flow_cfg: FlowConfig, clip_lens: dict[str, int], views_for: ViewsFor,
                     on_flow: Callable[[int, int], None] | None = None) -> tuple[DecodedVideo, dict[str, list[View]]]:
    """Decode `path` (a video file or a frame folder, fusion.inputs) at `flow_cfg.size` for the
    streams in `clip_lens` ({"rgb": 16, "flow": 16}) and compute the flow their views need.
    Returns the video and each stream's views.

    The views are placed for the frame count the container declares; when the decoder finds another
    count (containers estimating it from the duration are often a frame off), the video is decoded
    again for the views of the true count. FlowError naming the file when it cannot be decoded, is
    truncated (beyond `flow_cfg.missing_frames_tolerance`), or has a single frame and a flow stream is
    asked for. `on_flow(pairs done, pairs needed)` is called before the flow and after each run of
    pairs (a progress bar's hook: TV-L1 is most of the time on a long video).
    """
    path = Path(path)
    # flow_cfg.max_pixels: a frame folder of 8000x8000 images or a 4K video is refused in one line, as the
    # flow stage and the snippet path refuse it, instead of running TV-L1 at full size for minutes
    reader = open_reader(path, flow_cfg.size, flow_cfg.max_pixels)
    num_frames = reader.declared_frames or count_frames(path, flow_cfg.size, flow_cfg.max_pixels)
    while True:
        views, needed_frames, needed_flows = _plan(path, num_frames, clip_lens, views_for)
        frames = {i: frame for i, frame in enumerate(reader.frames()) if i in needed_frames}
        reader.check_complete(flow_cfg.missing_frames_tolerance)
        if reader.frames_read == num_frames:
            break
        num_frames = reader.frames_read
        reader = open_reader(path, flow_cfg.size, flow_cfg.max_pixels)

    flows: dict[int, np.ndarray] = {}
    if needed_flows:
        backend = make_backend(flow_cfg)
        if on_flow:
            on_flow(0, len(needed_flows))
        for first, last in _runs(needed_flows):
            gray = to_gray(np.stack([frames[i] for i in range(first, last + 2)]))
            for offset, field in enumerate(encode(backend.compute(gray), flow_cfg.bound)):
                flows[first + offset] = field
            if on_flow:
                on_flow(len(flows), len(needed_flows))
    return DecodedVideo(path, num_frames, frames, flows), views


def _plan(path: Path, num_frames: int, clip_lens: dict[str, int],
          views_for: ViewsFor) -> tuple[dict[str, list[View]], set[int], set[int]]:
    """Each stream's views for a video of `num_frames`, and the frames and flow images they read."""
    if num_frames == 0:
        raise FlowError(f"{path}: no frame could be decoded")
    if "flow" in clip_lens and num_frames < 2:
        raise FlowError(f"{path}: only one frame, flow needs at least two")
    views: dict[str, list[View]] = {}
    needed_frames: set[int] = set()
    needed_flows: set[int] = set()
    for modality, clip_len in clip_lens.items():
        length = num_frames if modality == "rgb" else num_frames - 1
        views[modality] = list(views_for(modality, length))
        used = positions(views[modality], clip_len, length)
        if modality == "rgb":
            needed_frames |= used
        else:
            needed_flows |= used
            needed_frames |= used | {i + 1 for i in used}
    return views, needed_frames, needed_flows
