"""Middlebury .flo files: b"PIEH" (the float 202021.25), int32 width, int32 height, then float32 x, y
interleaved row by row, all little-endian. Kept here because pipeline may not reach into flow's I/O."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

MAGIC = b"PIEH"


def write_flo(path: Path, flow: np.ndarray) -> None:
    """flow: float [H, W, 2], x then y."""
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be [H, W, 2], got {flow.shape}")
    height, width = flow.shape[:2]
    with open(path, "wb") as f:
        f.write(MAGIC + np.array([width, height], "<i4").tobytes() + flow.astype("<f4").tobytes())


def read_flo(path: Path) -> np.ndarray:
    data = Path(path).read_bytes()
    if data[:4] != MAGIC:
        raise PipelineError(f"{path}: not a Middlebury .flo file (no PIEH tag)")
    width, height = (int(n) for n in np.frombuffer(data, "<i4", 2, 4))
    if width < 1 or height < 1 or len(data) != 12 + 8 * width * height:
        raise PipelineError(f"{path}: {len(data)} bytes do not hold a {width}x{height} flow")
    return np.frombuffer(data, "<f4", offset=12).reshape(height, width, 2).astype(np.float32)
