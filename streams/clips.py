"""Clips from the frame + flow store (`make flow`) for training and validation.

Training: a random window of `clip_len` consecutive frames (RGB) or flow fields (flow), resized to
`resize` (or to a random short side in `scale_jitter`), a random `crop` x `crop` square and a random
horizontal flip (flow: x inverted), computing only the crop's pixels, image by image as the window
is decoded (transforms.CropOut). Validation: `clips_per_video` evenly spaced windows, centre crop.
A video shorter than the clip is looped.

Every random choice of a training clip comes from a generator seeded with (seed, epoch, index), so a
clip does not depend on which worker loads it, on the number of workers or processes, or on whether
the run was resumed: the keys a training ClipDataset takes are (index, epoch) pairs (`EpochSampler`).
Items are returned as uint8 [C, T, H, W] tensors; `streams.transforms.normalize` makes them float.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from flow.jpeg_entropy import EntropyDecoder
from flow.store import Store, VideoFrames, open_store
from streams import transforms
from streams.errors import StreamsError
from streams.gpu_decode import DECODES, HybridClip, JpegClip, window_coefficients
from streams.losses import label_array


def clip_starts(num_images: int, clip_len: int, clips: int) -> list[int]:
    """`clips` evenly spaced window starts in [0, num_images - clip_len] (centre window for one clip)."""
    last = max(num_images - clip_len, 0)
    if clips == 1:
        return [last // 2]
    return [round(last * k / (clips - 1)) for k in range(clips)]


def window(start: int, clip_len: int, num_images: int) -> list[int]:
    """Indices of a window of `clip_len` images from `start`, looping over a video shorter than that."""
    return [(start + k) % num_images for k in range(clip_len)]


def id_array(video_ids: Sequence[str]) -> np.ndarray:
    """Video ids as one fixed-width bytes array (UTF-8; names that are not UTF-8 kept byte for byte)."""
    encoded = [str(v).encode("utf-8", "surrogateescape") for v in video_ids]
    return np.array(encoded, dtype=f"S{max((len(e) for e in encoded), default=1)}")


class ClipDataset(Dataset):
    """(uint8 clip [C, T, H, W], label) for each (video_id, label) item. A label is a class index, or
    the tuple of a multi-label video's labels: then every item's label comes as an int64 row padded with
    -1 (streams.losses.label_array; the loss and accuracy read both forms).

    train=True: one random clip per item, keyed by (index, epoch). train=False: `clips_per_video`
    fixed clips per item, keyed by index = item * clips_per_video + clip. `fast_decode`: JPEGs by
    libjpeg-turbo's fast IDCT and upsampling (train.fast_decode; the training set's only).
    """

    def __init__(self, store: Store | Path | str, items: Sequence[tuple[str, int]], modality: str,
                 clip_len: int = 16, *, train: bool, resize: Sequence[int] = (182, 242), crop: int = 160,
                 scale_jitter: Sequence[int] = (), flip: bool = True, clips_per_video: int = 1, seed: int = 0,
                 fast_decode: bool = False, decode: str = "cpu"):
        self.store = store if isinstance(store, Store) else open_store(store)
        # Two numpy arrays, not a list of Python tuples: a DataLoader worker that touches a list's items
        # writes their reference counts and so copies every page of them (650,000 videos: ~200 MB
        # per worker); the arrays' pages stay shared with the parent (bench/scale.py).
        self.video_ids = id_array([v for v, _ in items])
        self.labels = label_array([label for _, label in items])
        self.modality = transforms.check_modality(modality)
        self.clip_len = clip_len
        self.train = train
        self.resize = tuple(resize)
        self.crop = crop
        self.scale_jitter = tuple(scale_jitter)
        self.flip = flip
        self.clips_per_video = 1 if train else clips_per_video
        self.seed = seed
        self.fast_decode = fast_decode  # libjpeg-turbo's fast IDCT and upsampling (train.fast_decode)
        if decode not in DECODES:
            raise ValueError(f"decode must be one of {', '.join(DECODES)}, got {decode!r}")
        # "cuda": training items are their JPEGs, decoded on the device; "hybrid": their JPEGs' DCT
        # coefficients, the decode finished on the device (streams.gpu_decode)
        self.decode = decode

    def __len__(self) -> int:
        return len(self.video_ids) * self.clips_per_video

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int | torch.Tensor]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        video_id = self.video_ids[index // self.clips_per_video].decode("utf-8", "surrogateescape")
        row = self.labels[index // self.clips_per_video]
        label = int(row) if self.labels.ndim == 1 else torch.from_numpy(row.copy())
        with self.store.open(video_id) as video:
            num = video.num_frames if self.modality == "rgb" else video.num_flows
            if num < 1:
                raise StreamsError(f"video {video_id}: has no {self.modality} images in the store")
            if self.train:
                rng = np.random.default_rng([self.seed, epoch, index])
                start = int(rng.integers(0, max(num - self.clip_len, 0) + 1))
            else:
                rng = None
                start = clip_starts(num, self.clip_len, self.clips_per_video)[index % self.clips_per_video]
            indices = window(start, self.clip_len, num)
            if self.train and self.decode == "cuda":
                size, top, left, flip = self._choices(rng, video.height, video.width)
                return JpegClip(video.jpeg_blobs(self.modality, indices), self.modality, size, top, left, self.crop,
                                flip), label
            if self.train and self.decode == "hybrid":
                size, top, left, flip = self._choices(rng, video.height, video.width)
                if "_entropy" not in self.__dict__:  # each worker its own (tables, reused arrays)
                    self._entropy = EntropyDecoder()
                coefficients = window_coefficients(video, self.modality, indices, self._entropy)
                return HybridClip(*coefficients, self.modality, size, top, left, self.crop, flip), label
            if self.train:
                return self._augment(video, indices, rng), label
            shape = (len(indices), video.height, video.width, transforms.CHANNELS[self.modality])
            read = video.rgb if self.modality == "rgb" else video.flow
            clip = read(indices, self._buffer("decoded", shape), fast=self.fast_decode)
        return transforms.to_chw(self._centre(clip)), label

    def _buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """An array this process reuses from clip to clip (each DataLoader worker has its own): a fresh
        4 MB array per clip costs its page faults again, about a tenth of loading it (bench/loader.py)."""
        buffers = self.__dict__.setdefault("_buffers", {})
        if name not in buffers or buffers[name].shape != shape:
            buffers[name] = np.empty(shape, np.uint8)
        return buffers[name]

    def _choices(self, rng: np.random.Generator, height: int, width: int) -> tuple[tuple[int, int], int, int, bool]:
        """A training clip's random choices, in the order they are drawn: (size to resize to, crop top,
        crop left, flip), for a video of height x width (the CPU and the GPU path draw the same)."""
        if self.scale_jitter:
            short = int(rng.integers(self.scale_jitter[0], self.scale_jitter[1] + 1))
            size = transforms.short_side_size(height, width, short)
        else:
            size = (int(self.resize[0]), int(self.resize[1]))
        top = int(rng.integers(0, size[0] - self.crop + 1))
        left = int(rng.integers(0, size[1] - self.crop + 1))
        return size, top, left, bool(self.flip and rng.random() < 0.5)

    def _augment(self, video: VideoFrames, indices: list[int], rng: np.random.Generator) -> torch.Tensor:
        """The window's images decoded one at a time, each resized (or its scale jittered), cropped and
        flipped as drawn while it is in the CPU's cache, computing only the crop's pixels
        (transforms.CropOut); flow's x and y are decoded into planes, never interleaved."""
        size, top, left, flip = self._choices(rng, video.height, video.width)
        out = transforms.CropOut((video.height, video.width), len(indices), size, top, left, self.crop,
                                 modality=self.modality, flip=flip)
        if self.modality == "rgb":
            image = self._buffer("image", (video.height, video.width, 3))
            for k in video.images("rgb", indices, image, fast=self.fast_decode):
                out.frame(k, image)
        else:
            planes = self._buffer("image", (2, video.height, video.width))
            for k in video.images("flow", indices, planes, fast=self.fast_decode):
                out.plane(0, k, planes[0])
                out.plane(1, k, planes[1])
        return out.result()

    def _centre(self, clip: np.ndarray) -> np.ndarray:
        clip = transforms.resize_for_test(clip, self.resize, self.scale_jitter)
        return np.ascontiguousarray(transforms.center_crop(clip, self.crop))


class EpochSampler(Sampler):
    """This process's share of an epoch (DistributedSampler order) as (index, epoch) keys.

    `set_epoch(epoch, skip)` picks the epoch's permutation and starts after its first `skip` indices of
    this process, which is how a resumed run continues in the middle of an epoch.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.shard = DistributedSampler(range(size), num_replicas=world_size, rank=rank, shuffle=True,
                                        seed=seed, drop_last=True)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        self.shard.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, index in enumerate(self.shard):
            if position >= self.skip:
                yield index, self.epoch

    def __len__(self) -> int:
        return max(len(self.shard) - self.skip, 0)

