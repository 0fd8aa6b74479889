"""Batched TV-L1 optical flow in PyTorch: OpenCV's CPU DualTVL1, many frame pairs at once, any device.

The algorithm is OpenCV's `OpticalFlowDual_TVL1` (Zach et al. 2007, Wedel et al. 2009, Sanchez et al.
IPOL 2013) with the same parameters and meanings: an INTER_LINEAR pyramid by `scale_step` down to
16 px, `warps` bicubic re-warpings of I1 and its gradient per scale, `outer_iterations` x
`inner_iterations` primal-dual steps with a median filter before each outer iteration, and the
epsilon rule evaluated for every pair on its own. A pair whose update has converged stops changing
and leaves the batch, so its flow does not depend on the pairs it was batched with.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from flow.config import FlowConfig
from flow.errors import FlowError
from flow.tvl1 import check_grey_frames
from flow.tvl1_torch_ops import (
    centred_gradient,
    divergence,
    flow_levels,
    forward_gradient,
    median_blur,
    resize_linear,
    scaled_epsilon,
    warp_cubic,
)
from p3dbase.device import resolve_device


@dataclass(frozen=True)
class _Solver:
    """The TV-L1 parameters a solve needs, as plain floats (what OpenCV casts them to)."""

    l_t: float  # lambda * theta
    theta: float
    taut: float  # tau / theta
    gamma: float
    epsilon: float
    warps: int
    outer: int
    inner: int
    median: int
    nscales: int
    scale_step: float

    @classmethod
    def from_config(cls, cfg: FlowConfig) -> _Solver:
        def f32(x: float) -> float:  # OpenCV casts these to float before iterating
            return float(np.float32(x))

        return cls(
            l_t=f32(cfg.lambda_ * cfg.theta), theta=f32(cfg.theta), taut=f32(cfg.tau / cfg.theta),
            gamma=f32(cfg.gamma), epsilon=cfg.epsilon, warps=cfg.warps, outer=cfg.outer_iterations,
            inner=cfg.inner_iterations, median=cfg.median_filtering, nscales=cfg.nscales,
            scale_step=cfg.scale_step,
        )


def primal_dual_step(
    u: torch.Tensor, px: torch.Tensor, py: torch.Tensor, gw: torch.Tensor, grad: torch.Tensor,
    rho_c: torch.Tensor, active: torch.Tensor | None, l_t: float, theta: float, taut: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One inner iteration for a batch: thresholding (estimateV), primal update (estimateU) and dual
    update (estimateDualVariables).

    u, px, py, gw: [B, K, H, W] with K = 2 flow components (3 with gamma); gw holds I1wx, I1wy (and a
    plane of gamma), grad = |grad I1w|^2 and rho_c: [B, H, W]. Returns the new u, px, py and each
    pair's summed squared change of u (float64 [B]). Pairs with `active` False keep their state.
    """
    # In-place on fresh temporaries (fewer passes over memory in eager mode); every sum keeps
    # OpenCV's operands, so the rounding is OpenCV's.
    rho = gw[:, 0] * u[:, 0]
    rho += gw[:, 1] * u[:, 1]
    rho += rho_c
    if u.shape[1] == 3:
        rho += gw[:, 2] * u[:, 2]
    # OpenCV's three cases (rho < -l_t |g|^2, rho > l_t |g|^2, else -rho / |g|^2) are this clamp;
    # OpenCV skips the last case where |g|^2 <= FLT_EPSILON, where the whole step is < l_t * 3.5e-4 px.
    fi = rho.neg_().div_(grad.clamp_min(1e-30)).clamp_(-l_t, l_t)
    v = gw * fi[:, None]
    v += u
    u_new = divergence(px, py).mul_(theta).add_(v)
    error = v.copy_(u_new).sub_(u).square_().sum(dim=(1, 2, 3), dtype=torch.float64)
    ux, uy = forward_gradient(u_new)
    norm = torch.hypot(ux, uy).mul_(taut).add_(1.0)
    px_new = ux.mul_(taut).add_(px).div_(norm)
    py_new = uy.mul_(taut).add_(py).div_(norm)
    if active is not None:
        keep = active[:, None, None, None]
        u_new = torch.where(keep, u_new, u)
        px_new = torch.where(keep, px_new, px)
        py_new = torch.where(keep, py_new, py)
    return u_new, px_new, py_new, error


