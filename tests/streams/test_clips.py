"""Clips from the store: windows in bounds, deterministic augmentation, sharding, errors."""
from __future__ import annotations

import ctypes
import importlib.util
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from flow import codec
from flow.errors import FlowError
from flow.store import open_store
from streams import gpu_decode, transforms
from streams.clips import ClipDataset, EpochSampler, clip_starts, window
from streams.config import TrainConfig
from streams.distributed import DistContext
from streams.errors import StreamsError
from streams.loaders import training_loaders
from streams.train import clip_datasets
from tests.builders import make_toy_store


@pytest.mark.parametrize("num_images", [1, 5, 15, 16, 17, 100])
@pytest.mark.parametrize("clips", [1, 3, 10])
def test_windows_stay_in_bounds(num_images, clips):
    starts = clip_starts(num_images, 16, clips)
    assert len(starts) == clips and starts == sorted(starts)
    for start in starts:
        indices = window(start, 16, num_images)
        assert len(indices) == 16 and all(0 <= i < num_images for i in indices)
        if num_images >= 16:
            assert indices == list(range(start, start + 16))
    if clips > 1 and num_images > 16:
        assert starts[0] == 0 and starts[-1] == num_images - 16


def test_training_clips(toy_store):
    root, train, _ = toy_store
    for modality, channels in (("rgb", 3), ("flow", 2)):
        ds = ClipDataset(root, train, modality, 8, train=True, resize=(30, 36), crop=24, seed=3)
        clip, label = ds[(5, 0)]
        assert clip.shape == (channels, 8, 24, 24) and clip.dtype == torch.uint8 and label == train[5][1]
        assert torch.equal(ds[(5, 0)][0], clip)  # (index, epoch) fixes every random choice
        assert any(not torch.equal(ds[(5, e)][0], clip) for e in range(1, 6))


@pytest.mark.parametrize("modality", ["rgb", "flow"])
@pytest.mark.parametrize("flip", [False, True])
def test_clips_do_not_share_the_reused_buffers(toy_store, modality, flip):
    """A worker decodes and resizes every clip into the same arrays: a clip handed out earlier must not
    change when the next one is loaded."""
    root, train, _ = toy_store
    ds = ClipDataset(root, train, modality, 8, train=True, resize=(30, 36), crop=24, seed=1, flip=flip)
    first = ds[(0, 0)][0]
    kept = first.clone()
    for index in range(1, 6):
        ds[(index, 0)]
    assert torch.equal(first, kept) and torch.equal(ds[(0, 0)][0], kept)


@pytest.mark.parametrize("modality", ["rgb", "flow"])
@pytest.mark.parametrize("jitter", [(), (26, 40)])
def test_training_clips_resize_only_the_crop(tmp_path, modality, jitter):
    """A training clip is the crop of its window resized whole, flipped (flow: x inverted) as drawn,
    to within a level (transforms.resized_crop_chw: the whole frame is no longer resized; the
    tolerance is argued in tests/streams/test_transforms.py), the same with a jpeg store and with
    fast_decode's decode of the window."""
    items = make_toy_store(tmp_path, ["a", "b"], per_class=3, height=36, width=48, codec="jpeg")
    ds = ClipDataset(tmp_path, items, modality, 8, train=True, resize=(30, 40), crop=24, scale_jitter=jitter, seed=5)
    flips = set()
    for key in [(k, epoch) for k in range(6) for epoch in range(3)]:
        rng = np.random.default_rng([5, key[1], key[0]])
        with ds.store.open(items[key[0]][0]) as video:
            num = video.num_frames if modality == "rgb" else video.num_flows
            start = int(rng.integers(0, num - 8 + 1))
            frames = (video.rgb if modality == "rgb" else video.flow)(range(start, start + 8))
        size, top, left, flip = ds._choices(rng, *frames.shape[1:3])
        expected = transforms.flipped_chw(transforms.crop(transforms.resize_clip(frames, size), top, left, 24),
                                          modality, flip)
        change = (ds[key][0].int() - expected.int()).abs()
        assert change.max() <= 2 and change.float().mean() < 0.3
        flips.add(flip)
    assert flips == {False, True}


