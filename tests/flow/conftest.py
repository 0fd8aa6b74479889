"""Tiny videos for the flow tests (tests/builders.py: a textured square moving over a textured
background) and cheap TV-L1 settings."""
from __future__ import annotations

from pathlib import Path

import pytest

from flow.config import FlowConfig
from tests.builders import moving_square, write_video


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
