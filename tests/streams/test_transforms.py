"""Clip transforms: the official input convention, flow flips, resizing and crops."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from streams import transforms


def test_rgb_is_bgr_minus_the_caffe_mean():
    clip = np.zeros((2, 4, 5, 3), np.uint8)
    clip[..., 0], clip[..., 1], clip[..., 2] = 10, 200, 255  # B, G, R
    x = transforms.to_tensor(clip, "rgb")
    assert x.shape == (3, 2, 4, 5) and x.dtype == torch.float32
    assert x[0].unique().tolist() == [10 - 104] and x[1].unique().tolist() == [200 - 117]
    assert x[2].unique().tolist() == [255 - 123]
    assert transforms.INPUT_CONVENTION["rgb"] == "BGR 0-255 minus [104, 117, 123]"


def test_flow_is_minus_128():
    clip = np.full((3, 2, 2, 2), 128, np.uint8)
    clip[..., 0] = 138
    x = transforms.to_tensor(clip, "flow")
    assert x.shape == (2, 3, 2, 2)
    assert x[0].unique().tolist() == [10.0] and x[1].unique().tolist() == [0.0]


def test_normalize_batches_on_any_device():
    clips = torch.randint(0, 256, (4, 3, 2, 5, 5), dtype=torch.uint8)
    expected = torch.stack([transforms.to_tensor(c.permute(1, 2, 3, 0).numpy(), "rgb") for c in clips])
    assert torch.equal(transforms.normalize(clips, "rgb"), expected)


def test_flipping_flow_mirrors_and_inverts_x():
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (4, 6, 7, 2), dtype=np.uint8)
    flipped = transforms.hflip(clip, "flow")
    assert np.array_equal(flipped[..., 0], 255 - clip[:, :, ::-1, 0])
    assert np.array_equal(flipped[..., 1], clip[:, :, ::-1, 1])
    assert np.array_equal(transforms.hflip(flipped, "flow"), clip)
    # Motion to the right (x = 128 + 20) becomes motion to the left after the mirror.
    right = np.full((1, 2, 2, 2), 128, np.uint8)
    right[..., 0] = 148
    assert transforms.hflip(right, "flow")[..., 0].max() == 107 < 128


def test_flipping_rgb_only_mirrors():
    clip = np.random.default_rng(1).integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
    assert np.array_equal(transforms.hflip(clip, "rgb"), clip[:, :, ::-1])


@pytest.mark.parametrize("modality", ["rgb", "flow"])
def test_flipped_chw_is_to_chw_of_hflip_on_a_cropped_view(modality):
    """The loader's last step, one copy out of a crop view: equal to flipping, then transposing."""
    clip = np.random.default_rng(3).integers(0, 256, (3, 9, 11, transforms.CHANNELS[modality]), dtype=np.uint8)
    view = clip[:, 2:7, 1:6]
    for flip in (False, True):
        got = transforms.flipped_chw(view, modality, flip)
        expected = transforms.to_chw(transforms.hflip(view, modality) if flip else view)
        assert got.is_contiguous() and torch.equal(got, expected)
    assert np.array_equal(view, clip[:, 2:7, 1:6])  # the source is left as it was


def test_resize_into_a_given_array():
    clip = np.random.default_rng(4).integers(0, 256, (3, 20, 30, 3), dtype=np.uint8)
    out = np.zeros((3, 9, 12, 3), np.uint8)
    assert transforms.resize_clip(clip, (9, 12), out) is out
    assert np.array_equal(out, transforms.resize_clip(clip, (9, 12)))
    assert transforms.resize_clip(clip, (9, 12), np.zeros((3, 9, 13, 3), np.uint8)).shape == (3, 9, 12, 3)


def test_resize_is_per_frame_bilinear():
    clip = np.random.default_rng(2).integers(0, 256, (5, 40, 60, 2), dtype=np.uint8)
    out = transforms.resize_clip(clip, (18, 24))
    assert out.shape == (5, 18, 24, 2)
    for t in range(5):
        assert np.array_equal(out[t], cv2.resize(clip[t], (24, 18), interpolation=cv2.INTER_LINEAR))
    assert transforms.resize_short(clip, 20).shape == (5, 20, 30, 2)


def test_crops():
    clip = np.arange(1 * 6 * 10, dtype=np.uint8).reshape(1, 6, 10, 1).repeat(3, axis=3)
    centre = transforms.center_crop(clip, 4)
    assert np.array_equal(centre, clip[:, 1:5, 3:7])
    left, mid, right = transforms.three_crop(clip, 4)
    assert np.array_equal(left, clip[:, 1:5, 0:4]) and np.array_equal(mid, centre)
    assert np.array_equal(right, clip[:, 1:5, 6:10])
    tall = clip.transpose(0, 2, 1, 3)
    assert [c.shape for c in transforms.three_crop(tall, 4)] == [(1, 4, 4, 3)] * 3
    # Random crops: each is the clip's content at some in-bounds offset, and over draws every offset
    # (2 tops x 6 lefts for 5x5 in 6x10) comes up. The values are unique, so a crop names its offset.
    rng = np.random.default_rng(0)
    offsets = set()
    for _ in range(200):
        got = transforms.random_crop(clip, 5, rng)
        top, left = divmod(int(got[0, 0, 0, 0]), 10)
        assert np.array_equal(got, clip[:, top:top + 5, left:left + 5])
        offsets.add((top, left))
    assert offsets == {(top, left) for top in range(2) for left in range(6)}
    with pytest.raises(ValueError):
        transforms.center_crop(clip, 7)


