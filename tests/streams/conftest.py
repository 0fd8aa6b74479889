"""The toy store of the streams tests (two classes, up and down; tests/builders.py) and small configs."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.builders import Item, make_toy_store, split_items, toy_configs

CLASSES = ["up", "down"]


@pytest.fixture(scope="session")
def toy_store(tmp_path_factory) -> tuple[Path, list[Item], list[Item]]:
    """(store root, training items, validation items): 2 classes x 24 videos, 16 train / 8 validation each."""
    root = tmp_path_factory.mktemp("toy_store")
    train, val = split_items(make_toy_store(root, CLASSES, per_class=24, motion=20), first=16)
    return root, train, val


@pytest.fixture(scope="session")
def configs():
    """`configs(**train_overrides) -> (ModelConfig, TrainConfig)` for the toy store."""
    return toy_configs


@pytest.fixture(scope="module", autouse=True)
def _threads(one_thread):
    """Every streams test module runs on the pinned thread count (tests/conftest.py one_thread)."""