def test_training_windows_cover_the_video(toy_store):
    """Over many epochs the window start takes every value in [0, N - T] and nothing else."""
    root, train, _ = toy_store
    ds = ClipDataset(root, train[:1], "rgb", 8, train=True, resize=(32, 32), crop=32, flip=False)
    with ds.store.open(train[0][0]) as video:
        frames = video.rgb(range(video.num_frames))
    starts = set()
    for epoch in range(60):
        clip = ds[(0, epoch)][0].permute(1, 2, 3, 0).numpy()
        matches = [s for s in range(len(frames) - 8 + 1) if np.array_equal(frames[s:s + 8], clip)]
        assert len(matches) == 1
        starts.add(matches[0])
    assert starts == set(range(len(frames) - 8 + 1))


def test_validation_clips_are_centred(toy_store):
    root, _, val = toy_store
    ds = ClipDataset(root, val, "flow", 4, train=False, resize=(32, 32), crop=20, clips_per_video=3)
    assert len(ds) == 3 * len(val)
    clip, label = ds[4]
    assert clip.shape == (2, 4, 20, 20) and label == val[1][1]
    with ds.store.open(val[1][0]) as video:
        flows = video.flow(range(video.num_flows))
    start = clip_starts(len(flows), 4, 3)[1]
    assert np.array_equal(clip.permute(1, 2, 3, 0).numpy(), flows[start:start + 4, 6:26, 6:26])


def test_scale_jitter(toy_store):
    """Each training clip is a crop of the video resized to a short side in [20, 40], and the sides
    vary from clip to clip (found by searching every side and offset for the clip's first frame). The
    crop is resized alone (transforms.resized_crop_chw): within a level of the whole frame's resize,
    and no other side comes that close."""
    root, train, _ = toy_store
    frames_per_video = 12  # the whole toy video: the window always starts at 0
    ds = ClipDataset(root, train[:2], "rgb", frames_per_video, train=True, crop=20, scale_jitter=(20, 40), flip=False)
    videos = [ds.store.open(v).rgb(range(frames_per_video)) for v, _ in train[:2]]
    resized = [{side: transforms.resize_short(frames, side).astype(np.int16) for side in range(20, 41)}
               for frames in videos]
    sides = []
    for epoch in range(12):
        for index in range(2):
            clip = ds[(index, epoch)][0].permute(1, 2, 3, 0).numpy().astype(np.int16)
            assert clip.shape == (frames_per_video, 20, 20, 3)
            found = []
            for side, big in resized[index].items():
                views = np.lib.stride_tricks.sliding_window_view(big[0], (20, 20, 3))[:, :, 0]
                change = np.abs(views - clip[0]).mean(axis=(2, 3, 4))
                top, left = np.unravel_index(change.argmin(), change.shape)
                if change[top, left] < 0.5:  # a level is 1/255 of the range: rounding, not another view
                    found.append(side)
                    whole = np.abs(big[:, top:top + 20, left:left + 20] - clip)
                    assert whole.max() <= 1 and whole.mean() < 0.2
            assert len(found) == 1, f"clip {(index, epoch)} matches sides {found}"
            sides += found
    assert len(set(sides)) >= 8 and min(sides) >= 20 and max(sides) <= 40


def test_sampler_shards_the_epoch_and_resumes_mid_epoch():
    full = list(EpochSampler(11, seed=4))
    assert sorted(i for i, _ in full) == list(range(11))
    shards = [list(EpochSampler(11, rank, 2, seed=4)) for rank in (0, 1)]
    assert all(len(s) == 5 for s in shards)
    assert {i for s in shards for i, _ in s} <= set(range(11)) and not set(shards[0]) & set(shards[1])
    sampler = EpochSampler(11, seed=4)
    sampler.set_epoch(3)
    epoch3 = list(sampler)
    assert epoch3 != full and all(e == 3 for _, e in epoch3)
    sampler.set_epoch(3, skip=4)
    assert list(sampler) == epoch3[4:] and len(sampler) == 7


