"""Test-time views of a video: which clips (start, crop position, mirror) a stream scores.

A video offers `length` positions to a stream: its N frames for RGB, its N - 1 flow images for flow.
A `ViewPlan` says which views are taken from them; every network output (eval, transfer, `features`,
`predict`) is described by one, and its fields are part of the output cache's key (fusion.engine):

* `mode = "uniform"`: `clips` clip starts, the ones the streams validate with
  (`streams.clips.clip_starts`: evenly spaced from the first to the last full window, the centre
  window when K = 1), each at the crop positions of `crops`, each also mirrored when `mirror`;
* `mode = "snippets"`: a clip every `stride` positions from 0 while a whole clip fits (the features
  over time of `features --stride`); the tail shorter than a stride is not covered.

A video shorter than one clip is read by looping over it (`streams.clips.window`), so every view has
exactly clip_len images and no video is dropped; in a short video several of the K clips can start at
the same frame: they are computed once and still count K times in the averages.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from streams.clips import clip_starts

CROP_POSITIONS = {"center": ("center",), "three": ("start", "center", "end")}
MODES = ("uniform", "snippets")


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

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"view plan mode must be one of {MODES}, got {self.mode!r}")
        if self.crops not in CROP_POSITIONS:
            raise ValueError(f"crops must be one of {tuple(CROP_POSITIONS)}, got {self.crops!r}")
        if self.mode == "uniform" and self.clips < 1:
            raise ValueError(f"clips must be >= 1, got {self.clips}")
        if self.mode == "snippets" and self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")

    def starts(self, length: int, clip_len: int) -> list[int]:
        if self.mode == "snippets":
            return snippet_starts(length, clip_len, self.stride)
        return clip_starts(length, clip_len, self.clips)

    def views(self, length: int, clip_len: int) -> list[View]:
        """The views of a video offering `length` positions to a stream of `clip_len`, in a fixed
        order: by start, then crop position, then unmirrored before mirrored."""
        flips = (False, True) if self.mirror else (False,)
        return [View(s, c, f) for s in self.starts(length, clip_len) for c in CROP_POSITIONS[self.crops] for f in flips]

    def key(self) -> dict:
        """What decides the views: part of the output cache's key."""
        return dataclasses.asdict(self)


def snippet_starts(length: int, window: int, stride: int) -> list[int]:
    """Starts 0, stride, 2 stride, ... of the windows that fit in `length` positions; one window at 0
    (looped, as every reader loops a short video) when not even one fits."""
    return list(range(0, max(length - window, 0) + 1, stride))


def score_plan(clips: int, crops: str) -> ViewPlan:
    """The video-level testing views: `clips` clips x the crop positions of `crops`, not mirrored."""
    return ViewPlan("uniform", clips, crops, False)


def feature_plan(clips: int) -> ViewPlan:
    """The feature protocol's views: `clips` centre-crop clips, each with its mirror."""
    return ViewPlan("uniform", clips, "center", True)


def score_views(length: int, clip_len: int, clips: int, crops: str) -> list[View]:
    return score_plan(clips, crops).views(length, clip_len)


def feature_views(length: int, clip_len: int, clips: int) -> list[View]:
    return feature_plan(clips).views(length, clip_len)
