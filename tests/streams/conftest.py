"""A toy frame + flow store whose classes differ only by the direction of motion, and small configs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from flow.store import create_store
from streams.config import ModelConfig, TrainConfig

SIZE = 32
FRAMES = 12
SPEED = 2  # px per frame


def toy_video(direction: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A bright square on noise moving down (+1) or up (-1): BGR frames and uint8 flow (128 = still)."""
    side = int(rng.integers(8, 12))
    x = int(rng.integers(0, SIZE - side))
    y0 = SIZE // 2 - side // 2 - direction * SPEED * FRAMES // 2
    colour = rng.integers(120, 256, size=3)
    rgb = rng.integers(0, 60, size=(FRAMES, SIZE, SIZE, 3)).astype(np.uint8)
    flow = np.full((FRAMES - 1, SIZE, SIZE, 2), 128, np.uint8)
    flow[..., :] += rng.integers(-3, 4, size=flow.shape).astype(np.uint8)
    for t in range(FRAMES):
        y = y0 + direction * SPEED * t
        rgb[t, max(y, 0):max(y + side, 0), x:x + side] = colour
        if t < FRAMES - 1:
            flow[t, max(y, 0):max(y + side, 0), x:x + side, 1] = 128 + direction * 10 * SPEED
    return rgb, flow


def make_toy_store(root: Path, per_class: int, seed: int = 0) -> list[tuple[str, int]]:
    """Two classes (0: up, 1: down); returns the (video_id, label) items."""
    store = create_store(root, codec="raw")
    rng = np.random.default_rng(seed)
    items = []
    for label, direction in enumerate((-1, 1)):
        for i in range(per_class):
            video_id = f"class{label}/v{i:03d}"
            store.write_video(video_id, *toy_video(direction, rng))
            items.append((video_id, label))
    return items


@pytest.fixture(scope="session")
def toy_store(tmp_path_factory) -> tuple[Path, list[tuple[str, int]], list[tuple[str, int]]]:
    """(store root, training items, validation items) of a 2-class toy store."""
    root = tmp_path_factory.mktemp("toy_store")
    items = make_toy_store(root, per_class=24)
    train = [it for it in items if int(it[0][-3:]) < 16]
    val = [it for it in items if int(it[0][-3:]) >= 16]
    return root, train, val


def toy_configs(**train) -> tuple[ModelConfig, TrainConfig]:
    """p3d_tiny on 8x28x28 clips of the 32x32 toy videos: a few seconds per run on 2 cores."""
    model = ModelConfig(arch="p3d_tiny", partial_bn=False, dropout_rgb=0.0, dropout_flow=0.0)
    settings = dict(clip_len=8, resize=[32, 32], crop=28, batch_size=8, epochs=2, lr=0.01, lr_steps=[], fc_lr_mult=1.0,
                    workers=0, log_every=1, checkpoint_every=0, progress=False, seed=0)
    settings.update(train)
    return model, TrainConfig(**settings)


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
