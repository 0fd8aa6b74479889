"""Ground-truth flow files: Middlebury `.flo` and KITTI 16-bit flow PNGs.

Both read to float32 [H, W, 2] (x then y, px) plus a boolean [H, W] mask of valid pixels.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from flow.errors import FlowError

FLO_MAGIC = 202021.25  # "PIEH" read as a little-endian float32
FLO_UNKNOWN = 1e9  # Middlebury marks pixels without ground truth with values above this


def read_flo(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """A Middlebury .flo file -> (flow float32 [H, W, 2], valid bool [H, W])."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FlowError(f"{path}: cannot read flow file: {e.strerror}") from None
    if len(data) < 12 or np.frombuffer(data[:4], "<f4")[0] != np.float32(FLO_MAGIC):
        raise FlowError(f"{path}: not a Middlebury .flo file (bad magic)")
    w, h = (int(v) for v in np.frombuffer(data[4:12], "<i4"))
    if w <= 0 or h <= 0 or len(data) != 12 + 8 * w * h:
        raise FlowError(f"{path}: .flo header says {w}x{h} but the file holds {len(data) - 12} bytes of "
                        f"flow ({8 * max(w, 0) * max(h, 0)} expected)")
    flow = np.frombuffer(data[12:], "<f4").reshape(h, w, 2).astype(np.float32)
    valid = np.isfinite(flow).all(-1) & (np.abs(flow) < FLO_UNKNOWN).all(-1)
    return flow, valid


def write_flo(path: Path | str, flow: np.ndarray, valid: np.ndarray | None = None) -> None:
    """float [H, W, 2] -> Middlebury .flo (invalid pixels, if a mask is given, written as 1e10)."""
    flow = np.asarray(flow, np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise FlowError(f"{path}: flow to write must be [H, W, 2], got {list(flow.shape)}")
    if valid is not None:
        flow = np.where(np.asarray(valid, bool)[..., None], flow, np.float32(1e10))
    h, w = flow.shape[:2]
    header = np.array([FLO_MAGIC], "<f4").tobytes() + np.array([w, h], "<i4").tobytes()
    Path(path).write_bytes(header + flow.astype("<f4").tobytes())


def read_kitti_png(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """A KITTI flow PNG (16-bit RGB: u, v = (value - 2**15) / 64, valid flag in blue) ->
    (flow float32 [H, W, 2], valid bool [H, W])."""
    path = Path(path)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype != np.uint16 or img.ndim != 3 or img.shape[2] != 3:
        raise FlowError(f"{path}: not a KITTI flow PNG (16-bit, 3 channels)")
    bgr = img.astype(np.float32)  # OpenCV order: valid, v, u
    flow = np.stack([bgr[..., 2], bgr[..., 1]], -1)
    flow = (flow - 2.0**15) / 64.0
    return flow.astype(np.float32), img[..., 0] > 0


def write_kitti_png(path: Path | str, flow: np.ndarray, valid: np.ndarray | None = None) -> None:
    """float [H, W, 2] -> KITTI flow PNG (1/64 px steps, +-512 px range)."""
    flow = np.asarray(flow, np.float64)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise FlowError(f"{path}: flow to write must be [H, W, 2], got {list(flow.shape)}")
    valid = np.ones(flow.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    uv = np.clip(np.floor(flow * 64.0 + 2.0**15 + 0.5), 0, 65535).astype(np.uint16)
    img = np.stack([valid.astype(np.uint16), uv[..., 1], uv[..., 0]], -1)
    if not cv2.imwrite(str(path), img):
        raise FlowError(f"{path}: cannot write PNG")


def read_flow(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """`.flo` or KITTI `.png`, by extension."""
    suffix = Path(path).suffix.lower()
    if suffix == ".flo":
        return read_flo(path)
    if suffix == ".png":
        return read_kitti_png(path)
    raise FlowError(f"{path}: unknown flow file type (expected .flo or a KITTI .png)")


def write_flow(path: Path | str, flow: np.ndarray, valid: np.ndarray | None = None) -> None:
    """`.flo` or KITTI `.png`, by extension."""
    suffix = Path(path).suffix.lower()
    if suffix == ".flo":
        write_flo(path, flow, valid)
    elif suffix == ".png":
        write_kitti_png(path, flow, valid)
    else:
        raise FlowError(f"{path}: unknown flow file type (expected .flo or .png)")
