"""Fast CPU TV-L1 (`flow.backend = "fast"`): OpenCV's DualTVL1 with its inner loop fused.

The algorithm, parameters and discretisation are OpenCV's `OpticalFlowDual_TVL1`: the image
operators that run a few times per scale are OpenCV's own calls (cv::resize for the pyramid and the
flow, cv::remap INTER_CUBIC for the warps, cv::medianBlur), and the primal-dual iterations, where
OpenCV spends its time, run in `flow.tvl1_fast_kernels` as one fused sweep per iteration with
OpenCV's epsilon test after every iteration. Same iterations, same answer up to float rounding
(see flow.tvl1_fast_kernels and docs/tvl1-torch.md, "The fast CPU backend").
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from flow.config import FlowConfig
from flow.errors import FlowError
from flow.tvl1 import MIN_SIDE, check_grey_frames, create_tvl1
from flow.tvl1_fast_kernels import inner_iterations, inner_iterations_gamma


def centred_gradient(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's centeredGradient: half the central difference; at the borders half the one-sided
    difference, which is the central difference of the border-replicated image."""
    padded = cv2.copyMakeBorder(image, 1, 1, 1, 1, cv2.BORDER_REPLICATE)
    dx = np.float32(0.5) * (padded[1:-1, 2:] - padded[1:-1, :-2])
    dy = np.float32(0.5) * (padded[2:, 1:-1] - padded[:-2, 1:-1])
    return dx, dy