def masked_median(u: torch.Tensor, ksize: int, active: torch.Tensor | None) -> torch.Tensor:
    """Median-filter the flow components (not u3, as OpenCV) of the active pairs."""
    filtered = torch.cat((median_blur(u[:, :2], ksize), u[:, 2:]), dim=1)
    if active is None:
        return filtered
    return torch.where(active[:, None, None, None], filtered, u)


def warp_terms(
    to_warp: torch.Tensor, u: torch.Tensor, i0: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV's warp and calcGradRho for a batch: I1 and its gradient warped by the flow
    (to_warp [B, 3, H, W] = I1, I1x, I1y; u [B, K, H, W]) -> gw [B, K, H, W] (I1wx, I1wy, and a plane
    of gamma when K = 3), grad = |grad I1w|^2 and rho_c = I1w - grad I1w . u - I0, both [B, H, W]."""
    i1w, i1wx, i1wy = warp_cubic(to_warp, u[:, 0], u[:, 1]).unbind(dim=1)
    planes = [i1wx, i1wy] + ([torch.full_like(i1wx, gamma)] if u.shape[1] == 3 else [])
    return (torch.stack(planes, dim=1), i1wx * i1wx + i1wy * i1wy,
            i1w - i1wx * u[:, 0] - i1wy * u[:, 1] - i0)


StepFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
MedianFn = Callable[[torch.Tensor, int, torch.Tensor | None], torch.Tensor]
WarpFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class _Batch:
    """The pairs of one warp that still iterate, with their state; converged pairs leave it."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.rows = torch.arange(tensors["u"].shape[0], device=tensors["u"].device)
        self.t = tensors

    def retire(self, done: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        """Write the state of the `done` pairs into `out` and drop them from the batch."""
        rows = self.rows[done]
        for name in ("u", "px", "py"):
            out[name].index_copy_(0, rows, self.t[name][done])
        keep = ~done
        self.rows = self.rows[keep]
        self.t = {name: x[keep] for name, x in self.t.items()}

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def _solve_warp(
    state: dict[str, torch.Tensor], fixed: dict[str, torch.Tensor], p: _Solver, eps: float,
    check_every: int, step: StepFn, median: MedianFn, masked: bool,
) -> None:
    """OpenCV's outer / inner loops of one warp, stopping each pair at its own epsilon test."""
    batch = _Batch({**state, **fixed})

    def all_active() -> torch.Tensor | None:  # None: skip the masking, nothing to freeze
        return torch.ones(len(batch), dtype=torch.bool, device=batch.rows.device) if masked else None

    active = all_active()
    n = 0
    for _ in range(p.outer):
        if p.median > 1:
            batch.t["u"] = median(batch.t["u"], p.median, active)
        for _ in range(p.inner):
            t = batch.t
            t["u"], t["px"], t["py"], error = step(
                t["u"], t["px"], t["py"], t["gw"], t["grad"], t["rho_c"], active, p.l_t, p.theta, p.taut
            )
            still = error > eps
            active = still if active is None else active & still
            n += 1
            if n % check_every == 0:
                done = ~active
                if bool(done.any()):
                    batch.retire(done, state)
                    if len(batch) == 0:
                        return
                active = all_active()
    batch.retire(torch.ones(len(batch), dtype=torch.bool, device=batch.rows.device), state)


def _solve_scale(
    i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor, p: _Solver, check_every: int,
    step: StepFn, median: MedianFn, warp: WarpFn, masked: bool,
) -> torch.Tensor:
    """OpenCV's procOneScale for a batch: `warps` re-linearisations around the current flow."""
    h, w = u.shape[-2:]
    i1x, i1y = centred_gradient(i1)
    to_warp = torch.stack((i1, i1x, i1y), dim=1)
    state = {"u": u.contiguous(), "px": torch.zeros_like(u), "py": torch.zeros_like(u)}
    eps = scaled_epsilon(p.epsilon, h, w)
    for _ in range(p.warps):
        gw, grad, rho_c = warp(to_warp, state["u"], i0, p.gamma)
        fixed = {"gw": gw, "grad": grad, "rho_c": rho_c}
        _solve_warp(state, fixed, p, eps, check_every, step, median, masked)
    return state["u"]


def tvl1_flow(
    i0: torch.Tensor, i1: torch.Tensor, cfg: FlowConfig, *, init_flow: torch.Tensor | None = None,
    check_every: int = 1, step: StepFn = primal_dual_step, median: MedianFn = masked_median,
    warp: WarpFn = warp_terms, masked: bool = False,
) -> torch.Tensor:
    """TV-L1 flow from i0 to i1 for a batch of pairs: [B, H, W] grey levels 0-255 -> [B, 2, H, W].

    `init_flow` [B, 2, H, W] plays OpenCV's useInitialFlow (it seeds the coarsest scale).
    `check_every` is how many iterations run between host-side convergence checks: 1 drops a
    converged pair at once (best on CPU); more avoids a device sync per iteration and freezes
    converged pairs with a mask until the next check, which gives the same flow. `masked` passes
    the mask even when every pair is active (compiled kernels then need one graph, not two).
    """
    p = _Solver.from_config(cfg)
    i0 = i0.to(torch.float32)
    i1 = i1.to(torch.float32)
    b, h, w = i0.shape
    sizes = flow_levels(h, w, p.nscales, p.scale_step)
    pyramid = [(i0, i1)]
    for size in sizes[1:]:
        prev0, prev1 = pyramid[-1]
        pyramid.append((resize_linear(prev0, size, p.scale_step), resize_linear(prev1, size, p.scale_step)))

    k = 3 if p.gamma != 0 else 2
    u = torch.zeros(b, k, *sizes[-1], dtype=torch.float32, device=i0.device)
    if init_flow is not None:
        seed = init_flow.to(torch.float32)
        for size in sizes[1:]:
            seed = resize_linear(seed, size, p.scale_step) * float(np.float32(p.scale_step))
        u[:, :2] = seed

    up = float(np.float32(1.0 / p.scale_step))
    for s in range(len(sizes) - 1, -1, -1):
        u = _solve_scale(*pyramid[s], u, p, check_every, step, median, warp, masked)
        if s > 0:
            u = resize_linear(u, sizes[s - 1])
            u[:, :2] *= up  # u3 is not a displacement and keeps its scale
    return u[:, :2].contiguous()


@functools.cache
def _compiled_kernels(device: str, l_t: float, theta: float, taut: float, median: int, gamma: float
                      ) -> tuple[StepFn, MedianFn, WarpFn]:
    """The inner iteration, the median filter and the warp through torch.compile, compiled once per
    process by a warm-up on tiny batches. Shapes are dynamic, so every scale and batch size reuses
    the graphs, except a batch of one (torch specialises sizes 0 and 1), warmed up too; the float
    parameters are baked in, hence the cache key. Always called with the mask (masked=True).

    Eager, each is a chain of whole-tensor passes over memory (the warp alone about 3 KB per pixel);
    compiled, each is one or two fused kernels (docs/gpu.md has the count)."""
    step = torch.compile(primal_dual_step, dynamic=True)
    median_fn = torch.compile(masked_median, dynamic=True)
    warp_fn = torch.compile(warp_terms, dynamic=True)
    k = 3 if gamma != 0 else 2
    with torch.inference_mode():  # as the solves run: tensors made outside would not match the guards
        for b in (3, 1):  # sizes all different: torch would tie equal sizes together ("duck sizing")
            # Distinct tensors: passing one tensor twice would compile a graph for aliased inputs.
            u, px, py, gw = (torch.zeros(b, k, 17, 19, device=device) for _ in range(4))
            grad, rho_c, i0 = (torch.zeros(b, 17, 19, device=device) for _ in range(3))
            active = torch.ones(b, dtype=torch.bool, device=device)
            step(u, px, py, gw, grad, rho_c, active, l_t, theta, taut)
            if median > 1:
                median_fn(u, median, active)
            warp_fn(torch.zeros(b, 3, 17, 19, device=device), u, i0, gamma)
    return step, median_fn, warp_fn


class TorchTVL1:
    """OpenCV's DualTVL1 for batches of frame pairs on one device.

    `device` None takes `cfg.device`. `compiled` runs the inner iteration, the median filter and
    the warp through torch.compile (None: on GPUs only; it falls back to eager with a warning where
    compiling fails). `check_every` is the number of iterations between convergence checks on the
    host (None: 1 on the CPU, 10 on GPUs, where each check is a device sync).
    """

    def __init__(
        self, cfg: FlowConfig, device: str | None = None, *, compiled: bool | None = None,
        check_every: int | None = None,
    ) -> None:
        if cfg.median_filtering > 1 and cfg.median_filtering not in (3, 5):
            raise FlowError(
                f"flow.median_filtering: OpenCV filters float flow with 3 or 5 (or <= 1 for none), "
                f"got {cfg.median_filtering}"
            )
        for key in ("nscales", "warps", "batch_pairs"):
            if getattr(cfg, key) < 1:
                raise FlowError(f"flow.{key}: must be >= 1, got {getattr(cfg, key)}")
        self.cfg = cfg
        self.device = resolve_device(device if device is not None else cfg.device, "flow.device")
        on_gpu = self.device.type != "cpu"
        self.compiled = on_gpu if compiled is None else compiled
        self.check_every = check_every if check_every is not None else (10 if on_gpu else 1)
        if self.check_every < 1:
            raise FlowError(f"check_every: must be >= 1, got {self.check_every}")
        self._step: StepFn = primal_dual_step
        self._median: MedianFn = masked_median
        self._warp: WarpFn = warp_terms
        if self.compiled:
            solver = _Solver.from_config(cfg)
            try:
                self._step, self._median, self._warp = _compiled_kernels(
                    str(self.device), solver.l_t, solver.theta, solver.taut, solver.median, solver.gamma)
            except Exception as e:  # no C++ compiler / Triton here: the eager kernels give the same flow
                warnings.warn(f"torch.compile failed on {self.device}, running eager: {type(e).__name__}: {e}",
                              stacklevel=2)
                self.compiled = False

    def compute_pairs(
        self, i0: torch.Tensor, i1: torch.Tensor, init_flow: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Flow from i0 to i1 for `[B, H, W]` grey images (uint8 or float, 0-255) -> float32
        `[B, 2, H, W]` (x then y) on this device, `cfg.batch_pairs` pairs at a time."""
        if i0.ndim != 3 or i0.shape != i1.shape:
            raise FlowError(f"compute_pairs: expected two [B, H, W] batches of one shape, got "
                            f"{tuple(i0.shape)} and {tuple(i1.shape)}")
        if init_flow is not None and init_flow.shape != (i0.shape[0], 2, *i0.shape[1:]):
            raise FlowError(f"compute_pairs: init_flow must be [B, 2, H, W] = "
                            f"{[i0.shape[0], 2, *i0.shape[1:]]}, got {list(init_flow.shape)}")
        if min(i0.shape[1:]) < 3:
            raise FlowError(f"compute_pairs: frames of {i0.shape[2]}x{i0.shape[1]} px are too small (>= 3x3)")
        out = []
        n = self.cfg.batch_pairs
        for start in range(0, i0.shape[0], n):
            seed = None if init_flow is None else init_flow[start:start + n].to(self.device)
            out.append(self._solve(i0[start:start + n].to(self.device), i1[start:start + n].to(self.device), seed))
        if not out:
            return torch.zeros(0, 2, *i0.shape[1:], device=self.device)
        return torch.cat(out) if len(out) > 1 else out[0]

    def compute(self, frames_gray: np.ndarray) -> np.ndarray:
        """All consecutive pairs of one video: uint8 `[N, H, W]` -> float32 `[N-1, H, W, 2]`.

        Frames go to the device `cfg.batch_pairs + 1` at a time (chunks share their edge frame,
        so no pair is lost), which bounds memory for videos of any length. With
        `cfg.use_initial_flow` each pair starts from the previous pair's flow, as in OpenCVTVL1.
        """
        check_grey_frames(frames_gray)
        n, h, w = frames_gray.shape
        flows = np.zeros((max(n - 1, 0), h, w, 2), np.float32)
        if self.cfg.use_initial_flow:
            # As the OpenCV backend: each pair starts from the previous pair's flow, so one at a time.
            previous = None
            for i in range(n - 1):
                frames = torch.from_numpy(frames_gray[i:i + 2]).to(self.device)
                previous = self.compute_pairs(frames[:1], frames[1:], previous)
                flows[i] = previous[0].permute(1, 2, 0).cpu().numpy()
            return flows
        step = self.cfg.batch_pairs
        for start in range(0, n - 1, step):
            frames = torch.from_numpy(frames_gray[start:start + step + 1]).to(self.device)
            flow = self.compute_pairs(frames[:-1], frames[1:])
            flows[start:start + flow.shape[0]] = flow.permute(0, 2, 3, 1).cpu().numpy()
        return flows

    @torch.inference_mode()
    def _solve(self, i0: torch.Tensor, i1: torch.Tensor, init_flow: torch.Tensor | None) -> torch.Tensor:
        return tvl1_flow(i0, i1, self.cfg, init_flow=init_flow, check_every=self.check_every,
                         step=self._step, median=self._median, warp=self._warp, masked=self.compiled)
