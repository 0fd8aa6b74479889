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
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from flow.config import FlowConfig
from flow.store import create_store, open_store
from flow.tvl1 import create_tvl1
from streams import transforms
from streams.checkpoint import make_payload, save_checkpoint
from streams.config import ModelConfig, TrainConfig
from streams.importers.caffe_proto import V1_CONVOLUTION, V1_INNER_PRODUCT, NetParameter
from streams.loaders import StreamData
from streams.p3d import build_model

Item = tuple[str, int]

# The whole pipeline in seconds on tiny SynthActions: `--set` items for configs/synth.toml.
TINY = [
    "synth.appearances=[\"red\", \"blue\"]", "synth.motions=[\"up\", \"rotate\"]", "synth.groups=3",
    "synth.clips_per_group=2", "synth.frames=12", "synth.size=32",
    "flow.warps=1", "flow.outer_iterations=2", "flow.jobs=1",
    "train.clip_len=4", "train.resize=[32, 32]", "train.crop=28", "train.batch_size=4", "train.epochs=1",
    "train.workers=0", "train.progress=false", "train.checkpoint_every=1",
    "eval.clips=2", "eval.svm_clips=2", "eval.svm_folds=2", "eval.jobs=1",
]
REPO = Path(__file__).resolve().parents[1]  # the checkout


# The eval tests' toy: three classes told apart by colour and motion, 24x32 frames, 4-frame clips.
COLOURS = ["Red", "Green", "Blue"]
COLOUR_TRAIN_CFG = TrainConfig(clip_len=4, resize=[24, 32], crop=16)
# Cheap TV-L1 (these tests check the plumbing; tests/flow checks TV-L1 itself), into a lossless store
# (png frames and flow): a stored video is the known answer a decoded one must match.
FAST_FLOW = FlowConfig(size="", jobs=1, nscales=2, warps=1, inner_iterations=5, outer_iterations=2,
                       median_filtering=1, batch_pairs=8, codec="png", flow_codec="png")


def toy_video(label: int, rng: np.random.Generator, *, num_classes: int = 3, frames: int = 10, height: int = 24,
              width: int = 32, motion: int = 40) -> tuple[np.ndarray, np.ndarray]:
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
            writer.write_video(video_id, *toy_video(label, rng, num_classes=len(classes), frames=frames,
                                                            height=height, width=width, motion=motion))
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


def save_tiny_checkpoint(path: Path, modality: str, classes: list[str] = COLOURS, seed: int = 0,
                         train_cfg: TrainConfig = COLOUR_TRAIN_CFG, **extra: object) -> Path:
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


def checkpoint_with_statistics(path: Path, modality: str = "rgb", arch: str = "p3d_tiny",
                               classes: tuple[str, ...] = ("a", "b", "c")) -> Path:
    """A random `arch` checkpoint with logits of order 1 and BatchNorm statistics that are not the
    identity (a fresh net's would hide a missing or misplaced BN), 8x32x32 clips."""
    torch.manual_seed(0)
    model = build_model(arch, len(classes), transforms.CHANNELS[modality])
    with torch.no_grad():
        model.fc.weight.normal_(std=0.05)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(std=0.1)
                m.running_var.uniform_(0.5, 1.5)
    payload = make_payload(model, arch=arch, modality=modality, classes=list(classes),
                           input_convention=transforms.INPUT_CONVENTION[modality],
                           model_config=dataclasses.asdict(ModelConfig(arch=arch)),
                           train_config=dataclasses.asdict(TrainConfig(clip_len=8, resize=[40, 48], crop=32)),
                           step=1, epoch=1, metrics={})
    save_checkpoint(path, payload)
    return path


def last_checkpoints(run_dirs: dict[str, Path]) -> dict[str, Path]:
    """{stream: run folder} -> {stream: its last.pt}."""
    return {name: d / "last.pt" for name, d in run_dirs.items()}


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


