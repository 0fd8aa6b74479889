"""What the tests build: toy frame + flow stores, tiny stream checkpoints, small training configs and
test videos. One builder of each, imported by the tests and fixtures that need them.

Toy stores: class k is told apart by its colour (RGB: one BGR channel raised) and by its vertical
motion (flow: up, none or down, 40 grey levels from still), plus noise, so that even the pool5 features
of a random network separate the classes and a tiny net learns them in a few steps. (Vertical, because
the feature protocol averages each clip with its mirror, which makes leftward and rightward motion
give the same feature.)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import torch

from flow.store import create_store, open_store
from streams import transforms
from streams.checkpoint import make_payload, save_checkpoint
from streams.config import ModelConfig, TrainConfig
from streams.p3d import build_model
from streams.train import StreamData

Item = tuple[str, int]


def toy_video(label: int, num_classes: int, rng: np.random.Generator, frames: int, height: int, width: int,
              motion: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """BGR frames tinted by class and flow moving up (class 0) ... down (the last class) by up to `motion`
    grey levels, plus noise."""
    rgb = rng.integers(0, 50, size=(frames, height, width, 3)).astype(np.uint8)
    rgb[..., 2 - label % 3] += 150  # BGR: class 0 red, 1 green, 2 blue
    flow = rng.integers(120, 137, size=(frames - 1, height, width, 2)).astype(np.uint8)
    direction = float(np.linspace(-1, 1, num_classes)[label]) if num_classes > 1 else 0.0
    flow[..., 1] = (128 + round(direction * motion) + rng.integers(-4, 5, size=flow.shape[:3])).astype(np.uint8)
    return rgb, flow


def make_toy_store(root: Path, classes: list[str], per_class: int, *, frames: int = 12, height: int = 32,
                   width: int = 32, motion: int = 40, seed: int = 0, **store: object) -> list[Item]:
    """A store at `root` (raw codec; `store`: other create_store settings) of `per_class` toy videos per
    class, ids `<class>/v_<class>_<i:02d>`; returns the (video_id, label) items, class by class."""
    writer = create_store(root, **{"codec": "raw", **store})
    rng = np.random.default_rng(seed)
    items = []
    for label, name in enumerate(classes):
        for i in range(per_class):
            video_id = f"{name}/v_{name}_{i:02d}"
            writer.write_video(video_id, *toy_video(label, len(classes), rng, frames, height, width, motion))
            items.append((video_id, label))
    return items


def split_items(items: list[Item], first: int) -> tuple[list[Item], list[Item]]:
    """(the videos numbered below `first` in each class, the others): a train / held-out split."""
    return ([it for it in items if int(it[0][-2:]) < first], [it for it in items if int(it[0][-2:]) >= first])


def stream_data(root: Path, train: list[Item], val: list[Item], classes: list[str]) -> StreamData:
    """What streams.train.train_stream takes: the store at `root` opened, the items, the classes."""
    return StreamData(open_store(root), list(train), list(val), list(classes))


def toy_configs(**train: object) -> tuple[ModelConfig, TrainConfig]:
    """p3d_tiny on 8x28x28 clips of the 32x32 toy videos: a few seconds per run on 2 cores."""
    model = ModelConfig(arch="p3d_tiny", partial_bn=False, dropout_rgb=0.0, dropout_flow=0.0)
    settings = dict(clip_len=8, resize=[32, 32], crop=28, batch_size=8, epochs=2, lr=0.01, lr_steps=[], fc_lr_mult=1.0,
                    workers=0, log_every=1, checkpoint_every=0, progress=False, seed=0)
    settings.update(train)
    return model, TrainConfig(**settings)


def save_tiny_checkpoint(path: Path, modality: str, classes: list[str], train_cfg: TrainConfig, seed: int = 0,
                         **extra: object) -> Path:
    """A checkpoint of a randomly initialised p3d_tiny (step 7), its classifier weights larger than the
    Caffe init so that the clip scores are not all near-equal; `extra`: more checkpoint entries."""
    torch.manual_seed(seed)
    model = build_model("p3d_tiny", len(classes), transforms.CHANNELS[modality], dropout=0.5)
    torch.nn.init.normal_(model.fc.weight, std=0.005)
    payload = make_payload(model, arch="p3d_tiny", modality=modality, classes=list(classes),
                           input_convention=transforms.INPUT_CONVENTION[modality],
                           model_config=dataclasses.asdict(ModelConfig(arch="p3d_tiny")),
                           train_config=dataclasses.asdict(train_cfg), step=7, epoch=1, metrics={}, **extra)
    save_checkpoint(path, payload)
    return path


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


def write_video(path: Path, frames: np.ndarray, fps: float = 25.0, grey: bool = False) -> Path:
    """Write BGR frames with cv2.VideoWriter (as grey ones with `grey`); the codec follows the extension
    (MJPG .avi, mp4v .mp4, FFV1 .mkv)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC[path.suffix]), fps, (w, h), isColor=not grey)
    assert writer.isOpened(), f"cannot write {path}"
    for frame in frames:
        writer.write(np.ascontiguousarray(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if grey else frame))
    writer.release()
    return path