def pyramid(i0: np.ndarray, i1: np.ndarray, nscales: int, step: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """OpenCV's image pyramid, finest first: cv::resize INTER_LINEAR by `step`, stopped before a
    side falls below 16 px."""
    levels = [(i0, i1)]
    for _ in range(1, nscales):
        a, b = (cv2.resize(x, None, fx=step, fy=step, interpolation=cv2.INTER_LINEAR) for x in levels[-1])
        if a.shape[0] < 16 or a.shape[1] < 16:
            break
        levels.append((a, b))
    return levels


class FastTVL1:
    """`compute(frames_gray [N, H, W] uint8) -> [N-1, H, W, 2] float32`, flow `i` from frame `i` to
    `i + 1` in px, x then y; `compute_pair(i0, i1, init_flow)` for one pair. With
    `use_initial_flow` each pair of `compute` starts from the previous pair's flow (the first pair
    of each call from zero), as the OpenCV backend does."""

    def __init__(self, cfg: FlowConfig):
        if cfg.median_filtering > 1 and cfg.median_filtering not in (3, 5):
            raise FlowError(f"flow.median_filtering: OpenCV filters float flow with 3 or 5 (or <= 1 "
                            f"for none), got {cfg.median_filtering}")
        for key in ("nscales", "warps", "inner_iterations", "outer_iterations"):
            if getattr(cfg, key) < 1:
                raise FlowError(f"flow.{key}: must be >= 1, got {getattr(cfg, key)}")
        self.cfg = cfg
        # l_t = lambda * theta, theta, taut = tau / theta, cast to float as OpenCV does.
        self._params = (np.float32(cfg.lambda_ * cfg.theta), np.float32(cfg.theta), np.float32(cfg.tau / cfg.theta))
        self._gamma = np.float32(cfg.gamma)
        self.iterations: list[int] = []  # primal-dual steps per scale of the last pair, coarsest first

    def compute(self, frames_gray: np.ndarray) -> np.ndarray:
        """All consecutive pairs of one video: uint8 `[N, H, W]` -> float32 `[N-1, H, W, 2]`."""
        check_grey_frames(frames_gray)
        n, h, w = frames_gray.shape
        out = np.zeros((max(n - 1, 0), h, w, 2), np.float32)
        for i in range(n - 1):
            init = out[i - 1] if i > 0 and self.cfg.use_initial_flow else None
            out[i] = self.compute_pair(frames_gray[i], frames_gray[i + 1], init)
        return out

    def compute_pair(self, i0: np.ndarray, i1: np.ndarray, init_flow: np.ndarray | None = None) -> np.ndarray:
        """Flow from grey image i0 to i1 ([H, W], uint8 levels or float 0-255) -> float32 [H, W, 2].
        `init_flow` [H, W, 2] is OpenCV's useInitialFlow: it seeds the coarsest scale."""
        i0, i1 = np.asarray(i0), np.asarray(i1)
        if i0.ndim != 2 or i0.shape != i1.shape:
            raise FlowError(f"TV-L1 pair: expected two [H, W] images of one size, got "
                            f"{list(i0.shape)} and {list(i1.shape)}")
        if min(i0.shape) < MIN_SIDE:
            raise FlowError(f"TV-L1 pair: frames of {i0.shape[1]}x{i0.shape[0]} px are too small "
                            f"(at least {MIN_SIDE}x{MIN_SIDE} px)")
        if not (np.isfinite(i0).all() and np.isfinite(i1).all()):  # one NaN pixel made every vector NaN
            raise FlowError("TV-L1 pair: the images hold NaN or inf; grey levels are 0-255")
        if init_flow is not None:  # checked before the 2-px route below too, which ignored it
            init_flow = np.asarray(init_flow, np.float32)
            if init_flow.shape != (*i0.shape, 2):
                raise FlowError(f"TV-L1 pair: init_flow must be [H, W, 2] = {[*i0.shape, 2]}, "
                                f"got {list(init_flow.shape)}")
        if min(i0.shape) < 3:  # the fused kernel's stencils need 3 px; OpenCV's own loop takes 2 (8-bit only)
            tvl1 = create_tvl1(dataclasses.replace(self.cfg, use_initial_flow=init_flow is not None))
            grey = [np.clip(np.rint(i), 0, 255).astype(np.uint8) for i in (i0, i1)]  # not truncated, nor wrapped
            return tvl1.calc(*grey, None if init_flow is None else np.ascontiguousarray(init_flow))
        cfg = self.cfg
        levels = pyramid(i0.astype(np.float32), i1.astype(np.float32), cfg.nscales, cfg.scale_step)
        k = 3 if cfg.gamma != 0 else 2
        u = np.zeros((k, *levels[-1][0].shape), np.float32)
        if init_flow is not None:
            seed = [np.ascontiguousarray(init_flow[..., c], dtype=np.float32) for c in range(2)]
            for _ in levels[1:]:  # resized with fx = fy = scale_step and scaled, level by level
                seed = [cv2.resize(x, None, fx=cfg.scale_step, fy=cfg.scale_step,
                                   interpolation=cv2.INTER_LINEAR) * np.float32(cfg.scale_step) for x in seed]
            u[0], u[1] = seed
        self.iterations = []
        up = np.float32(1.0 / cfg.scale_step)
        for s in range(len(levels) - 1, -1, -1):
            self.iterations.append(self._solve_scale(*levels[s], u))
            if s > 0:
                h, w = levels[s - 1][0].shape
                u = np.stack([cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR) for x in u])
                u[:2] *= up  # u3 is not a displacement and keeps its scale
        return np.ascontiguousarray(np.moveaxis(u[:2], 0, -1))

    def _solve_scale(self, i0: np.ndarray, i1: np.ndarray, u: np.ndarray) -> int:
        """OpenCV's procOneScale on u [K, H, W] in place; returns the primal-dual steps taken."""
        cfg = self.cfg
        h, w = i0.shape
        eps = float(np.float32(cfg.epsilon * cfg.epsilon * h * w))
        to_warp = cv2.merge([i1, *centred_gradient(i1)])
        grid_x = np.arange(w, dtype=np.float32)[None, :]
        grid_y = np.arange(h, dtype=np.float32)[:, None]
        p = np.zeros((u.shape[0], 2, h, w), np.float32)
        steps = 0
        for _ in range(cfg.warps):
            warped = cv2.remap(to_warp, grid_x + u[0], grid_y + u[1], cv2.INTER_CUBIC)
            i1w, gx, gy = (np.ascontiguousarray(warped[..., c]) for c in range(3))
            grad = gx * gx + gy * gy
            rho_c = i1w - gx * u[0] - gy * u[1] - i0
            error = np.inf
            for _ in range(cfg.outer_iterations):
                if not error > eps:
                    break
                if cfg.median_filtering > 1:
                    for c in range(2):  # not u3, as OpenCV
                        cv2.medianBlur(u[c], cfg.median_filtering, dst=u[c])
                if len(u) == 2:
                    n, error = inner_iterations(gx, gy, grad, rho_c, u[0], u[1], p[0, 0], p[0, 1], p[1, 0],
                                                p[1, 1], *self._params, eps, cfg.inner_iterations)
                else:
                    n, error = inner_iterations_gamma(gx, gy, grad, rho_c, *u, *p.reshape(6, h, w),
                                                      *self._params, self._gamma, eps, cfg.inner_iterations)
                steps += n
        return steps
