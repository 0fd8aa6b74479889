"""A tiny frame + flow store and tiny randomly initialised stream checkpoints for the eval tests.

Classes differ in colour (RGB) and in vertical motion (flow: up, none, down), so even the pool5
features of a random network separate them: a linear SVM on them must be right on every test video.
(Vertical, because the feature protocol averages each clip with its mirror, which makes leftward and
rightward motion give the same feature.)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from flow.store import create_store
from streams import transforms
from streams.checkpoint import make_payload, save_checkpoint
from streams.config import ModelConfig, TrainConfig
from streams.p3d import build_model

CLASSES = ["Red", "Green", "Blue"]
HEIGHT, WIDTH = 24, 32
FRAMES = 10
CLIP_LEN = 4
TRAIN_CFG = TrainConfig(clip_len=CLIP_LEN, resize=[HEIGHT, WIDTH], crop=16)


def tiny_video(label: int, rng: np.random.Generator, frames: int = FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """BGR frames tinted by class, and flow moving up, not at all, or down by class, plus noise."""
    rgb = rng.integers(0, 50, size=(frames, HEIGHT, WIDTH, 3)).astype(np.uint8)
    rgb[..., 2 - label] += 150  # BGR: class 0 red, 1 green, 2 blue
    flow = rng.integers(120, 137, size=(frames - 1, HEIGHT, WIDTH, 2)).astype(np.uint8)
    flow[..., 1] = (128 + (-1, 0, 1)[label] * 40 + rng.integers(-4, 5, size=flow.shape[:3])).astype(np.uint8)
    return rgb, flow


def make_store(root: Path, per_class: int, seed: int = 0) -> list[tuple[str, tuple[int, ...]]]:
    store = create_store(root, codec="raw")
    rng = np.random.default_rng(seed)
    items = []
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            video_id = f"{name}/v_{name}_{i:02d}"
            store.write_video(video_id, *tiny_video(label, rng))
            items.append((video_id, (label,)))
    return items


def save_tiny_checkpoint(path: Path, modality: str, classes=CLASSES, seed: int = 0,
                         train_cfg: TrainConfig = TRAIN_CFG) -> Path:
    torch.manual_seed(seed)
    model = build_model("p3d_tiny", len(classes), transforms.CHANNELS[modality], dropout=0.5)
    # Larger classifier weights than the Caffe init, so the clip scores are not all near-equal.
    torch.nn.init.normal_(model.fc.weight, std=0.005)
    payload = make_payload(model, arch="p3d_tiny", modality=modality, classes=list(classes),
                           input_convention=transforms.INPUT_CONVENTION[modality],
                           model_config=dataclasses.asdict(ModelConfig(arch="p3d_tiny")),
                           train_config=dataclasses.asdict(train_cfg), step=7, epoch=1, metrics={})
    save_checkpoint(path, payload)
    return path


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """(store root, train items, test items): 3 classes x 8 videos, 5 train / 3 test per class."""
    root = tmp_path_factory.mktemp("eval_store")
    items = make_store(root, per_class=8)
    train = [it for it in items if int(it[0][-2:]) < 5]
    test = [it for it in items if int(it[0][-2:]) >= 5]
    return root, train, test


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """{"rgb": train dir, "flow": train dir}, each holding a last.pt of a random p3d_tiny."""
    root = tmp_path_factory.mktemp("eval_train")
    dirs = {}
    for k, modality in enumerate(("rgb", "flow")):
        dirs[modality] = root / modality / "split1"
        save_tiny_checkpoint(dirs[modality] / "last.pt", modality, seed=k)
    return dirs
