"""Training clips decoded on the GPU (`train.decode = "cuda"`): nvJPEG through torchvision.

With it the DataLoader workers only read: a training item is its window's JPEG files as they lie in
the store (`JpegClip`) with the clip's random choices (size, crop corner, flip), drawn exactly as the
CPU path draws them; the collate packs a batch into one byte tensor (`JpegBatch`), and the trainer's
`batch.to(device)` decodes every JPEG of the batch in one torchvision.io.decode_jpeg call on that
device, resizes (bilinear, half-pixel centres as cv2.INTER_LINEAR), crops and flips there, into the
uint8 [B, C, T, crop, crop] batch the CPU path gives (to about a level: the two resizes round
differently). A worker then spends no CPU on decoding, ~60-70% of a clip (BENCHMARKS.md, "Training
loader"). torchvision is imported on first use only: the CPU path never needs it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from streams.errors import StreamsError

DECODES = ("cpu", "cuda")
# Decoder: (JPEG byte tensors, grey, device) -> [C, H, W] uint8 tensors on the device, RGB order for
# colour. The default is torchvision's; tests put a CPU stand-in here.
Decoder = Callable[[list[torch.Tensor], bool, torch.device], list[torch.Tensor]]


def torchvision_decoder(blobs: list[torch.Tensor], grey: bool, device: torch.device) -> list[torch.Tensor]:
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        raise StreamsError('train.decode = "cuda" needs torchvision (the nvjpeg extra: pip install torchvision, '
                           "the build matching torch)") from None
    mode = ImageReadMode.GRAY if grey else ImageReadMode.RGB
    return decode_jpeg(blobs, mode=mode, device=device)


decoder: Decoder = torchvision_decoder


@dataclass
class JpegClip:
    """One training clip undecoded: its JPEGs (T frames, or T x and y flow images) and random choices."""

    jpegs: list[np.ndarray]
    modality: str
    size: tuple[int, int]  # (height, width) to resize to
    top: int
    left: int
    crop: int
    flip: bool


@dataclass
class JpegBatch:
    """A batch of JpegClips in a few tensors (one byte tensor crosses from a worker, not 16 x 16 small ones):
    `data` every JPEG back to back, `lengths` [B, n] bytes of each, `choices` [B, 6] (height, width,
    top, left, crop, flip)."""

    data: torch.Tensor
    lengths: torch.Tensor
    choices: torch.Tensor
    modality: str

    def pin_memory(self) -> JpegBatch:
        return JpegBatch(self.data.pin_memory(), self.lengths, self.choices, self.modality)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> torch.Tensor:
        """Decode, resize, crop and flip on `device`: uint8 [B, C, T, crop, crop] as the CPU path gives."""
        return decode_batch(self, torch.device(device))


def collate(items: Sequence[Any]) -> Any:
    """The DataLoader's collate: (JpegClip, label) items into (JpegBatch, labels); others as torch's."""
    if not items or not isinstance(items[0], tuple) or not isinstance(items[0][0], JpegClip):
        return default_collate(items)
    clips = [clip for clip, _ in items]
    blobs = [b for clip in clips for b in clip.jpegs]
    data = torch.from_numpy(np.concatenate(blobs)) if blobs else torch.empty(0, dtype=torch.uint8)
    lengths = torch.tensor([[len(b) for b in clip.jpegs] for clip in clips], dtype=torch.int64)
    choices = torch.tensor([[*c.size, c.top, c.left, c.crop, int(c.flip)] for c in clips], dtype=torch.int64)
    return JpegBatch(data, lengths, choices, clips[0].modality), default_collate([label for _, label in items])


def decode_batch(batch: JpegBatch, device: torch.device) -> torch.Tensor:
    flow = batch.modality == "flow"
    blobs = list(torch.split(batch.data, batch.lengths.flatten().tolist()))
    frames = decoder(blobs, flow, device)  # one call: nvJPEG decodes the batch together
    per_clip = batch.lengths.shape[1]
    out = []
    for b, (height, width, top, left, crop, flip) in enumerate(batch.choices.tolist()):
        clip = torch.stack(frames[b * per_clip:(b + 1) * per_clip])  # [T, C, H, W] or [2T, 1, H, W]
        if flow:  # x, y, x, y, ... -> [T, 2, H, W]
            clip = clip.view(-1, 2, *clip.shape[2:])
        else:  # RGB -> the store's BGR
            clip = clip.flip(1)
        resized = F.interpolate(clip.float(), size=(height, width), mode="bilinear", align_corners=False)
        view = resized[:, :, top:top + crop, left:left + crop]
        if flip:
            view = view.flip(-1)
        u8 = view.round_().clamp_(0, 255).to(torch.uint8)
        if flip and flow:
            u8[:, 0] = 255 - u8[:, 0]
        out.append(u8.permute(1, 0, 2, 3))  # [C, T, crop, crop]
    return torch.stack(out)
