"""Test-time views of a video: which clips (start, crop position, mirror) a stream scores.

A video offers `length` positions to a stream: its N frames for RGB, its N - 1 flow images for flow.
A `ViewPlan` says which views are taken from them; every network output (eval, transfer, `features`,
`predict`) is described by one, and its fields are part of the output cache's key (fusion.engine):

* `mode = "uniform"`: `clips` clip starts, the ones the streams validate with
  (`streams.clips.clip_starts`: evenly spaced from the first to the last full window, the centre
  window when K = 1), each at the crop positions of `crops`, each also mirrored when `mirror`;
* `mode = "snippets"`: a clip every `stride` positions from 0 while a whole clip fits (the features
  over time of `features --stride`); the tail shorter than a stride is not covered;
* `mode = "random"`: `clips` clip starts drawn uniformly (with replacement) from the full windows, by
  a generator seeded with (`seed`, the video id): the paper's Sports-1M testing ("20 randomly sampled
  clips per video"), the same clips on every re-run and on any machine.

A video shorter than one clip is read by looping over it (`streams.clips.window`), so every view has
exactly clip_len images and no video is dropped; in a short video several of the K clips can start at
the same frame: they are computed once and still count K times in the averages.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np

from streams.clips import clip_starts

CROP_POSITIONS = {"center": ("center",), "three": ("start", "center", "end")}
MODES = ("uniform", "snippets", "random")


@dataclass(frozen=True, order=True)
class View:
    start: int  # first frame (RGB) or flow image (flow) of the clip
    crop: str  # "center", or "start"/"end" along the longer side (the 3-crop views)
    flip: bool  # mirrored left-right (flow: x inverted)


@dataclass(frozen=True)
class ViewPlan:
    """Which views of a video a stream scores (see the module doc)."""
    mode: str = "uniform"  # "uniform" (evenly spaced clips) or "snippets" (one clip every `stride`)
    clips: int = 1  # uniform: how many clips
    crops: str = "center"  # "center" or "three" (start, centre, end along the longer side)
    mirror: bool = False  # each view also taken mirrored (flow: x inverted)
    stride: int = 0  # snippets: positions between clip starts
    seed: int = 0  # random: with the video id, seeds the clip starts

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"view plan mode must be one of {MODES}, got {self.mode!r}")
        if self.crops not in CROP_POSITIONS:
            raise ValueError(f"crops must be one of {tuple(CROP_POSITIONS)}, got {self.crops!r}")
        if self.mode in ("uniform", "random") and self.clips < 1:
            raise ValueError(f"clips must be >= 1, got {self.clips}")
        if self.mode == "snippets" and self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")

    def starts(self, length: int, clip_len: int, video: str = "") -> list[int]:
        if self.mode == "snippets":
            return snippet_starts(length, clip_len, self.stride)
        if self.mode == "random":
            return random_starts(length, clip_len, self.clips, self.seed, video)
        return clip_starts(length, clip_len, self.clips)

    def views(self, length: int, clip_len: int, video: str = "") -> list[View]:
        """The views of a video offering `length` positions to a stream of `clip_len`, in a fixed
        order: by start, then crop position, then unmirrored before mirrored. `video`: its id, which
        seeds the random plan's starts."""
        flips = (False, True) if self.mirror else (False,)
        return [View(s, c, f) for s in self.starts(length, clip_len, video)
                for c in CROP_POSITIONS[self.crops] for f in flips]

    def key(self) -> dict:
        """What decides the views: part of the output cache's key (without `seed` where it plays no
        part, so the caches of the other plans stay valid)."""
        key = dataclasses.asdict(self)
        if self.mode != "random":
            del key["seed"]
        return key


def snippet_starts(length: int, window: int, stride: int) -> list[int]:
    """Starts 0, stride, 2 stride, ... of the windows that fit in `length` positions; one window at 0
    (looped, as every reader loops a short video) when not even one fits."""
    return list(range(0, max(length - window, 0) + 1, stride))


def random_starts(length: int, clip_len: int, clips: int, seed: int, video: str) -> list[int]:
    """`clips` starts drawn uniformly, with replacement, from [0, length - clip_len] (0 for a video
    shorter than a clip), sorted; the generator is seeded with `seed` and a SHA-256 of the video id,
    so the draw does not depend on the order videos are scored in, nor on Python's hash seed."""
    key = int.from_bytes(hashlib.sha256(video.encode("utf-8")).digest()[:8], "little")
    rng = np.random.default_rng([seed, key])
    return sorted(int(s) for s in rng.integers(0, max(length - clip_len, 0) + 1, size=clips))


def score_plan(clips: int, crops: str, sampling: str = "uniform", seed: int = 0) -> ViewPlan:
    """The video-level testing views: `clips` clips (evenly spaced, or `sampling = "random"`) x the crop
    positions of `crops`, not mirrored."""
    if sampling == "random":
        return ViewPlan("random", clips, crops, False, seed=seed)
    return ViewPlan("uniform", clips, crops, False)


def feature_plan(clips: int) -> ViewPlan:
    """The feature protocol's views: `clips` centre-crop clips, each with its mirror."""
    return ViewPlan("uniform", clips, "center", True)


def score_views(length: int, clip_len: int, clips: int, crops: str) -> list[View]:
    return score_plan(clips, crops).views(length, clip_len)


def feature_views(length: int, clip_len: int, clips: int) -> list[View]:
    return feature_plan(clips).views(length, clip_len)
