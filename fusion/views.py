"""Test-time views of a video: evenly spaced clips x crop positions x mirror.

A video offers `length` positions to a stream: its N frames for RGB, its N - 1 flow images for flow.
The K clip starts are the ones the streams validate with (`streams.clips.clip_starts`: evenly spaced
from the first to the last full window, the centre window when K = 1), and a video shorter than one
clip is read by looping over it (`streams.clips.window`), so every view has exactly clip_len frames
and no video is dropped. In a short video several of the K clips can start at the same frame; they
are computed once and still count K times in the averages.
"""
from __future__ import annotations

from dataclasses import dataclass

from streams.clips import clip_starts

CROP_POSITIONS = {"center": ("center",), "three": ("start", "center", "end")}


@dataclass(frozen=True, order=True)
class View:
    start: int  # first frame (RGB) or flow image (flow) of the clip
    crop: str  # "center", or "start"/"end" along the longer side (the 3-crop views)
    flip: bool  # mirrored left-right (flow: x inverted)


def score_views(length: int, clip_len: int, clips: int, crops: str) -> list[View]:
    """The video-level testing views: `clips` clips x the crop positions of `crops`, not mirrored."""
    return [View(s, c, False) for s in clip_starts(length, clip_len, clips) for c in CROP_POSITIONS[crops]]


def feature_views(length: int, clip_len: int, clips: int) -> list[View]:
    """The feature protocol's views: `clips` centre-crop clips, each with its mirror."""
    return [View(s, "center", f) for s in clip_starts(length, clip_len, clips) for f in (False, True)]
