"""CUDA tests (marker `cuda`): each skips where torch sees no GPU; `bench/gpu.py` runs them on one
(`pytest -m cuda tests/cuda`).

No __init__.py here: a test package named `cuda` would shadow NVIDIA's own `cuda` package
(cuda-bindings, `import cuda.bindings`) on GPU images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flow.store import create_store

SIZE, FRAMES = 32, 12


@pytest.fixture(scope="session")
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
    return torch.device("cuda")


@pytest.fixture(scope="session")
def toy_store(tmp_path_factory) -> tuple[Path, list[tuple[str, int]], list[tuple[str, int]]]:
    """(root, training items, validation items): 12 videos of a bright square moving down (class 0)
    or up (class 1) over noise, with that motion as flow (uint8, 128 = still)."""
    root = tmp_path_factory.mktemp("cuda_toy_store")
    store = create_store(root, codec="raw")
    rng = np.random.default_rng(0)
    items = []
    for k in range(12):
        label = k % 2
        step = 2 if label == 0 else -2
        rgb = rng.integers(0, 60, size=(FRAMES, SIZE, SIZE, 3)).astype(np.uint8)
        flow = np.full((FRAMES - 1, SIZE, SIZE, 2), 128, np.uint8)
        x = int(rng.integers(0, SIZE - 10))
        for t in range(FRAMES):
            y = min(max(SIZE // 2 - 5 + step * (t - FRAMES // 2), 0), SIZE - 10)
            rgb[t, y:y + 10, x:x + 10] = 200
            if t < FRAMES - 1:
                flow[t, y:y + 10, x:x + 10, 1] = 128 + 10 * step
        video_id = f"c{label}/v{k:02d}"
        store.write_video(video_id, rgb, flow)
        items.append((video_id, label))
    return root, items[:8], items[8:]
