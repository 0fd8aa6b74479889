"""Clip transforms: uint8 clips [T, H, W, C] from the store -> normalised tensors [C, T, H, W].

The input convention is the official P3D one: RGB frames 0-255 in OpenCV's BGR order minus
[104, 117, 123]; flow images (x, y) as stored (uint8, 128 = zero motion) minus 128. A horizontally
flipped flow clip has its x channel inverted (255 - x), since mirroring the image negates x motion.
Geometric transforms work on uint8 numpy clips so that DataLoader workers ship 4x fewer bytes; the
float conversion can happen on the device (`normalize`).
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

MODALITIES = ("rgb", "flow")
CHANNELS = {"rgb": 3, "flow": 2}
RGB_MEAN_BGR = (104.0, 117.0, 123.0)
FLOW_MEAN = 128.0
INPUT_CONVENTION = {
    "rgb": "BGR 0-255 minus [104, 117, 123]",
    "flow": "flow u8 (x, y; 128 = zero motion) minus 128",
}


def check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be 'rgb' or 'flow', got {modality!r}")
    return modality


def _check_clip(clip: np.ndarray, modality: str) -> None:
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != CHANNELS[check_modality(modality)]:
        raise ValueError(f"expected a uint8 {modality} clip [T, H, W, {CHANNELS[modality]}], "
                         f"got {clip.dtype} {list(clip.shape)}")


def mean(modality: str) -> torch.Tensor:
    """Per-channel mean subtracted from a `modality` clip, shaped [C, 1, 1, 1] to broadcast over [.., C, T, H, W]."""
    values = RGB_MEAN_BGR if check_modality(modality) == "rgb" else (FLOW_MEAN, FLOW_MEAN)
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1)


def normalize(clips_u8: torch.Tensor, modality: str) -> torch.Tensor:
    """uint8 [C, T, H, W] or [B, C, T, H, W] (any device) -> float32 minus the modality's mean."""
    return clips_u8.float() - mean(modality).to(clips_u8.device)


def to_chw(clip_u8: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, C] numpy -> uint8 [C, T, H, W] tensor (contiguous), values unchanged."""
    return torch.from_numpy(np.ascontiguousarray(clip_u8.transpose(3, 0, 1, 2)))


def flipped_chw(clip_u8: np.ndarray, modality: str, flip: bool) -> torch.Tensor:
    """`to_chw(hflip(clip))` when `flip`, else `to_chw(clip)`, in one copy: a training loader's last
    step, which takes views (crops) of a buffer it reuses.

    Frame by frame, cv2.flip into a scratch frame and cv2.split into the channel planes: 2-4x faster
    than numpy's copy of the [C, T, H, W] transpose, whose innermost stride is C bytes (bench/loader.py)."""
    t, h, w, c = clip_u8.shape
    out = np.empty((c, t, h, w), np.uint8)
    if t and h and w:
        scratch = np.empty((h, w, c), np.uint8) if flip else None
        for k in range(t):
            frame = cv2.flip(clip_u8[k], 1, dst=scratch) if flip else clip_u8[k]
            cv2.split(frame, [out[i, k] for i in range(c)])
    if flip and modality == "flow":
        np.subtract(255, out[0], out=out[0])
    return torch.from_numpy(out)


def to_tensor(clip_u8: np.ndarray, modality: str) -> torch.Tensor:
    """uint8 clip [T, H, W, C] (BGR for rgb; x, y for flow) -> normalised float32 [C, T, H, W]."""
    _check_clip(clip_u8, modality)
    return normalize(to_chw(clip_u8), modality)


def hflip(clip_u8: np.ndarray, modality: str) -> np.ndarray:
    """Mirror left-right; for flow also invert x (255 - x) because mirrored motion points the other way."""
    _check_clip(clip_u8, modality)
    out = np.ascontiguousarray(clip_u8[:, :, ::-1])
    if modality == "flow":
        out[..., 0] = 255 - out[..., 0]
    return out


