"""The fast CPU TV-L1 (flow.tvl1_fast) against OpenCV's DualTVL1 and against known flow.

Its fused inner loop must be OpenCV's iteration: step for step on few iterations (every setting
that takes a different code path: median sizes, the pyramid, gamma, the epsilon rule, the initial
flow), then whole solves at the defaults against OpenCV and against exact ground truth (analytic
motions, a moving object, RubberWhale from ../shared/data).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from flow.config import FlowConfig
from flow.encoding import encode
from flow.errors import FlowError
from flow.formats import read_flow
from flow.stage import make_backend
from flow.tvl1 import OpenCVTVL1, create_tvl1
from flow.tvl1_fast import FastTVL1, centred_gradient
from tests.builders import RUBBERWHALE_CROP, analytic_pair, epe, grey, object_pair, opencv_flow, within


def fast_flow(cfg: FlowConfig, i0: np.ndarray, i1: np.ndarray) -> np.ndarray:
    return FastTVL1(cfg).compute(np.stack([i0, i1]))[0]


def test_centred_gradient_is_opencvs():
    """Half the central difference inside, half the one-sided difference on the borders."""
    image = np.random.default_rng(3).uniform(0, 255, (5, 7)).astype(np.float32)
    dx, dy = centred_gradient(image)
    np.testing.assert_array_equal(dx[:, 1:-1], 0.5 * (image[:, 2:] - image[:, :-2]))
    np.testing.assert_array_equal(dx[:, 0], 0.5 * (image[:, 1] - image[:, 0]))
    np.testing.assert_array_equal(dx[:, -1], 0.5 * (image[:, -1] - image[:, -2]))
    np.testing.assert_array_equal(dy[1:-1], 0.5 * (image[2:] - image[:-2]))
    np.testing.assert_array_equal(dy[0], 0.5 * (image[1] - image[0]))
    np.testing.assert_array_equal(dy[-1], 0.5 * (image[-1] - image[-2]))


# --- OpenCV's iteration, step for step --------------------------------------------------------

@pytest.mark.parametrize("params", [
    dict(nscales=1, warps=1, inner_iterations=10, outer_iterations=1, median_filtering=1),
    dict(nscales=1, warps=2, inner_iterations=5, outer_iterations=2, median_filtering=5),
    dict(nscales=2, warps=2, inner_iterations=5, outer_iterations=2, median_filtering=3, scale_step=0.8),
    dict(nscales=2, warps=1, inner_iterations=5, outer_iterations=2, median_filtering=5, gamma=0.5),
], ids=["primal-dual", "warps+median5", "pyramid0.8+median3", "gamma"])
def test_follows_opencv_step_for_step(params):
    """While few warps have passed the iteration is well-conditioned: the fused sweep gives
    OpenCV's flow to float rounding (its sums run in another order)."""
    i0, i1, _ = object_pair(48, 64)
    cfg = FlowConfig(epsilon=0.0, **params)
    theirs = opencv_flow(cfg, i0, i1)
    assert np.abs(theirs).max() > 0.5  # it moved: the comparison is not of two zero fields
    assert np.abs(fast_flow(cfg, i0, i1) - theirs).max() < 1e-4


def test_epsilon_rule_stops_like_opencv():
    """With a loose epsilon both stop after the same few iterations: far from the epsilon = 0 flow,
    equal to OpenCV's."""
    i0, i1, _ = object_pair(48, 64)
    cfg = FlowConfig(nscales=1, warps=1, inner_iterations=30, outer_iterations=1, median_filtering=1, epsilon=0.05)
    backend = FastTVL1(cfg)
    ours, theirs = backend.compute(np.stack([i0, i1]))[0], opencv_flow(cfg, i0, i1)
    unstopped = fast_flow(dataclasses.replace(cfg, epsilon=0.0), i0, i1)
    assert np.abs(ours - theirs).max() < 1e-4
    assert np.abs(unstopped - ours).max() > 1e-2
    assert 1 < backend.iterations[0] < 30


