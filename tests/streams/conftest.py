"""The toy store of the streams tests (two classes, up and down; tests/builders.py) and small configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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
def one_thread():
    """These tiny convs gain little from a second thread and lose up to 10x when other work holds the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("P3D_TEST_THREADS") or 1))  # 2 in `make test`'s numerical pass
    yield
    torch.set_num_threads(threads)
