"""Training clips decoded on the trainer's device: all of it (`train.decode = "cuda"`: nvJPEG through
torchvision), or all but the entropy decoding (`train.decode = "hybrid"`).

With it the DataLoader workers only read: a training item is its window's JPEG files as they lie in
the store (`JpegClip`) with the clip's random choices (size, crop corner, flip), drawn exactly as the
CPU path draws them; the collate packs a batch into one byte tensor (`JpegBatch`), and the trainer's
`batch.to(device)` decodes every JPEG of the batch in one torchvision.io.decode_jpeg call on that
device, resizes (bilinear, half-pixel centres as cv2.INTER_LINEAR), crops and flips there, into the
uint8 [B, C, T, crop, crop] batch the CPU path gives (to about a level: the two resizes round
differently). A worker then spends no CPU on decoding, ~60-70% of a clip (BENCHMARKS.md, "Training
loader"). torchvision is imported on first use only: the CPU path never needs it.

The hybrid decode splits a JPEG as nvJPEG's hybrid backend does, with nothing beyond the project's
own dependencies: a worker entropy-decodes each JPEG of the window into its quantised DCT coefficients
(flow.jpeg_entropy, numba), 60-78% of libjpeg-turbo's CPU for a q95 frame; the batch crosses as
sparse coefficients (`HybridBatch`: each block's DC and nonzero AC terms), and `batch.to(device)`
scatters them, dequantises, inverse-transforms, upsamples the chroma (libjpeg's "fancy" triangle
filter and its rounding), converts JFIF YCbCr to BGR, and then resizes, crops and flips as the
nvJPEG path does. Pixels are within a few levels of libjpeg-turbo's integer decode, 0.03-0.06 on
average for q95 frames (its integer IDCT against a float one; up to ~0.25 for tiny or low-quality
images; tests/streams/test_hybrid_decode.py). It runs on any device: on a CPU the inverse transform
moves to the trainer's process, which saves nothing, so it is for GPUs.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate, get_worker_info

from flow.codec import CodecError
from flow.jpeg_entropy import EntropyDecoder, Layout
from streams.errors import StreamsError

DECODES = ("cpu", "cuda", "hybrid")
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


@dataclass
class HybridClip:
    """One training clip entropy-decoded: its n images' coefficients as flow.jpeg_entropy.Sparse gives
    them, back to back (`counts` uint8 [n, blocks], `positions` uint8 and `values` int16 [entries]),
    their quantisation tables int32 [n, components, 64] (n: T frames, or T x and y flow images in
    turn), their layout, and the clip's random choices."""

    counts: np.ndarray
    positions: np.ndarray
    values: np.ndarray
    quant: np.ndarray
    layout: Layout
    modality: str
    size: tuple[int, int]
    top: int
    left: int
    crop: int
    flip: bool