def resize_clip(clip_u8: np.ndarray, size: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
    """Bilinear resize of every frame to size = (height, width). Flow values are not rescaled (as TSN).
    `out`: a C-contiguous uint8 [T, height, width, C] array to write into (a loader reuses one)."""
    height, width = int(size[0]), int(size[1])
    t, h, w, c = clip_u8.shape
    if (h, w) == (height, width):
        return clip_u8
    # Frame by frame into one array: 3x faster than one call on a [H, W, T*C] transpose of the clip,
    # whose two transposing copies cost more than the resize (bench/loader.py).
    if out is None or out.shape != (t, height, width, c) or not out.flags.c_contiguous:
        out = np.empty((t, height, width, c), np.uint8)
    for k in range(t):
        cv2.resize(clip_u8[k], (width, height), dst=out[k] if c > 1 else out[k, ..., 0],
                   interpolation=cv2.INTER_LINEAR)
    return out


# A training clip is resized to `size` and then cropped: at 182x242 -> 160x160 the crop keeps 58% of
# the resized pixels. cv2.warpAffine of the crop's own affine map (`crop_map`) computes only those, 40%
# less CPU than the whole resize with OpenCV's IPP code (in the x86 wheels), to within a level of it:
# warpAffine places its samples on a 1/32-pixel grid where cv2.resize weighs with 1/2048 steps
# (tests/streams/test_transforms.py). Without IPP, and for 2-channel images (no IPP path), warpAffine
# costs 2-3x the whole resize; there the frame is resized only as far as the crop's far corner, from
# its origin: the same samples and weights as the whole resize, so the same pixels, 0-30% less work.
WARP_FLAGS = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP


def crop_map(shape: Sequence[int], size: Sequence[int], top: int, left: int, crop: int, flip: bool = False
             ) -> np.ndarray:
    """The 2x3 affine map (cv2.warpAffine's inverse map) from a pixel of the `crop` x `crop` crop at
    (top, left) of a (height, width) = `shape` image resized to `size`, mirrored when `flip`, to where
    cv2.resize samples it in the image: source = (resized + 0.5) * scale - 0.5 on each axis."""
    sy, sx = shape[0] / size[0], shape[1] / size[1]
    if flip:  # output column x is resized column left + crop - 1 - x
        row = [-sx, 0.0, sx * (left + crop - 0.5) - 0.5]
    else:
        row = [sx, 0.0, sx * (left + 0.5) - 0.5]
    return np.array([row, [0.0, sy, sy * (top + 0.5) - 0.5]])


def _corner_extent(crop_end: int, scale: float, side: int) -> int:
    """Source pixels [0, n) that cv2.resize reads for resized pixels [0, crop_end) at `scale` (source
    per resized pixel): the last one's sample and its right / lower neighbour, with a pixel to spare
    for OpenCV's single-precision sample position."""
    return min(side, int((crop_end - 0.5) * scale - 0.5) + 3)


def _resized(image: np.ndarray, size: tuple[int, int], top: int, left: int, crop: int) -> np.ndarray:
    """The crop (a view) of cv2.resize(image, size), resizing no further than its far corner."""
    (h, w), (height, width) = image.shape[:2], size
    if (h, w) == (height, width):
        return image[top:top + crop, left:left + crop]
    rows, cols = _corner_extent(top + crop, h / height, h), _corner_extent(left + crop, w / width, w)
    # Resized by the factors, not to a size, so that a part of the image has the whole's scale (and so
    # its samples and weights); OpenCV rounds the part's output size, which must still hold the crop.
    if (rows, cols) == (h, w) or round(rows * height / h) < top + crop or round(cols * width / w) < left + crop:
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    else:
        resized = cv2.resize(image[:rows, :cols], None, fx=width / w, fy=height / h, interpolation=cv2.INTER_LINEAR)
    return resized[top:top + crop, left:left + crop]


class CropOut:
    """A training clip's resize, crop, flip and copy out to [C, T, crop, crop], computing only the
    pixels the crop keeps (the note above `crop_map`), one decoded image at a time: a loader hands each
    image over as soon as it is decoded, while it is still in the CPU's cache (a third less CPU than
    after a whole window's decoding, bench/loader.py). `result()` is the uint8 clip tensor, as
    `flipped_chw(crop(resize_clip(clip, size), top, left, crop), modality, flip)` of the whole clip,
    to within a level with IPP, else the same pixels."""

    def __init__(self, shape: Sequence[int], frames: int, size: Sequence[int], top: int, left: int, crop: int,
                 *, modality: str, flip: bool):
        height, width = int(size[0]), int(size[1])
        if not (0 <= top <= height - crop and 0 <= left <= width - crop):
            raise ValueError(f"crop {crop}x{crop} at ({top}, {left}) does not fit a {height}x{width} clip")
        self.shape, self.size = (int(shape[0]), int(shape[1])), (height, width)
        self.top, self.left, self.crop, self.modality, self.flip = top, left, crop, modality, flip
        self.out = np.empty((CHANNELS[check_modality(modality)], frames, crop, crop), np.uint8)
        self.scratch = np.empty((crop, crop, self.out.shape[0]), np.uint8)
        self.resizes = self.shape != self.size
        self.matrix = crop_map(self.shape, self.size, top, left, crop, flip) if self.resizes else None

    def _warps(self, channels: int) -> bool:
        return self.resizes and channels != 2 and cv2.ipp.useIPP()

    def frame(self, k: int, image: np.ndarray) -> None:
        """Clip frame `k` from an interleaved [H, W, C] image."""
        dst = [self.out[i, k] for i in range(self.out.shape[0])]
        if self._warps(image.shape[2]):
            cv2.split(self._warp(image, self.scratch), dst)
        else:
            view = _resized(image, self.size, self.top, self.left, self.crop)
            cv2.split(cv2.flip(view, 1, dst=self.scratch) if self.flip else view, dst)

    def plane(self, c: int, k: int, image: np.ndarray) -> None:
        """Channel `c` of clip frame `k` from a one-channel [H, W] image (a flow axis)."""
        dst = self.out[c, k]
        if self._warps(1):
            self._warp(image, dst)
            return
        view = _resized(image, self.size, self.top, self.left, self.crop)
        if self.flip:
            cv2.flip(view, 1, dst=dst)
        else:
            np.copyto(dst, view)

    def _warp(self, image: np.ndarray, dst: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(image, self.matrix, (self.crop, self.crop), dst=dst, flags=WARP_FLAGS,
                              borderMode=cv2.BORDER_REPLICATE)

    def result(self) -> torch.Tensor:
        if self.flip and self.modality == "flow":
            np.subtract(255, self.out[0], out=self.out[0])
        return torch.from_numpy(self.out)


def resized_crop_chw(clip_u8: np.ndarray, size: Sequence[int], top: int, left: int, crop: int, modality: str,
                     *, flip: bool, planes: bool = False) -> torch.Tensor:
    """`CropOut` over a whole decoded clip: uint8 [T, H, W, C], or [C, T, H, W] with `planes` (flow as
    VideoFrames.flow_planes reads it) -> uint8 [C, T, crop, crop] tensor."""
    c, t, h, w = clip_u8.shape if planes else (clip_u8.shape[3], *clip_u8.shape[:3])
    out = CropOut((h, w), t, size, top, left, crop, modality=modality, flip=flip)
    for k in range(t):
        if planes:
            for i in range(c):
                out.plane(i, k, clip_u8[i, k])
        else:
            out.frame(k, clip_u8[k])
    return out.result()


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) with the shorter side `short` and the aspect ratio kept."""
    scale = short / min(height, width)
    return max(short, round(height * scale)), max(short, round(width * scale))


def resize_short(clip_u8: np.ndarray, short: int) -> np.ndarray:
    """Resize so that the shorter side is `short`, keeping the aspect ratio."""
    return resize_clip(clip_u8, short_side_size(*clip_u8.shape[1:3], short))


def crop(clip_u8: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    h, w = clip_u8.shape[1:3]
    if not (0 <= top <= h - size and 0 <= left <= w - size):
        raise ValueError(f"crop {size}x{size} at ({top}, {left}) does not fit a {h}x{w} clip")
    return clip_u8[:, top:top + size, left:left + size]


def center_crop(clip_u8: np.ndarray, size: int) -> np.ndarray:
    h, w = clip_u8.shape[1:3]
    return crop(clip_u8, (h - size) // 2, (w - size) // 2, size)


def three_crop(clip_u8: np.ndarray, size: int) -> list[np.ndarray]:
    """Start, centre and end crops along the longer side (the 3-crop test views of 3-D toolkits)."""
    h, w = clip_u8.shape[1:3]
    if w >= h:
        top = (h - size) // 2
        return [crop(clip_u8, top, left, size) for left in (0, (w - size) // 2, w - size)]
    left = (w - size) // 2
    return [crop(clip_u8, top, left, size) for top in (0, (h - size) // 2, h - size)]


def random_crop(clip_u8: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = clip_u8.shape[1:3]
    return crop(clip_u8, int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1)), size)


def resize_for_test(clip: np.ndarray, resize: Sequence[int], scale_jitter: Sequence[int]) -> np.ndarray:
    """The resize of validation and test views: the middle of the training scales when training
    jittered them, else the fixed training size (shared by validation and `make eval`)."""
    if scale_jitter:
        return resize_short(clip, (scale_jitter[0] + scale_jitter[1]) // 2)
    return resize_clip(clip, resize)