def test_initial_flow_seeds_the_coarsest_scale_like_opencv():
    i0, i1, gt = object_pair(48, 64)
    cfg = FlowConfig(epsilon=0.0, nscales=2, warps=2, outer_iterations=2, inner_iterations=5,
                     use_initial_flow=True)
    seed = np.ascontiguousarray(gt.transpose(1, 2, 0), dtype=np.float32) * 0.5
    theirs = create_tvl1(cfg).calc(i0, i1, seed.copy())
    ours = FastTVL1(cfg).compute_pair(i0, i1, seed)
    assert np.abs(ours - theirs).max() < 1e-4
    assert np.abs(ours - fast_flow(cfg, i0, i1)).max() > 0.1  # the seed mattered


def test_use_initial_flow_chains_pairs_like_the_opencv_backend():
    """The warm start: each pair of a video starts from the previous pair's flow, the first from 0."""
    frames = np.stack([analytic_pair("translation", (0.8 * k, 0.5 * k))[1] for k in range(3)])
    cfg = FlowConfig(use_initial_flow=True, epsilon=0.0, nscales=2, warps=2, outer_iterations=2,
                     inner_iterations=5)
    ours, theirs = FastTVL1(cfg).compute(frames), OpenCVTVL1(cfg).compute(frames)
    # Rounding differences of 1e-6 grow where the thresholding switches case, over 2 pairs x 2 scales.
    assert np.abs(ours - theirs).max() < 1e-3
    cold = FastTVL1(dataclasses.replace(cfg, use_initial_flow=False)).compute(frames)
    np.testing.assert_array_equal(ours[0], cold[0])
    assert np.abs(ours[1] - cold[1]).max() > 0.01


# --- whole solves at the defaults ------------------------------------------------------------------

@pytest.mark.parametrize("kind,param", [
    ("translation", (1.3, -0.7)), ("rotation", 3.0), ("zoom", 0.95),
])
def test_analytic_motion_matches_opencv_and_the_exact_flow(kind, param):
    """Mean end-point error below 0.05 px away from the 6 px border (where I1 does not show what
    left or entered the frame), within 2% of OpenCV's, and OpenCV's flow on >= 99% of pixels."""
    i0, i1, gt = analytic_pair(kind, param)
    cfg = FlowConfig()
    ours, theirs = fast_flow(cfg, i0, i1), opencv_flow(cfg, i0, i1)
    inner = np.s_[6:-6, 6:-6]
    gt = gt.transpose(1, 2, 0)[inner]
    valid = np.ones(gt.shape[:2], bool)
    assert epe(ours[inner], gt, valid) < 0.05
    assert epe(ours[inner], gt, valid) <= 1.02 * epe(theirs[inner], gt, valid) + 1e-3
    assert within(ours, theirs) >= 0.99


def test_moving_object_matches_opencv_and_the_exact_flow():
    """A SynthActions-like pair (textured disc over a differently moving background), exact flow."""
    i0, i1, gt = object_pair()
    cfg = FlowConfig()
    ours, theirs = fast_flow(cfg, i0, i1), opencv_flow(cfg, i0, i1)
    gt = gt.transpose(1, 2, 0)
    valid = np.ones(gt.shape[:2], bool)
    assert epe(ours, gt, valid) <= 1.02 * epe(theirs, gt, valid)
    assert within(ours, theirs) >= 0.99
    # The stored encoding (bound 20: a level is 0.157 px): within one level almost everywhere.
    levels = np.abs(encode(ours, cfg.bound).astype(int) - encode(theirs, cfg.bound).astype(int))
    assert (levels <= 1).mean() >= 0.99


def test_rubberwhale_matches_opencv_and_the_ground_truth(shared_data):
    """A 120x160 crop of RubberWhale (the wheel and the whale's tail) at the defaults; the full
    frames of every data set are measured by `bench/flow_tvl1_fast.py accuracy`."""
    root = shared_data / "flow_gt" / "middlebury_rubberwhale"
    crop = RUBBERWHALE_CROP
    i0, i1 = grey(root / "frame10.png")[crop], grey(root / "frame11.png")[crop]
    gt, valid = (a[crop] for a in read_flow(root / "flow10.flo"))
    cfg = FlowConfig()
    ours, theirs = fast_flow(cfg, i0, i1), opencv_flow(cfg, i0, i1)
    assert within(ours, theirs) >= 0.99
    assert epe(ours, gt, valid) <= 1.02 * epe(theirs, gt, valid)
    assert epe(ours, gt, valid) < 0.4  # TV-L1 territory: OpenCV 0.26 px on this crop


