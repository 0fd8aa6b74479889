"""CUDA tests (marker `cuda`): each skips where torch sees no GPU; `bench/gpu.py` runs them on one
(`pytest -m cuda tests/cuda`).

No __init__.py here: a test package named `cuda` would shadow NVIDIA's own `cuda` package
(cuda-bindings, `import cuda.bindings`) on GPU images.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.builders import make_toy_store, split_items


@pytest.fixture(scope="session")
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
    return torch.device("cuda")


@pytest.fixture(scope="session")
def toy_store(tmp_path_factory) -> tuple[Path, list[tuple[str, int]], list[tuple[str, int]]]:
    """(root, training items, validation items): the toy store of tests/builders.py, classes "down" and
    "up" (colour and vertical motion), 6 videos each: 4 to train on, 2 to validate."""
    root = tmp_path_factory.mktemp("cuda_toy_store")
    return (root, *split_items(make_toy_store(root, ["down", "up"], per_class=6, motion=20), first=4))