@dataclass
class HybridBatch:
    """A batch of HybridClips, those of one layout (one frame size: the usual case) together: `groups`
    of (layout, counts [k, n, blocks], positions and values [entries] of the k clips back to back,
    quant [k, n, components, 64], positions of the k clips in the batch); `choices` [B, 6] as
    JpegBatch's."""

    groups: list[tuple[Layout, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[int]]]
    choices: torch.Tensor
    modality: str

    def pin_memory(self) -> HybridBatch:
        return HybridBatch([(layout, counts.pin_memory(), positions.pin_memory(), values.pin_memory(), quant, at)
                            for layout, counts, positions, values, quant, at in self.groups], self.choices,
                           self.modality)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> torch.Tensor:
        """Finish the decode on `device`, resize, crop and flip: uint8 [B, C, T, crop, crop]."""
        device = torch.device(device)
        flow = self.modality == "flow"
        clips: list[torch.Tensor] = [torch.empty(0)] * len(self.choices)
        for layout, counts, positions, values, quant, at in self.groups:
            k, n = counts.shape[:2]
            coefs = scatter_coefficients(counts.to(device, non_blocking=non_blocking).flatten(0, 1),
                                         positions.to(device, non_blocking=non_blocking),
                                         values.to(device, non_blocking=non_blocking), layout)
            pixels = coefficients_to_pixels(coefs, quant.to(device).flatten(0, 1), layout)  # [k * n, C, H, W]
            pixels = pixels.view(k, n, *pixels.shape[1:])
            for j, b in enumerate(at):
                clips[b] = pixels[j].view(n // 2, 2, *pixels.shape[3:]) if flow else pixels[j]
        return _augment(clips, self.choices, flow)


def window_coefficients(video: Any, modality: str, indices: Sequence[int], decoder: EntropyDecoder
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Layout]:
    """The worker's part of a hybrid decode: the window's JPEGs (`video.jpeg_blobs`, checksums checked)
    entropy-decoded, as HybridClip holds them: (counts, positions, values, quant, layout).
    StreamsError naming the video and image for a JPEG the decoder cannot read, one of another size
    than the video's, or one of another number of components than the modality's."""
    blobs = video.jpeg_blobs(modality, indices)
    what = "frame" if modality == "rgb" else "flow image"
    counts = quant = layout = None
    positions, values = [], []
    for k, blob in enumerate(blobs):
        image = indices[k] if modality == "rgb" else f"{indices[k // 2]} ({'xy'[k % 2]})"
        try:
            got = decoder.sparse(blob, expect=layout)
            if layout is None:
                layout = got.layout
                if (layout.height, layout.width) != (video.height, video.width):
                    raise CodecError(f"JPEG is {layout.width}x{layout.height}, the video {video.width}x"
                                     f"{video.height}")
                if len(layout.grids) != (3 if modality == "rgb" else 1):  # the CPU path converts; this one can't
                    raise CodecError(f"a {'grey' if len(layout.grids) == 1 else 'colour'} JPEG where a "
                                     f"{'colour frame' if modality == 'rgb' else 'grey flow image'} belongs")
                counts = np.empty((len(blobs), layout.blocks), np.uint8)
                quant = np.empty((len(blobs), len(layout.grids), 64), np.int32)
        except CodecError as e:
            raise StreamsError(f'video {video.video_id}: {what} {image}: {e} (train.decode = "hybrid" reads '
                               'baseline JPEGs as cv2, mmaction2 and denseflow write them; train.decode = "cpu" '
                               'reads any)') from None
        counts[k], quant[k] = got.counts, got.quant
        positions.append(got.positions.copy())  # the decoder's arrays are reused by its next call
        values.append(got.values.copy())
    return counts, np.concatenate(positions), np.concatenate(values), quant, layout


def _shared_cat(arrays: list[np.ndarray]) -> torch.Tensor:
    """The arrays end to end in one tensor, in shared memory inside a DataLoader worker (as torch's
    default_collate stacks there): the batch crosses to the trainer without another copy."""
    total = sum(len(a) for a in arrays)
    dtype = torch.from_numpy(arrays[0][:0]).dtype
    if get_worker_info() is not None:
        out = torch.empty(0, dtype=dtype)
        out = out.new(out.untyped_storage()._new_shared(total * out.element_size())).view(dtype)[:total]
    else:
        out = torch.empty(total, dtype=dtype)
    torch.cat([torch.from_numpy(a) for a in arrays], out=out)
    return out


def scatter_coefficients(counts: torch.Tensor, positions: torch.Tensor, values: torch.Tensor,
                         layout: Layout) -> torch.Tensor:
    """Sparse coefficients of N images of one layout (counts [N, blocks] in scan order, positions and
    values [entries]) -> dense int16 [N, blocks, 64] in the layout's block order, on their device."""
    n, blocks = counts.shape
    order = torch.tensor(layout.scan_order(), device=counts.device)
    block = (torch.arange(n, device=counts.device)[:, None] * blocks + order).flatten()
    at = torch.repeat_interleave(block, counts.flatten().long(), output_size=len(values)) * 64 + positions.long()
    dense = torch.zeros(n * blocks * 64, dtype=torch.int16, device=counts.device)
    dense[at] = values
    return dense.view(n, blocks, 64)


def collate(items: Sequence[Any]) -> Any:
    """The DataLoader's collate: (JpegClip, label) items into (JpegBatch, labels), (HybridClip, label)
    into (HybridBatch, labels); others as torch's."""
    if not items or not isinstance(items[0], tuple) or not isinstance(items[0][0], (JpegClip, HybridClip)):
        return default_collate(items)
    clips = [clip for clip, _ in items]
    choices = torch.tensor([[*c.size, c.top, c.left, c.crop, int(c.flip)] for c in clips], dtype=torch.int64)
    labels = default_collate([label for _, label in items])
    if isinstance(clips[0], HybridClip):
        groups: dict[Layout, list[int]] = {}
        for b, clip in enumerate(clips):
            groups.setdefault(clip.layout, []).append(b)
        # default_collate stacks straight into shared memory in a worker, _shared_cat likewise
        return HybridBatch([(layout, default_collate([torch.from_numpy(clips[b].counts) for b in at]),
                             _shared_cat([clips[b].positions for b in at]),
                             _shared_cat([clips[b].values for b in at]),
                             default_collate([torch.from_numpy(clips[b].quant) for b in at]), at)
                            for layout, at in groups.items()], choices, clips[0].modality), labels
    blobs = [b for clip in clips for b in clip.jpegs]
    data = torch.from_numpy(np.concatenate(blobs)) if blobs else torch.empty(0, dtype=torch.uint8)
    lengths = torch.tensor([[len(b) for b in clip.jpegs] for clip in clips], dtype=torch.int64)
    return JpegBatch(data, lengths, choices, clips[0].modality), labels


def decode_batch(batch: JpegBatch, device: torch.device) -> torch.Tensor:
    flow = batch.modality == "flow"
    blobs = list(torch.split(batch.data, batch.lengths.flatten().tolist()))
    frames = decoder(blobs, flow, device)  # one call: nvJPEG decodes the batch together
    per_clip = batch.lengths.shape[1]
    clips = []
    for b in range(len(batch.choices)):
        clip = torch.stack(frames[b * per_clip:(b + 1) * per_clip])  # [T, C, H, W] or [2T, 1, H, W]
        # flow: x, y, x, y, ... -> [T, 2, H, W]; colour: RGB -> the store's BGR
        clips.append(clip.view(-1, 2, *clip.shape[2:]) if flow else clip.flip(1))
    return _augment(clips, batch.choices, flow)


def _augment(clips: list[torch.Tensor], choices: torch.Tensor, flow: bool) -> torch.Tensor:
    """Decoded clips (uint8 [T, C, H, W], BGR or flow's x and y) resized, cropped and flipped as each
    one's choices say: uint8 [B, C, T, crop, crop]."""
    out = []
    for clip, (height, width, top, left, crop, flip) in zip(clips, choices.tolist(), strict=True):
        resized = F.interpolate(clip.float(), size=(height, width), mode="bilinear", align_corners=False)
        view = resized[:, :, top:top + crop, left:left + crop]
        if flip:
            view = view.flip(-1)
        u8 = view.round_().clamp_(0, 255).to(torch.uint8)
        if flip and flow:
            u8[:, 0] = 255 - u8[:, 0]
        out.append(u8.permute(1, 0, 2, 3))  # [C, T, crop, crop]
    return torch.stack(out)


def _idct_matrix(device: torch.device) -> torch.Tensor:
    """[64, 64]: a block's 64 coefficients (natural order) times it are its 64 pixels (row-major), the
    orthonormal 8x8 inverse DCT as one matrix (kron of the 1-D basis with itself), so that a batch's
    blocks are one matrix product."""
    u = torch.arange(8, dtype=torch.float64)
    basis = torch.cos((2 * u[None, :] + 1) * u[:, None] * torch.pi / 16) * 0.5  # [frequency, position]
    basis[0] /= 2 ** 0.5
    return torch.kron(basis, basis).to(device, torch.float32)


def coefficients_to_pixels(coefs: torch.Tensor, quant: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The device's part of a hybrid decode: quantised coefficients int16 [N, blocks, 64] and tables
    [N, components, 64] of N images of one layout -> uint8 [N, 3, H, W] (BGR) or [N, 1, H, W] (grey).
    Each plane is rounded and clamped to uint8 samples as libjpeg stores them, the chroma upsampled
    (`_upsample`) and JFIF YCbCr -> BGR with libjpeg's rounding of each term."""
    idct = _idct_matrix(coefs.device)
    planes, at = [], 0
    hmax, vmax = max(h for h, _ in layout.sampling), max(v for _, v in layout.sampling)
    for c, (rows, cols) in enumerate(layout.grids):
        x = coefs[:, at:at + rows * cols].float() * quant[:, c, None, :].float()
        at += rows * cols
        blocks = (x @ idct).view(-1, rows, cols, 8, 8)
        plane = (blocks.permute(0, 1, 3, 2, 4).reshape(-1, rows * 8, cols * 8) + 128).round_().clamp_(0, 255)
        h, v = layout.sampling[c]  # the samples the image covers; the MCU padding's are never shown
        planes.append(plane[:, :-(-layout.height * v // vmax), :-(-layout.width * h // hmax)])
    y = planes[0][:, None]
    if len(planes) == 1:
        return y.to(torch.uint8)
    cb, cr = (_upsample(p, (vmax // v, hmax // h))[:, None, :layout.height, :layout.width] - 128
              for p, (h, v) in zip(planes[1:], layout.sampling[1:], strict=True))
    bgr = torch.cat([y + (1.772 * cb).round_(), y + (-0.344136 * cb - 0.714136 * cr).round_(),
                     y + (1.402 * cr).round_()], dim=1)
    return bgr.clamp_(0, 255).to(torch.uint8)


def _upsample(plane: torch.Tensor, scale: tuple[int, int]) -> torch.Tensor:
    """A chroma plane [N, h, w] of uint8 levels upsampled by (rows, columns) factors as libjpeg-turbo's
    "fancy" upsampling does it: the triangle filter (bilinear at half-pixel centres, edges replicated)
    for 2x2, 1x2 and 2x1, whose 16ths or 4ths it rounds with a bias alternating from column to column
    (8, 7 and 1, 2) or, for 2x1, from row to row (1, 2); other factors bilinear, rounded."""
    if scale == (1, 1):
        return plane
    up = F.interpolate(plane[:, None], scale_factor=scale, mode="bilinear", align_corners=False)[:, 0]
    parts, biases = {(2, 2): (16, (8, 7)), (1, 2): (4, (1, 2)), (2, 1): (4, (1, 2))}.get(scale, (0, ()))
    if not parts:
        return up.round_()
    # the bias alternates by column, or for 2x1 (h1v2) by row
    along = up.shape[-2] if scale == (2, 1) else up.shape[-1]
    bias = torch.tensor(biases, dtype=up.dtype, device=up.device)[torch.arange(along, device=up.device) % 2]
    return ((up * parts).round_() + (bias[:, None] if scale == (2, 1) else bias)).div_(parts).floor_()
