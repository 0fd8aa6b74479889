"""Flow to colour for people: the Middlebury colour wheel (Baker et al. 2011).

Hue is the direction (right = red, down = yellow, left = cyan-blue, up = violet), saturation the
magnitude relative to `max_flow`; zero motion is white. `contact_sheet` draws the picture of
`python -m pipeline show-flow` (matplotlib, imported only when it draws).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from flow.errors import FlowError
from p3dbase.atomic import atomic_write, write_bytes
from p3dbase.errors import shown
from p3dbase.plotting import drawing, pyplot

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
    """`path` if it names a PNG file (not a folder) in an existing folder; FlowError naming `what`
    otherwise (OpenCV picks the format by the extension, and a folder that is not there fails late and
    silently)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise FlowError(f"{what} {shown(path)}: writes a PNG picture, so the name must end in .png")
    if path.is_dir():  # os.replace would refuse, naming the temporary file
        raise FlowError(f"{what} {shown(path)}: is a folder, but a PNG picture is to be written there")
    if not path.parent.is_dir():
        where = "is a file, not a folder" if path.parent.exists() else "does not exist"
        raise FlowError(f"{what} {shown(path)}: the folder {shown(path.parent)} {where}")
    return path


def write_flow_png(path: Path | str, flow: np.ndarray, max_flow: float | None = None) -> None:
    """Colour-coded flow to a PNG file (written atomically)."""
    path = check_png_path(path)
    check_max_flow(max_flow)
    ok, data = cv2.imencode(".png", flow_to_colour(flow, max_flow))
    if not ok:
        raise FlowError(f"{shown(path)}: cannot encode the PNG")
    write_bytes(path, data.tobytes())


def wheel_legend(size: int = 65) -> np.ndarray:
    """uint8 [size, size, 3] BGR: the Middlebury wheel, a disc whose rim is motion of `max_flow`."""
    r = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    flow = np.stack([(x - r) / r, (y - r) / r], axis=-1)
    out = flow_to_colour(flow, max_flow=1.0)
    out[np.hypot(*(flow[..., i] for i in range(2))) > 1] = 255
    return out


def contact_sheet(path: Path, rgb: np.ndarray, flows: np.ndarray, indices: Sequence[int], max_flow: float,
                  title: str) -> Path:
    """RGB frames (uint8 [K, H, W, 3] BGR) over the flow from each to the next (float [K, H, W, 2], px),
    colour-coded at one fixed scale, `max_flow` px = full saturation, with the colour wheel as legend."""
    with drawing():
        plt = pyplot()

        k = len(indices)
        h, w = rgb.shape[1:3]
        width = min(24.0, max(6.0, 2.2 * k + 1.6))
        fig, axes = plt.subplots(2, k + 1, figsize=(width, width / (k + 1) * 2 * h / w + 0.9), squeeze=False,
                                 gridspec_kw={"width_ratios": [1] * k + [0.7]})
        for col, i in enumerate(indices):
            axes[0, col].imshow(rgb[col][..., ::-1])
            axes[0, col].set_title(f"frame {i}", fontsize=8)
            axes[1, col].imshow(flow_to_colour(flows[col], max_flow)[..., ::-1])
            axes[1, col].set_title(f"flow {i}->{i + 1}", fontsize=8)
        for ax in axes.ravel():
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, k].axis("off")
        axes[1, k].imshow(wheel_legend()[..., ::-1])
        axes[1, k].set_title(f"rim = {max_flow:g} px/frame", fontsize=7)
        axes[1, k].set_xlabel("hue: direction of motion\n(a point moving from the\ncentre to it); white: still",
                              fontsize=6)
        fig.suptitle(title, fontsize=9)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_write(path) as f:
                fig.savefig(f, dpi=110, format="png", bbox_inches="tight")
        finally:
            plt.close(fig)
        return path