def drifting_square(frames: int = 12, width: int = 40, height: int = 30, seed: int = 0) -> np.ndarray:
    """uint8 [frames, H, W, 3]: a textured square drifting right and down over smoothed noise."""
    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), np.uint8), (5, 5), 1.5)
    square = rng.integers(0, 256, (12, 12, 3), np.uint8)
    out = np.repeat(background[None], frames, axis=0)
    for t in range(frames):
        y, x = 4 + t % (height - 16), 2 + (2 * t) % (width - 14)
        out[t, y:y + 12, x:x + 12] = square
    return out


def write_avi(path: Path, frames: int = 12, width: int = 40, height: int = 30, seed: int = 0) -> Path:
    """`drifting_square` as an MJPG .avi."""
    return write_video(path, drifting_square(frames, width, height, seed))


def write_video(path: Path, frames: np.ndarray, fps: float = 25.0, grey: bool = False,
                fourcc: str | None = None) -> Path:
    """Write BGR frames with cv2.VideoWriter (as grey ones with `grey`); the codec is `fourcc`, else
    follows the extension (MJPG .avi, mp4v .mp4, FFV1 .mkv)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    code = cv2.VideoWriter_fourcc(*(fourcc or FOURCC[path.suffix]))
    writer = cv2.VideoWriter(str(path), code, fps, (w, h), isColor=not grey)
    assert writer.isOpened(), f"cannot write {path}"
    for frame in frames:
        writer.write(np.ascontiguousarray(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if grey else frame))
    writer.release()
    return path


def deny_as_for_a_user(monkeypatch, path: Path, mode: int) -> None:
    """After `path` was chmod-ed against `mode` (os.R_OK, os.W_OK): root reads and writes anything, so
    where os.access still allows it, make os.access answer for `path` as it does for any other user.
    The code under test asks os.access before it reads or writes; as a user the chmod alone decides."""
    if os.access(path, mode):
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == path and m & mode else real(p, m))


_MP4_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}


def write_vfr_mp4(path: Path, frames: np.ndarray, durations: Sequence[float], fps: float = 25.0) -> Path:
    """A variable-frame-rate .mp4 (as phones and screen recorders write): `frames` written at `fps`,
    then each frame's duration set to `durations[i]` frame periods in the track's time-to-sample table
    (MP4 `stts`). The durations add up to the frame count, so that the track's total length (its edit
    list) still holds every frame; OpenCV's mp4 has its index (`moov`) after the media, so no chunk
    offset moves."""
    assert len(durations) == len(frames) and abs(sum(durations) - len(frames)) < 1e-9
    write_video(path, frames, fps)
    data = path.read_bytes()

    def boxes(start: int, end: int):
        while start < end:
            size, kind = struct.unpack(">I4s", data[start:start + 8])
            yield start, size, kind
            start += size

    def rewrite(start: int, end: int) -> bytes:
        out = b""
        for at, size, kind in boxes(start, end):
            if kind in _MP4_CONTAINERS:
                inner = rewrite(at + 8, at + size)
                out += struct.pack(">I4s", 8 + len(inner), kind) + inner
            elif kind == b"stts":  # version/flags, entry count, then (sample count, sample delta) pairs
                count, delta = struct.unpack(">II", data[at + 16:at + 24])
                assert count == len(frames), "expected one stts entry for the whole constant-rate track"
                deltas = [round(d * delta) for d in durations]
                assert sum(deltas) == count * delta, "durations must be whole track ticks"
                body = struct.pack(">I", count) + b"".join(struct.pack(">II", 1, d) for d in deltas)
                out += struct.pack(">I4s", 12 + len(body), kind) + data[at + 8:at + 12] + body
            else:
                out += data[at:at + size]
        return out

    kinds = [kind for _, _, kind in boxes(0, len(data))]
    assert kinds.index(b"moov") > kinds.index(b"mdat"), "the index must follow the media"
    path.write_bytes(rewrite(0, len(data)))
    return path


# Published weights, written from a net with the official names and shapes (streams.importers' tests
# and the import-weights CLI test).

def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine, and an fc giving logits of order 1 (its default std 0.001 would
    make every comparison pass)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def official_block(stage: int, index: int, numbered: bool) -> str:
    """Block suffixes of the official deploy prototxts: res2a, res2b, res2c; res3a, res3b1..res3b7; ..."""
    if index == 0:
        return "a"
    return f"b{index}" if numbered else "abcdefghijklmnopqrstuvwxyz"[index]


def official_layers(model, numbered_stages=(3, 4), fc_name="fc_kinetics") -> list[tuple[str, list[np.ndarray]]]:
    """(Caffe layer name, blobs) of `model` laid out as the official P3D deploy nets name them."""
    def conv(m):
        return [m.weight.detach().numpy()]

    def bn(m):  # the custom BN layer: scale, shift, moving mean, moving variance, each [1, C]
        return [t.detach().numpy().reshape(1, -1) for t in (m.weight, m.bias, m.running_mean, m.running_var)]

    layers = [("conv1", conv(model.conv1)), ("bn_conv1", bn(model.bn1))]
    for stage in range(2, 6):
        for i, block in enumerate(getattr(model, f"layer{stage - 1}")):
            name = f"{stage}{official_block(stage, i, stage in numbered_stages)}"
            branches = [("branch2a", block.conv_reduce, block.bn_reduce), ("branch2b", block.conv_s, block.bn_s)]
            if stage < 5:
                branches.append(("branch2b_t", block.conv_t, block.bn_t))
            branches.append(("branch2c", block.conv_expand, block.bn_expand))
            if block.downsample is not None:
                branches.append(("branch1", block.downsample[0], block.downsample[1]))
            for branch, c, b in branches:
                layers += [(f"res{name}_{branch}", conv(c)), (f"bn{name}_{branch}", bn(b))]
    layers.append((fc_name, [model.fc.weight.detach().numpy(), model.fc.bias.detach().numpy()]))
    return layers


def write_caffemodel(path: Path, layers, v1: bool = False, legacy_shapes: bool = False) -> Path:
    net = NetParameter(name="DEPLOY_P3D_RESNET_TEST")
    for name, blobs in layers:
        if v1:
            # BN is no V1 LayerType: its code stays 0, which parsing must not mind.
            kind = (V1_INNER_PRODUCT if name.startswith("fc")
                    else V1_CONVOLUTION if name.startswith(("res", "conv")) else 0)
            layer = net.layers.add(name=name, type=kind)
        else:
            layer = net.layer.add(name=name, type="BN" if name.startswith("bn") else "Convolution")
        for array in blobs:
            blob = layer.blobs.add()
            if legacy_shapes and array.ndim <= 4:
                num, channels, height, width = (1,) * (4 - array.ndim) + array.shape
                blob.num, blob.channels, blob.height, blob.width = num, channels, height, width
            else:
                blob.shape.dim.extend(array.shape)
            blob.data.extend(array.ravel().tolist())
    path.write_bytes(net.SerializeToString())
    return path


RAWFRAME_SIZE = (24, 32)  # H, W of write_rawframes' images


def write_rawframes(folder: Path, frames: int, flows: int, *, start: int = 1, digits: int = 5, rgb: str = "img_",
                    flow: tuple[str, str] = ("flow_x_", "flow_y_"), rgb_dir: str = "", flow_dir: str = "",
                    seed: int = 0) -> Path:
    """A rawframes folder of smooth random JPEGs (mmaction2 / denseflow names by default): `frames`
    RGB images and `flows` x/y pairs numbered from `start`."""
    rng = np.random.default_rng(seed)
    height, width = RAWFRAME_SIZE

    def smooth(shape: tuple[int, ...]) -> np.ndarray:
        return cv2.GaussianBlur(rng.integers(0, 256, shape, np.uint8), (5, 5), 1.5)

    for sub in {rgb_dir, flow_dir}:
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        cv2.imwrite(str(folder / rgb_dir / f"{rgb}{start + i:0{digits}d}.jpg"), smooth((height, width, 3)))
    for i in range(flows):
        for name in flow:
            path = folder / flow_dir / f"{name}{start + i:0{digits}d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), smooth((height, width)))
    return folder


# Flow pairs with known motion and the measures the TV-L1 tests compare them by.
RUBBERWHALE_CROP = np.s_[120:240, 200:360]  # Middlebury's RubberWhale: the wheel and the whale's tail


def texture(x: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    """A smooth, isotropic test texture (100 plane waves of 4-16 px period), grey levels 38-218."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(x, dtype=np.float64)
    for _ in range(100):
        freq = rng.uniform(2 * np.pi / 16, 2 * np.pi / 4)
        angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        out += np.sin(freq * (np.cos(angle) * x + np.sin(angle) * y) + phase)
    return 128 + 90 * out / np.abs(out).max()


