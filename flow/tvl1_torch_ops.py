"""Image operators of OpenCV's DualTVL1, batched in PyTorch with OpenCV's exact discretisations.

Every function works on float32 tensors `[..., H, W]` (images or flow components of many pairs) and
reproduces the OpenCV routine named in its docstring, border conventions included, so that the
batched solver in `flow.tvl1_torch` follows OpenCV's CPU DualTVL1 step by step.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def pyramid_size(height: int, width: int, step: float) -> tuple[int, int]:
    """Size of the next pyramid level: cv::resize with fx = fy = step rounds half to even."""
    return int(np.rint(height * step)), int(np.rint(width * step))


def _linear_weights(n_in: int, n_out: int, src_per_dst: float) -> np.ndarray:
    """Row-stochastic `[n_out, n_in]` matrix of cv::resize INTER_LINEAR along one axis.

    OpenCV maps destination pixel d to source coordinate (d + 0.5) * src_per_dst - 0.5, computed in
    double and rounded to float, and clamps to the first / last pixel (weight 1) outside the image.
    """
    pos = ((np.arange(n_out, dtype=np.float64) + 0.5) * src_per_dst - 0.5).astype(np.float32)
    left = np.floor(pos).astype(np.int64)
    frac = (pos - left.astype(np.float32)).astype(np.float32)
    below = left < 0
    left[below], frac[below] = 0, 0.0
    above = left >= n_in - 1
    left[above], frac[above] = n_in - 1, 0.0
    weights = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    weights[rows, left] = 1.0 - frac
    inside = frac != 0
    weights[rows[inside], left[inside] + 1] = frac[inside]
    return weights


def resize_linear(x: torch.Tensor, size: tuple[int, int], scale: float | None = None) -> torch.Tensor:
    """cv::resize(..., INTER_LINEAR) of `[..., H, W]` to `size = (h, w)`.

    `scale` is the factor passed as fx = fy (pyramid levels); None means OpenCV derives it from the
    sizes (flow upsampling). The bilinear filter is separable, so the resize is two small matmuls.
    """
    (h_in, w_in), (h_out, w_out) = x.shape[-2:], size
    src_y = 1.0 / scale if scale is not None else 1.0 / (h_out / h_in)
    src_x = 1.0 / scale if scale is not None else 1.0 / (w_out / w_in)
    rows = torch.from_numpy(_linear_weights(h_in, h_out, src_y)).to(x.device)
    cols = torch.from_numpy(_linear_weights(w_in, w_out, src_x)).to(x.device)
    return rows @ x @ cols.T


def centred_gradient(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's centeredGradient: half the central difference; at the borders half the one-sided
    difference, which is the central difference of the border-replicated image."""
    h, w = x.shape[-2:]
    padded = F.pad(x.reshape(-1, 1, h, w), (1, 1, 1, 1), mode="replicate").reshape(*x.shape[:-2], h + 2, w + 2)
    dx = 0.5 * (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2])
    dy = 0.5 * (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1])
    return dx, dy


