"""TV-L1 optical flow with OpenCV's CPU `DualTVL1OpticalFlow`, every parameter from `[flow]`."""
from __future__ import annotations

import cv2
import numpy as np

from flow.config import FlowConfig
from flow.errors import FlowError


def create_tvl1(cfg: FlowConfig) -> cv2.optflow.DualTVL1OpticalFlow:
    """OpenCV's solver with the `[flow]` parameters (positional: the binding misspells one name)."""
    return cv2.optflow.DualTVL1OpticalFlow_create(
        cfg.tau, cfg.lambda_, cfg.theta, cfg.nscales, cfg.warps, cfg.epsilon, cfg.inner_iterations,
        cfg.outer_iterations, cfg.scale_step, cfg.gamma, cfg.median_filtering, cfg.use_initial_flow)


MIN_SIDE = 2  # the smallest frame side every backend takes (OpenCV's pyramid fails on 1 px)


def check_grey_frames(frames_gray: np.ndarray) -> np.ndarray:
    """The input every TV-L1 backend takes, uint8 [N, H, W] grey frames; FlowError otherwise."""
    if not isinstance(frames_gray, np.ndarray) or frames_gray.dtype != np.uint8 or frames_gray.ndim != 3:
        got = (f"{frames_gray.dtype} array of shape {list(frames_gray.shape)}"
               if isinstance(frames_gray, np.ndarray) else type(frames_gray).__name__)
        raise FlowError(f"TV-L1 input must be uint8 [N, H, W] grey frames, got {got}")
    if min(frames_gray.shape[1:]) < MIN_SIDE:  # OpenCV's own limit, met with an assertion naming no file
        raise FlowError(f"frames of {frames_gray.shape[2]}x{frames_gray.shape[1]} px are too small for TV-L1 "
                        f"(at least {MIN_SIDE}x{MIN_SIDE} px)")
    return frames_gray


class OpenCVTVL1:
    """`compute(frames_gray [N, H, W] uint8) -> [N-1, H, W, 2] float32`, flow `i` from frame `i` to
    `i + 1` in px, x then y. With `use_initial_flow` each pair starts from the previous pair's flow
    (the first pair of each call from zero)."""

    def __init__(self, cfg: FlowConfig):
        self.cfg = cfg
        self._tvl1 = create_tvl1(cfg)

    def compute(self, frames_gray: np.ndarray) -> np.ndarray:
        frames_gray = check_grey_frames(frames_gray)
        n, h, w = frames_gray.shape
        # OpenCV lowers its own scale count for good after an image too small for the pyramid, so
        # a small video would quietly coarsen every later one that this solver computes.
        self._tvl1.setScalesNumber(self.cfg.nscales)
        out = np.zeros((max(n - 1, 0), h, w, 2), np.float32)
        for i in range(n - 1):
            # OpenCV reads the initial flow from (and writes the result into) the array passed.
            init = (out[i - 1] if i > 0 else out[0]).copy() if self.cfg.use_initial_flow else None
            out[i] = self._tvl1.calc(frames_gray[i], frames_gray[i + 1], init)
        return out


def to_gray(frames_bgr: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] BGR -> uint8 [N, H, W] grey (OpenCV's BT.601 weights)."""
    return np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames_bgr])