def analytic_pair(kind: str, param, h: int = 48, w: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 frames I0, I1 with I1(x + u(x)) = I0(x) exactly, and u as [2, H, W]."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    dx, dy = x - cx, y - cy
    if kind == "translation":
        u, v = np.full((h, w), param[0]), np.full((h, w), param[1])
        src = (x - param[0], y - param[1])
    elif kind == "rotation":
        c, s = np.cos(np.deg2rad(param)), np.sin(np.deg2rad(param))
        u, v = c * dx - s * dy - dx, s * dx + c * dy - dy
        src = (c * dx + s * dy + cx, -s * dx + c * dy + cy)
    else:  # zoom about the centre
        u, v = (param - 1) * dx, (param - 1) * dy
        src = (dx / param + cx, dy / param + cy)
    i0 = np.round(texture(x, y)).astype(np.uint8)
    i1 = np.round(texture(*src)).astype(np.uint8)
    return i0, i1, np.stack([u, v])


def object_pair(h: int = 64, w: int = 96) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A SynthActions-like pair: a textured disc moving over a differently moving textured
    background, with the exact flow of I0's pixels (the disc's where it covers I0)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    d_bg, d_obj = np.array([0.6, -0.3]), np.array([2.2, 1.4])
    centre, radius = np.array([0.45 * w, 0.5 * h]), 0.3 * h

    def frame(t: float) -> np.ndarray:
        bx, by = x - t * d_bg[0], y - t * d_bg[1]
        ox, oy = x - t * d_obj[0], y - t * d_obj[1]
        inside = (ox - centre[0]) ** 2 + (oy - centre[1]) ** 2 < radius ** 2
        return np.round(np.where(inside, texture(ox, oy, seed=1), texture(bx, by))).astype(np.uint8)

    in_disc = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 < radius ** 2
    gt = np.where(in_disc, d_obj[:, None, None], d_bg[:, None, None])
    return frame(0.0), frame(1.0), gt


def opencv_flow(cfg: FlowConfig, i0: np.ndarray, i1: np.ndarray) -> np.ndarray:
    # A fresh solver per call: OpenCV lowers its nscales for good once an image is small.
    return create_tvl1(cfg).calc(i0, i1, None)


def within(a: np.ndarray, b: np.ndarray, px: float = 0.1) -> float:
    return float((np.linalg.norm(a - b, axis=-1) < px).mean())


def epe(flow: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> float:
    return float(np.linalg.norm(flow - gt, axis=-1)[valid].mean())


def grey(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def death_signal() -> int:
    """The signal this process gets when its parent dies (0: none; p3dbase.cluster.die_with sets it); Linux."""
    import ctypes

    value = ctypes.c_int(0)
    ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
    return value.value
