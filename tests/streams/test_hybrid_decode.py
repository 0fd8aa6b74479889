"""train.decode = "hybrid": workers entropy-decode, the trainer's device finishes the decode (streams.gpu_decode)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from flow.jpeg_entropy import EntropyDecoder
from flow.store import open_store
from streams import gpu_decode
from streams.clips import ClipDataset
from streams.config import TrainConfig
from streams.distributed import DistContext
from streams.errors import StreamsError
from streams.loaders import training_loaders
from streams.train import clip_datasets
from tests.builders import make_toy_store
from tests.flow.test_jpeg_entropy import jpeg, textured


@pytest.mark.parametrize("sampling", [0x221111, 0x211111, 0x121111, 0x111111, None])  # 4:2:0, 4:2:2, 4:4:0, 4:4:4
def test_coefficients_to_pixels_is_libjpegs_decode(sampling):
    """Dequantise, inverse DCT, upsample, colour-convert: within a few levels of libjpeg-turbo's integer
    decode of the same file, a twentieth of a level on average (its integer IDCT against a float one;
    the upsampling's and colour conversion's rounding are libjpeg's)."""
    img = textured(45, 61, 0 if sampling is None else 3, seed=5)
    blob = jpeg(img) if sampling is None else jpeg(img, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling)
    coefs, quant, layout = EntropyDecoder()(blob)
    got = gpu_decode.coefficients_to_pixels(torch.from_numpy(coefs)[None], torch.from_numpy(quant)[None], layout)
    expected = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_UNCHANGED)
    expected = expected[None, None] if sampling is None else expected.transpose(2, 0, 1)[None]
    diff = (got.int() - torch.from_numpy(expected).int()).abs()
    assert got.dtype == torch.uint8 and got.shape == expected.shape
    assert diff.max() <= (1 if sampling is None else 3) and diff.float().mean() < 0.1


@pytest.mark.parametrize("modality", ["rgb", "flow"])
@pytest.mark.parametrize("jitter", [(), (30, 40)])
def test_hybrid_decode_gives_the_cpu_clips(tmp_path, modality, jitter):
    """Workers hand over the window's coefficients and the clip's random choices; batch.to(device)
    finishes the decode, resizes, crops and flips: the CPU path's clips (same window, crop and flip,
    flow's x inverted when flipped) within the decodes' and resizes' rounding."""
    items = make_toy_store(tmp_path, ["a", "b"], per_class=3, width=40, codec="jpeg")
    kwargs = dict(train=True, resize=(30, 36), crop=24, scale_jitter=jitter, seed=4)
    cpu = ClipDataset(tmp_path, items, modality, 8, **kwargs)
    hybrid = ClipDataset(tmp_path, items, modality, 8, decode="hybrid", **kwargs)
    keys = [(k, epoch) for k in range(6) for epoch in (0, 1)]
    batch, labels = gpu_decode.collate([hybrid[key] for key in keys])
    assert isinstance(batch, gpu_decode.HybridBatch) and labels.tolist() == [cpu[key][1] for key in keys]
    layout, counts, positions, values, quant, _ = batch.groups[0]
    assert len(batch.groups) == 1 and counts.dtype == positions.dtype == torch.uint8 and values.dtype == torch.int16
    assert counts.shape == (12, 8 * (2 if modality == "flow" else 1), layout.blocks) and len(values) == counts.sum()
    got = batch.pin_memory().to("cpu").int() if torch.cuda.is_available() else batch.to("cpu").int()
    expected = torch.stack([cpu[key][0] for key in keys]).int()
    assert got.shape == expected.shape
    diff = (got - expected).abs()
    flow = modality == "flow"
    assert diff.max() <= (2 if flow else 4) and diff.float().mean() < (0.1 if flow else 0.15)
    assert any(hybrid[key][0].flip for key in keys) and not all(hybrid[key][0].flip for key in keys)


def test_the_sparse_coefficients_are_the_dense_ones_and_smaller():
    """Every block's DC and its nonzero AC terms, in scan order: scattered on the device they are the
    dense array, in fewer bytes: a smooth frame's about half the dense int16 array's (a real q95
    340x256 frame's 40%), a still flow image's (all 128) a 40th."""
    decoder = EntropyDecoder()
    for img in (cv2.GaussianBlur(textured(64, 96, 3, seed=2), (5, 5), 0), np.full((64, 96), 128, np.uint8)):
        blob = jpeg(img)
        dense = decoder(blob)[0].copy()
        got = decoder.sparse(blob)
        assert (got.counts >= 1).all() and (got.positions[np.cumsum(got.counts) - got.counts] == 0).all()
        assert (got.values[got.positions != 0] != 0).all()
        scattered = gpu_decode.scatter_coefficients(torch.from_numpy(got.counts)[None],
                                                    torch.from_numpy(got.positions), torch.from_numpy(got.values),
                                                    got.layout)
        assert torch.equal(scattered[0], torch.from_numpy(dense))
        sparse_bytes = 3 * len(got.values) + len(got.counts)
        assert sparse_bytes < dense.nbytes * (0.6 if img.ndim == 3 else 0.05)


