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

_CV_MAX_CHANNELS = 512  # cv2.resize handles at most CV_CN_MAX channels at once


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


def resize_clip(clip_u8: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of every frame to size = (height, width). Flow values are not rescaled (as TSN)."""
    height, width = int(size[0]), int(size[1])
    t, h, w, c = clip_u8.shape
    if (h, w) == (height, width):
        return clip_u8
    # One cv2 call on [H, W, T*C] resizes every frame at once (identical to frame by frame).
    planes = np.ascontiguousarray(clip_u8.transpose(1, 2, 0, 3).reshape(h, w, t * c))
    chunks = [cv2.resize(planes[:, :, i:i + _CV_MAX_CHANNELS], (width, height), interpolation=cv2.INTER_LINEAR)
              for i in range(0, t * c, _CV_MAX_CHANNELS)]
    out = np.concatenate([x.reshape(height, width, -1) for x in chunks], axis=2)
    return np.ascontiguousarray(out.reshape(height, width, t, c).transpose(2, 0, 1, 3))


def resize_short(clip_u8: np.ndarray, short: int) -> np.ndarray:
    """Resize so that the shorter side is `short`, keeping the aspect ratio."""
    h, w = clip_u8.shape[1:3]
    scale = short / min(h, w)
    return resize_clip(clip_u8, (max(short, round(h * scale)), max(short, round(w * scale))))


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
