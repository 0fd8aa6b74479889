"""Flow to colour for people: the Middlebury colour wheel (Baker et al. 2011).

Hue is the direction (right = red, down = yellow, left = cyan-blue, up = violet), saturation the
magnitude relative to `max_flow`; zero motion is white.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from flow.errors import FlowError
from p3dbase.atomic import write_bytes
from p3dbase.errors import shown

# Hue segments of the wheel: red-yellow, yellow-green, green-cyan, cyan-blue, blue-magenta, magenta-red.
SEGMENTS = (15, 6, 4, 11, 13, 6)


def colour_wheel() -> np.ndarray:
    """[55, 3] float RGB in 0..255, going round the hue circle."""
    rows = []
    for k, n in enumerate(SEGMENTS):
        ramp = np.arange(n) / n
        rise, fall = 255 * ramp, 255 * (1 - ramp)
        full, zero = np.full(n, 255.0), np.zeros(n)
        rows.append([np.stack([full, rise, zero], 1),   # R -> Y
                     np.stack([fall, full, zero], 1),   # Y -> G
                     np.stack([zero, full, rise], 1),   # G -> C
                     np.stack([zero, fall, full], 1),   # C -> B
                     np.stack([rise, zero, full], 1),   # B -> M
                     np.stack([full, zero, fall], 1)][k])  # M -> R
    return np.concatenate(rows)


def flow_to_colour(flow: np.ndarray, max_flow: float | None = None) -> np.ndarray:
    """float [H, W, 2] -> uint8 [H, W, 3] BGR (ready for cv2.imwrite). Magnitudes are divided by
    `max_flow` (default: the largest magnitude in the field); beyond 1 the colour darkens."""
    flow = np.asarray(flow, np.float64)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise FlowError(f"flow to visualise must be [H, W, 2], got {list(flow.shape)}")
    u, v = flow[..., 0], flow[..., 1]
    bad = ~np.isfinite(u) | ~np.isfinite(v)
    u, v = np.where(bad, 0, u), np.where(bad, 0, v)
    rad = np.hypot(u, v)
    scale = max_flow if max_flow is not None else float(rad.max())
    if scale > 0:
        u, v, rad = u / scale, v / scale, rad / scale
    wheel = colour_wheel() / 255.0
    n = len(wheel)
    angle = np.arctan2(-v, -u) / np.pi  # -1..1
    pos = (angle + 1) / 2 * (n - 1)
    k0 = np.floor(pos).astype(int)
    k1 = (k0 + 1) % n
    frac = (pos - k0)[..., None]
    col = (1 - frac) * wheel[k0] + frac * wheel[k1]
    inside = (rad <= 1)[..., None]
    col = np.where(inside, 1 - rad[..., None] * (1 - col), col * 0.75)
    col[bad] = 0
    rgb = np.floor(255 * col + 0.5).astype(np.uint8)
    return rgb[..., ::-1].copy()


def check_max_flow(max_flow: float | None, what: str = "max_flow") -> None:
    """A colour scale is a magnitude > 0 (None: the field's largest); FlowError naming `what` otherwise."""
    if max_flow is not None and not (math.isfinite(max_flow) and max_flow > 0):
        raise FlowError(f"{what} must be a number of px per frame > 0 (the magnitude shown at full saturation), "
                        f"got {max_flow}")


def check_png_path(path: Path | str, what: str = "the picture") -> Path:
    """`path` if it names a PNG file in an existing folder; FlowError naming `what` otherwise (OpenCV
    picks the format by the extension, and a folder that is not there fails late and silently)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise FlowError(f"{what} {shown(path)}: writes a PNG picture, so the name must end in .png")
    if not path.parent.is_dir():
        raise FlowError(f"{what} {shown(path)}: the folder {shown(path.parent)} does not exist")
    return path


def write_flow_png(path: Path | str, flow: np.ndarray, max_flow: float | None = None) -> None:
    """Colour-coded flow to a PNG file (written atomically)."""
    path = check_png_path(path)
    check_max_flow(max_flow)
    ok, data = cv2.imencode(".png", flow_to_colour(flow, max_flow))
    if not ok:
        raise FlowError(f"{shown(path)}: cannot encode the PNG")
    write_bytes(path, data.tobytes())