# --- the backend interface ----------------------------------------------------------------------

def test_compute_gives_every_consecutive_pair():
    frames = np.stack([analytic_pair("translation", (0.3 * k, -0.2 * k))[1] for k in range(4)])
    flows = FastTVL1(FlowConfig()).compute(frames)
    assert flows.shape == (3, 48, 64, 2) and flows.dtype == np.float32
    # Each pair moves the texture by (0.3, -0.2) px.
    np.testing.assert_allclose(flows[:, 6:-6, 6:-6].mean(axis=(1, 2)), [[0.3, -0.2]] * 3, atol=0.05)


def test_a_single_frame_gives_no_pairs_as_the_opencv_backend():
    frame = analytic_pair("translation", (0.0, 0.0))[0][None]
    assert FastTVL1(FlowConfig()).compute(frame).shape == (0, 48, 64, 2)
    assert OpenCVTVL1(FlowConfig()).compute(frame).shape == (0, 48, 64, 2)


@pytest.mark.parametrize("frames", [
    np.zeros((3, 20, 20), np.float32), np.zeros((3, 20, 20, 1), np.uint8), np.zeros((20, 20), np.uint8),
    [[[0]]],
], ids=["float", "4-d", "2-d", "list"])
def test_compute_rejects_what_is_not_grey_uint8(frames):
    with pytest.raises(FlowError, match=r"uint8 \[N, H, W\] grey frames"):
        FastTVL1(FlowConfig()).compute(frames)


def test_bad_pairs_are_flow_errors():
    backend = FastTVL1(FlowConfig())
    with pytest.raises(FlowError, match="too small"):
        backend.compute(np.zeros((2, 1, 9), np.uint8))
    a = np.zeros((20, 24), np.uint8)
    with pytest.raises(FlowError, match="one size"):
        backend.compute_pair(a, a[:, :20])
    with pytest.raises(FlowError, match=r"init_flow must be \[H, W, 2\]"):
        backend.compute_pair(a, a, np.zeros((20, 24), np.float32))
    # 2-px frames go to OpenCV's own loop: the same checks (a wrong init_flow was taken there)
    with pytest.raises(FlowError, match=r"init_flow must be \[H, W, 2\] = \[2, 24, 2\]"):
        backend.compute_pair(a[:2], a[:2], np.zeros((7, 7, 2), np.float32))
    nan = a.astype(np.float32)
    nan[3, 4] = np.nan  # made every vector NaN
    with pytest.raises(FlowError, match="the images hold NaN or inf"):
        backend.compute_pair(nan, a)


def test_two_pixel_frames_take_the_initial_flow_and_float_levels():
    """At 2 px OpenCV's own loop runs: it ignored init_flow (use_initial_flow off) and truncated float
    levels (a texture of amplitude 0.9 became all zeros, 255.6 wrapped to 0)."""
    rng = np.random.default_rng(0)
    i0 = rng.uniform(0, 255, (2, 40)).astype(np.float32)
    i1 = np.roll(i0, 1, axis=1)
    backend = FastTVL1(FlowConfig(nscales=1, warps=1, outer_iterations=1, inner_iterations=1))
    plain = backend.compute_pair(i0, i1)
    seeded = backend.compute_pair(i0, i1, np.full((2, 40, 2), 5, np.float32))
    assert not np.allclose(plain, seeded)
    np.testing.assert_array_equal(backend.compute_pair(i0, i1), backend.compute_pair(np.rint(i0), np.rint(i1)))


@pytest.mark.parametrize("median", [2, 7])
def test_median_sizes_opencv_cannot_filter_are_refused(median):
    with pytest.raises(FlowError, match="flow.median_filtering"):
        FastTVL1(FlowConfig(median_filtering=median))


def test_the_flow_stage_builds_it():
    assert isinstance(make_backend(FlowConfig(backend="fast")), FastTVL1)
    FlowConfig(backend="fast").validate()