def test_missing_video_and_store(toy_store, tmp_path):
    root, _, _ = toy_store
    with pytest.raises(FlowError, match="absent/v1"):
        ClipDataset(root, [("absent/v1", 0)], "rgb", 4, train=False, resize=(32, 32), crop=32)[0]
    with pytest.raises(FlowError, match="store.json"):
        ClipDataset(tmp_path, [], "rgb", train=True)


def test_fast_and_gpu_decode_reach_training_clips_only(tmp_path):
    """train.fast_decode: the training set's JPEGs by libjpeg-turbo's fast decode (other pixels than
    the accurate decode, same window, crop and flip), the validation set's accurate; train.decode
    likewise."""
    items = make_toy_store(tmp_path, ["a", "b"], per_class=2, codec="jpeg")
    kwargs = dict(train=True, resize=(30, 36), crop=24, seed=2)
    accurate = ClipDataset(tmp_path, items, "rgb", 8, **kwargs)[(1, 0)][0]
    fast = ClipDataset(tmp_path, items, "rgb", 8, fast_decode=True, **kwargs)[(1, 0)][0]
    change = (fast.int() - accurate.int()).abs().float()
    if codec.jpeg_decoder() == "simplejpeg":
        assert 0 < change.mean() < 8  # about JPEG q95's own change on these noisy colour frames
    else:  # the cv2 fallback decodes accurately
        assert change.max() == 0
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), owns_group=False)
    train_loader, _, val_loader = training_loaders(
        *clip_datasets(open_store(tmp_path), items, items, "rgb", TrainConfig(fast_decode=True)), ctx=ctx, batch=2,
        workers=0, seed=0)
    assert train_loader.dataset.fast_decode and not val_loader.dataset.dataset.fast_decode
    # train.decode = "cuda" the same way: training batches of JPEGs, validation decoded by the workers
    cuda = TrainConfig(decode="cuda", resize=[30, 36], crop=24)
    train_loader, _, val_loader = training_loaders(*clip_datasets(open_store(tmp_path), items, items, "rgb", cuda),
                                                   ctx=ctx, batch=2, workers=0, seed=0)
    assert isinstance(next(iter(train_loader))[0], gpu_decode.JpegBatch)
    assert next(iter(val_loader))[0].dtype == torch.uint8


FAULTS = """
import resource, sys
import numpy as np
from streams.loaders import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
faults = []
for _ in range(3):  # a worker's batches: 16 clips of 3x16x160x160 allocated, collated, freed
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    batch = [np.ones((3, 16, 160, 160), np.uint8) for _ in range(16)]
    del batch
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
print(faults[-1])
"""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"), reason="glibc's allocator only")
def test_workers_keep_the_memory_of_the_last_batch():
    """A DataLoader worker (streams.loaders.worker_init) reuses the pages of the batch it freed: without
    keep_freed_memory glibc returns them and faults all ~4,800 in again for every batch."""
    faults = {mode: int(subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True,
                                       check=True, cwd=Path(__file__).resolve().parents[2]).stdout)
              for mode in ("keep", "default")}
    assert faults["keep"] < 100 < 4000 < faults["default"]


def cv2_decoder(blobs: list[torch.Tensor], grey: bool, device: torch.device) -> list[torch.Tensor]:
    """A CPU stand-in for torchvision's nvJPEG decode_jpeg: [C, H, W] uint8, RGB order for colour."""
    images = [cv2.imdecode(b.numpy(), cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR) for b in blobs]
    return [torch.from_numpy(np.ascontiguousarray(i[None] if grey else i[..., ::-1].transpose(2, 0, 1)))
            for i in images]