def test_a_batch_of_two_frame_sizes_decodes_each_in_its_group(tmp_path):
    """Clips of videos of different sizes are grouped by layout and come back in the batch's order."""
    items = make_toy_store(tmp_path / "small", ["a"], per_class=1, width=40, codec="jpeg")
    make_toy_store(tmp_path / "big", ["a"], per_class=1, width=56, height=40, codec="jpeg")
    kwargs = dict(train=True, resize=(30, 36), crop=24, seed=1)
    clips = [ClipDataset(tmp_path / name, items, "rgb", 8, decode=decode, **kwargs)[(0, 0)][0]
             for name in ("small", "big", "small") for decode in ("hybrid", "cpu")]
    batch, _ = gpu_decode.collate([(clip, 0) for clip in clips[::2]])
    assert [len(group[-1]) for group in batch.groups] == [2, 1] and batch.groups[0][-1] == [0, 2]
    got = batch.to("cpu").int()
    expected = torch.stack(clips[1::2]).int()
    assert (got - expected).abs().max() <= 4 and (got - expected).abs().float().mean() < 0.15


def test_a_training_step_takes_a_hybrid_batch(tmp_path):
    from streams.train import train_step

    items = make_toy_store(tmp_path, ["a", "b"], per_class=2, codec="jpeg")
    dataset = ClipDataset(tmp_path, items, "flow", 8, train=True, resize=(30, 36), crop=24, decode="hybrid")
    batch, labels = gpu_decode.collate([dataset[(k, 0)] for k in range(4)])
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 8 * 24 * 24, 2))
    torch.nn.init.zeros_(net[1].weight)
    torch.nn.init.zeros_(net[1].bias)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-6)
    before = net[1].weight.detach().clone()
    loss, _ = train_step(net, optimizer, torch.amp.GradScaler("cpu", enabled=False), batch, labels, "flow",
                         device=torch.device("cpu"))
    assert abs(float(loss) - np.log(2)) < 1e-5 and not torch.equal(net[1].weight, before)


@pytest.mark.parametrize("workers", [0, 1])
def test_the_loader_makes_hybrid_batches_for_training_only(tmp_path, workers):
    """From a worker the batch crosses in shared memory (the sparse arrays concatenated there); the
    clips are those the trainer's own process makes."""
    items = make_toy_store(tmp_path, ["a", "b"], per_class=2, codec="jpeg")
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), owns_group=False)
    cfg = TrainConfig(decode="hybrid", resize=[30, 36], crop=24)
    train_loader, sampler, val_loader = training_loaders(
        *clip_datasets(open_store(tmp_path), items, items, "rgb", cfg), ctx=ctx, batch=2, workers=workers, seed=0)
    batch, labels = next(iter(train_loader))
    assert isinstance(batch, gpu_decode.HybridBatch) and next(iter(val_loader))[0].dtype == torch.uint8
    if workers:
        assert all(t.is_shared() for _, c, p, v, _, _ in batch.groups for t in (c, p, v))
    keys = list(sampler)[:2]
    expected = gpu_decode.collate([train_loader.dataset[key] for key in keys])[0].to("cpu")
    assert torch.equal(batch.to("cpu"), expected)


def test_hybrid_decode_needs_a_jpeg_store(toy_store):
    root, train, _ = toy_store  # raw codec
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), owns_group=False)
    with pytest.raises(StreamsError, match='decode = "hybrid" decodes JPEGs, but .* stores rgb as raw'):
        training_loaders(*clip_datasets(open_store(root), train, [], "rgb", TrainConfig(decode="hybrid")), ctx=ctx,
                         batch=2, workers=0, seed=0)
    with pytest.raises(ValueError, match="'cpu', 'cuda' or 'hybrid', got 'gpu'"):
        TrainConfig(decode="gpu").validate()


class Video:
    """A stand-in for a store's video: the JPEGs `jpeg_blobs` gives."""

    def __init__(self, blobs: list[bytes], height: int, width: int):
        self.blobs, self.height, self.width, self.video_id = blobs, height, width, "cls/v_bad"

    def jpeg_blobs(self, modality, indices):
        return [np.frombuffer(b, np.uint8) for b in self.blobs[:len(indices) * (1 if modality == "rgb" else 2)]]


@pytest.mark.parametrize("case, message", [
    ("progressive", "video cls/v_bad: frame 1: not a JPEG this decoder reads: progressive.*train.decode = \"cpu\""),
    ("size", "video cls/v_bad: frame 0: JPEG is 32x24, the video 40x24"),
    ("mixed", r"video cls/v_bad: frame 1: JPEG is 40x24 with sampling \(\(1, 1\), .*, expected 40x24 with \(\(2, 2\)"),
    ("truncated", "video cls/v_bad: frame 1: (corrupt JPEG data|not a JPEG this decoder reads)"),
    ("grey", "video cls/v_bad: frame 0: a grey JPEG where a colour frame belongs"),
])
def test_a_jpeg_it_cannot_read_names_the_video_and_image(case, message):
    img = textured(24, 40, 3)
    good = jpeg(img)
    second = {"progressive": jpeg(img, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
              "size": good, "mixed": jpeg(img, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, 0x111111),
              "truncated": good[:len(good) - 40], "grey": jpeg(img[..., 1])}[case]
    first = {"size": jpeg(cv2.resize(img, (32, 24))), "grey": second}.get(case, good)
    blobs = [first, second]
    with pytest.raises(StreamsError, match=message):
        gpu_decode.window_coefficients(Video(blobs, 24, 40), "rgb", [0, 1], EntropyDecoder())