def forward_gradient(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's forwardGradient: forward differences, zero in the last column (x) / row (y)."""
    dx = F.pad(u[..., 1:] - u[..., :-1], (0, 1))
    dy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    return dx, dy


def divergence(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """OpenCV's divergence: backward differences with p = 0 before the first column / row
    (minus the adjoint of forward_gradient, given p = 0 in the last column / row)."""
    dx = px.clone()
    dx[..., 1:] -= px[..., :-1]
    dy = py.clone()
    dy[..., 1:, :] -= py[..., :-1, :]
    return dx.add_(dy)


def _median_network(n: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """Compare-exchange steps that leave the median of n values on wire n // 2.

    Batcher's odd-even merge sort (truncated to n wires) pruned backwards to what the middle wire
    depends on: (i, j, keep_min_on_i, keep_max_on_j). For n = 25: 113 exchanges instead of 140.
    """
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    needed, steps = {n // 2}, []
    for i, j in reversed(pairs):
        if i in needed or j in needed:
            steps.append((i, j, i in needed, j in needed))
            needed |= {i, j}
    return tuple(reversed(steps))


# The window sizes cv::medianBlur accepts for float images.
_MEDIAN_NETWORKS = {k: _median_network(k * k) for k in (3, 5)}


def median_blur(u: torch.Tensor, ksize: int) -> torch.Tensor:
    """cv::medianBlur of float images (ksize 3 or 5): exact median of the window, borders replicated.

    A selection network over shifted views of the padded image, like OpenCV's own sorting network
    for floats: no ksize^2 copy of the batch, and a single fused kernel under torch.compile.
    """
    r = ksize // 2
    h, w = u.shape[-2:]
    padded = F.pad(u.reshape(-1, 1, h, w), (r, r, r, r), mode="replicate").reshape(*u.shape[:-2], h + 2 * r, w + 2 * r)
    wires = [padded[..., dy:dy + h, dx:dx + w] for dy in range(ksize) for dx in range(ksize)]
    for i, j, keep_min, keep_max in _MEDIAN_NETWORKS[ksize]:
        a, b = wires[i], wires[j]
        if keep_min:
            wires[i] = torch.minimum(a, b)
        if keep_max:
            wires[j] = torch.maximum(a, b)
    return wires[len(wires) // 2]


def _cubic_weights(t: torch.Tensor) -> list[torch.Tensor]:
    """OpenCV's interpolateCubic (Keys, a = -0.75) for the taps at -1, 0, 1, 2; exact at t = 0."""
    a = -0.75
    t1 = t + 1.0
    s = 1.0 - t
    w0 = ((a * t1 - 5.0 * a) * t1 + 8.0 * a) * t1 - 4.0 * a
    w1 = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    w2 = ((a + 2.0) * s - (a + 3.0)) * s * s + 1.0
    return [w0, w1, w2, 1.0 - w0 - w1 - w2]


def warp_cubic(images: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """cv::remap(image, x + u1, y + u2, INTER_CUBIC) of `[B, C, H, W]`, constant 0 outside.

    Written out rather than with grid_sample: its normalised coordinates do not land exactly on
    the pixel grid, so it blurs images that OpenCV samples exactly (the first warp of every scale,
    where u = 0), enough to move the flow by 1e-3 px after a few iterations.

    Eager, each of the 16 taps is an index add, a gather of the C planes and a weighted add; the
    column and row terms (clamped index, tap weight times its in-image mask) are made once per
    axis, and the sums keep OpenCV's order (rows of taps weighted by x, then by y), so the result
    is that of cv::remap. `torch.compile` fuses the whole warp into one pass (docs/gpu.md).
    """
    b, c, h, w = images.shape
    x = torch.arange(w, device=u1.device, dtype=u1.dtype) + u1
    y = torch.arange(h, device=u1.device, dtype=u1.dtype)[:, None] + u2
    x0, y0 = torch.floor(x), torch.floor(y)
    wx, wy = _cubic_weights(x - x0), _cubic_weights(y - y0)
    # Far-away coordinates only need to land outside the image; clamping keeps them in int range.
    ix = x0.clamp(-4, w + 4).to(torch.int64)
    iy = y0.clamp(-4, h + 4).to(torch.int64)
    cols, col_w = [], []
    for k in range(4):
        col = ix + (k - 1)
        cols.append(col.clamp(0, w - 1))
        col_w.append(wx[k] * ((col >= 0) & (col < w)))  # a tap outside the image weighs 0
    flat = images.reshape(b, c, h * w)
    out = torch.zeros_like(images)
    for ky in range(4):
        row = iy + (ky - 1)
        base = row.clamp(0, h - 1) * w
        acc = torch.zeros_like(images)
        for kx in range(4):
            index = (base + cols[kx]).reshape(b, 1, h * w).expand(b, c, h * w)
            acc += torch.gather(flat, 2, index).reshape(b, c, h, w).mul_(col_w[kx][:, None])
        out += acc.mul_((wy[ky] * ((row >= 0) & (row < h)))[:, None])
    return out


def scaled_epsilon(epsilon: float, height: int, width: int) -> float:
    """OpenCV's stopping threshold on the summed squared update: epsilon^2 * area, as a float."""
    return float(np.float32(epsilon * epsilon * height * width))


def flow_levels(height: int, width: int, nscales: int, step: float) -> list[tuple[int, int]]:
    """Sizes of the pyramid, finest first; OpenCV stops before a side falls below 16 px."""
    sizes = [(height, width)]
    for _ in range(1, nscales):
        h, w = pyramid_size(*sizes[-1], step)
        if h < 16 or w < 16:
            break
        sizes.append((h, w))
    return sizes