def test_wrong_clips_are_refused():
    with pytest.raises(ValueError, match="flow clip"):
        transforms.to_tensor(np.zeros((2, 3, 3, 3), np.uint8), "flow")
    with pytest.raises(ValueError, match="modality"):
        transforms.to_tensor(np.zeros((2, 3, 3, 3), np.uint8), "depth")


def smooth_clip(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 frames of blurred noise stretched to 0-255: natural-image steps between neighbours
    (tens of levels), unlike raw noise whose steps reach 255."""
    noise = rng.random(shape).astype(np.float32)
    frames = [cv2.GaussianBlur(f, (0, 0), 1.5) for f in noise]
    frames = [(f - f.min()) / (f.max() - f.min()) * 255 for f in frames]
    return np.stack(frames).round().astype(np.uint8).reshape(shape)


def old_crop(clip: np.ndarray, size: tuple[int, int], top: int, left: int, crop: int, modality: str,
             flip: bool) -> torch.Tensor:
    """The loader's path before: the whole frame resized, then the crop copied out (flipped)."""
    return transforms.flipped_chw(transforms.crop(transforms.resize_clip(clip, size), top, left, crop), modality,
                                  flip)


@pytest.fixture(params=[True, False], ids=["ipp", "no-ipp"])
def ipp(request):
    """OpenCV with and without its IPP code (the x86 wheels have it; other builds may not)."""
    before = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(request.param)
    yield request.param and cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(before)


@pytest.mark.parametrize("modality", ["rgb", "flow"])
@pytest.mark.parametrize("source, size, crop", [((256, 340), (182, 242), 160), ((60, 80), (30, 36), 24),
                                                ((32, 32), (40, 40), 20)])
def test_resized_crop_is_the_crop_of_the_resized_clip(modality, source, size, crop, ipp):
    """Only the crop's pixels are resized (transforms.resized_crop_chw), in either channel layout. With
    IPP, by warpAffine: its samples lie on a 1/32-pixel grid, within 1/64 px of cv2.resize's on each
    axis, so a pixel may move by the image's steepest step between neighbours over 1/32 px, plus a
    level for the two ways of rounding; on average well under half a level. Without IPP, by resizing
    up to the crop's far corner: the same pixels. Random crops, flips (flow: x inverted), downscale and
    upscale (scale jitter's sides)."""
    rng = np.random.default_rng(7)
    channels = transforms.CHANNELS[modality]
    clip = smooth_clip(rng, (4, *source, channels))
    steepest = max(int(np.abs(np.diff(clip.astype(int), axis=a)).max()) for a in (1, 2))
    changes = []
    for _ in range(12):
        top, left = int(rng.integers(0, size[0] - crop + 1)), int(rng.integers(0, size[1] - crop + 1))
        flip = bool(rng.random() < 0.5)
        expected = old_crop(clip, size, top, left, crop, modality, flip).int()
        for planes in (False, True):
            given = np.ascontiguousarray(clip.transpose(3, 0, 1, 2)) if planes else clip
            got = transforms.resized_crop_chw(given, size, top, left, crop, modality, flip=flip, planes=planes)
            assert got.shape == (channels, 4, crop, crop) and got.dtype == torch.uint8 and got.is_contiguous()
            changes.append((got.int() - expected).abs())
    change = torch.stack(changes)
    if ipp and channels != 2:  # interleaved flow has no IPP warp: resized as without IPP
        assert change.max() <= 1 + steepest / 32 and change.float().mean() < 0.25
    elif not ipp:
        assert change.max() == 0


def test_resized_crop_without_a_resize_is_the_crop():
    clip = np.random.default_rng(5).integers(0, 256, (3, 20, 30, 2), dtype=np.uint8)
    for flip in (False, True):
        got = transforms.resized_crop_chw(clip, (20, 30), 4, 9, 12, "flow", flip=flip)
        assert torch.equal(got, old_crop(clip, (20, 30), 4, 9, 12, "flow", flip))
        planes = np.ascontiguousarray(clip.transpose(3, 0, 1, 2))
        assert torch.equal(transforms.resized_crop_chw(planes, (20, 30), 4, 9, 12, "flow", flip=flip, planes=True), got)
    with pytest.raises(ValueError, match="does not fit a 20x30 clip"):
        transforms.resized_crop_chw(clip, (20, 30), 9, 0, 12, "flow", flip=False)


def test_crop_map_mirrors_the_crop():
    """The mirrored crop's map sends output column x to where the plain one sends crop - 1 - x."""
    plain = transforms.crop_map((256, 340), (182, 242), 11, 41, 160)
    mirrored = transforms.crop_map((256, 340), (182, 242), 11, 41, 160, flip=True)
    for x in (0, 7, 159):
        assert mirrored[0] @ [x, 5, 1] == pytest.approx(plain[0] @ [159 - x, 5, 1])
    assert np.array_equal(mirrored[1], plain[1])
    assert plain[0] @ [0, 0, 1] == pytest.approx((41 + 0.5) * 340 / 242 - 0.5)  # cv2.resize's sample