@pytest.mark.parametrize("modality", ["rgb", "flow"])
@pytest.mark.parametrize("jitter", [(), (30, 40)])
def test_gpu_decode_gives_the_cpu_clips(tmp_path, monkeypatch, modality, jitter):
    """train.decode = "cuda": workers hand over a window's JPEGs and the clip's random choices, the
    trainer's batch.to(device) decodes, resizes, crops and flips: the CPU path's clips (same window,
    crop and flip, flow's x inverted when flipped) to within the two resizes' rounding."""
    monkeypatch.setattr(gpu_decode, "decoder", cv2_decoder)
    items = make_toy_store(tmp_path, ["a", "b"], per_class=3, width=40, codec="jpeg")
    kwargs = dict(train=True, resize=(30, 36), crop=24, scale_jitter=jitter, seed=4)
    cpu = ClipDataset(tmp_path, items, modality, 8, **kwargs)
    gpu = ClipDataset(tmp_path, items, modality, 8, decode="cuda", **kwargs)
    keys = [(k, epoch) for k in range(6) for epoch in (0, 1)]
    batch, labels = gpu_decode.collate([gpu[key] for key in keys])
    assert isinstance(batch, gpu_decode.JpegBatch) and labels.tolist() == [cpu[key][1] for key in keys]
    got = batch.to("cpu").int()
    expected = torch.stack([cpu[key][0] for key in keys]).int()
    assert got.shape == expected.shape and got.dtype == torch.int32
    assert (got - expected).abs().max() <= 2 and (got - expected).abs().float().mean() < 0.3
    assert any(gpu[key][0].flip for key in keys) and not all(gpu[key][0].flip for key in keys)


def test_gpu_decode_needs_a_jpeg_store(toy_store):
    """Refused in one line before training starts (and by a clip of a pack in another codec)."""
    root, train, _ = toy_store  # raw codec
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), owns_group=False)
    with pytest.raises(StreamsError, match='decode = "cuda" decodes JPEGs, but .* stores flow as raw'):
        training_loaders(*clip_datasets(open_store(root), train, [], "flow", TrainConfig(decode="cuda")), ctx=ctx,
                         batch=2, workers=0, seed=0)
    with pytest.raises(FlowError, match="not JPEG"):
        ClipDataset(root, train, "rgb", 8, train=True, resize=(30, 36), crop=24, decode="cuda")[(0, 0)]
    with pytest.raises(ValueError, match="decode"):
        ClipDataset(root, train, "rgb", 8, train=True, decode="gpu")


def test_a_training_step_takes_a_jpeg_batch(tmp_path, monkeypatch):
    """train_step moves its batch with `clips.to(device)`: a JpegBatch decodes there and trains."""
    from streams.train import train_step

    monkeypatch.setattr(gpu_decode, "decoder", cv2_decoder)
    items = make_toy_store(tmp_path, ["a", "b"], per_class=2, codec="jpeg")
    dataset = ClipDataset(tmp_path, items, "rgb", 8, train=True, resize=(30, 36), crop=24, decode="cuda")
    batch, labels = gpu_decode.collate([dataset[(k, 0)] for k in range(4)])
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 24 * 24, 2))
    torch.nn.init.zeros_(net[1].weight)  # equal scores: a loss of ln 2 and a gradient, whatever the clips
    torch.nn.init.zeros_(net[1].bias)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-6)
    before = net[1].weight.detach().clone()
    loss, correct = train_step(net, optimizer, torch.amp.GradScaler("cpu", enabled=False), batch, labels, "rgb",
                               device=torch.device("cpu"))
    assert abs(float(loss) - np.log(2)) < 1e-5 and 0 <= int(correct) <= 4 and not torch.equal(net[1].weight, before)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_gpu_decode_without_torchvision_says_so(tmp_path):
    items = make_toy_store(tmp_path, ["a"], per_class=1, codec="jpeg")
    dataset = ClipDataset(tmp_path, items, "rgb", 8, train=True, resize=(30, 36), crop=24, decode="cuda")
    batch, _ = gpu_decode.collate([dataset[(0, 0)]])
    with pytest.raises(StreamsError, match="nvjpeg extra"):
        batch.to("cpu")
