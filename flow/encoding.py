"""Float flow <-> uint8 flow images (the TSN / denseflow convention).

`u8 = round(255 * (clip(f, -bound, bound) + bound) / (2 * bound))`, rounding halves up, so zero
motion is exactly 128 (the truncating variant of mmaction2's CPU script gives 127). One level is
`2 * bound / 255` px (0.157 px at bound 20); inside the bound a round trip is off by at most half a
level. `decode` is the inverse used by TSN: `f = u8 * 2 * bound / 255 - bound`.
"""
from __future__ import annotations

import numpy as np

from flow.errors import FlowError


def _check_bound(bound: float) -> float:
    bound = float(bound)
    if not 0 < bound < float("inf"):  # inf made every value 0 (and decoding NaN)
        raise FlowError(f"flow bound must be a finite number > 0, got {bound}")
    return bound


def encode(flow: np.ndarray, bound: float = 20.0) -> np.ndarray:
    """Float flow (any shape, px) -> uint8 of the same shape; 128 = no motion. FlowError on NaN or inf:
    a diverged solver's output is no motion to store (np.clip would have made NaN 0, i.e. -bound)."""
    bound = _check_bound(bound)
    flow = np.asarray(flow, dtype=np.float64)
    finite = np.isfinite(flow)
    if not finite.all():
        bad = flow.size - int(np.count_nonzero(finite))
        raise FlowError(f"flow is not finite (NaN or inf) in {bad} of {flow.size} values: TV-L1 diverged; check "
                        "the [flow] TV-L1 settings (tau, lambda_, theta, epsilon, gamma, scale_step)")
    # 127.5 + f * 127.5 / bound is 255 (f + bound) / (2 bound) written so that f = 0 gives exactly 127.5,
    # hence 128: (f + bound) * (255 / (2 bound)) came to 127.4999... at bounds such as 25 and 100, and
    # a still background was stored as 127, a drift of half a level.
    scaled = np.clip(flow, -bound, bound) * (127.5 / bound) + 127.5
    return np.floor(scaled + 0.5).astype(np.uint8)


def decode(u8: np.ndarray, bound: float = 20.0) -> np.ndarray:
    """uint8 flow image -> float32 flow in px."""
    bound = _check_bound(bound)
    u8 = np.asarray(u8)
    if u8.dtype != np.uint8:
        raise FlowError(f"decode expects uint8 flow images, got {u8.dtype}")
    return (u8.astype(np.float64) * (2.0 * bound / 255.0) - bound).astype(np.float32)


def step(bound: float = 20.0) -> float:
    """Size of one uint8 level in px (0.157 at bound 20)."""
    return 2.0 * _check_bound(bound) / 255.0
