"""Tiny videos for the flow tests: a textured square moving over a textured background."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from flow.config import FlowConfig

FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "FFV1"}


def moving_square(n: int, width: int = 64, height: int = 48, step: int = 2, seed: int = 0) -> np.ndarray:
    """uint8 [n, H, W, 3]: smooth random background, a textured square moving `step` px right per frame."""
    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), np.uint8), (5, 5), 1.5)
    side = height // 2
    square = cv2.GaussianBlur(rng.integers(0, 256, (side, side, 3), np.uint8), (3, 3), 1.0)
    frames = np.repeat(background[None], n, axis=0)
    for i in range(n):
        x = (4 + i * step) % (width - side)
        frames[i, height // 4: height // 4 + side, x: x + side] = square
    return frames


def write_video(path: Path, frames: np.ndarray, fps: float = 25.0) -> Path:
    """Write frames with cv2.VideoWriter; the codec follows the extension (MJPG .avi, mp4v .mp4, FFV1 .mkv)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC[path.suffix]), fps, (w, h))
    assert writer.isOpened(), f"cannot write {path}"
    for frame in frames:
        writer.write(np.ascontiguousarray(frame))
    writer.release()
    return path


@pytest.fixture
def make_video(tmp_path: Path):
    def make(name: str, n: int = 8, seed: int = 0, **kwargs) -> Path:
        return write_video(tmp_path / "videos" / name, moving_square(n, seed=seed, **kwargs))
    return make


@pytest.fixture
def fast_cfg() -> FlowConfig:
    """Cheap TV-L1 settings and a small frame size: the tests check plumbing, not accuracy."""
    return FlowConfig(size="", jobs=1, nscales=2, warps=1, inner_iterations=5, outer_iterations=2,
                      median_filtering=1, batch_pairs=4)
