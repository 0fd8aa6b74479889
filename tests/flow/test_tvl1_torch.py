"""The batched PyTorch TV-L1 (flow.tvl1_torch) against OpenCV's DualTVL1 and against known flow.

OpenCV's operators are checked one by one, then whole solves: step for step with OpenCV where the
iteration is still well-conditioned, analytic motions, batch independence, OpenCV's own agreement
criterion (>= 95% of pixels within 0.1 px) and the end-point error against ground truth.
"""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch

from flow import tvl1_torch_ops as ops
from flow.config import FlowConfig
from flow.errors import FlowError
from flow.formats import read_flow
from flow.tvl1 import OpenCVTVL1, create_tvl1
from flow.tvl1_torch import TorchTVL1, tvl1_flow, warp_terms
from p3dbase.errors import SettingError
from tests.builders import RUBBERWHALE_CROP, analytic_pair, epe, grey, object_pair, opencv_flow, within

# OpenCV's CUDA TV-L1 (one loop, no median filter) as its tests emulate it on the CPU.
CUDA_EQUIVALENT = dict(median_filtering=1, inner_iterations=1, outer_iterations=300)


def torch_flow(cfg: FlowConfig, i0: np.ndarray, i1: np.ndarray) -> np.ndarray:
    return TorchTVL1(cfg, "cpu").compute(np.stack([i0, i1]))[0]


def same_flow(a: np.ndarray, b: np.ndarray) -> bool:
    """The same flow up to float32 rounding, on any CPU and thread count: the iterations can carry a
    last-bit difference (another batch size, another SIMD path) across a threshold at a few pixels,
    so a share of pixels, not every one: 99.9% of the components within 1e-3 px, none beyond 0.05 px."""
    diff = np.abs(a - b)
    return bool((diff < 1e-3).mean() >= 0.999 and diff.max() < 0.05)


# --- OpenCV's operators, one by one ---------------------------------------------------------------

@pytest.mark.parametrize("size", [(48, 64), (21, 43), (17, 23)])
@pytest.mark.parametrize("step", [0.5, 0.8])
def test_pyramid_level_is_cv_resize_linear(size, step):
    image = np.random.default_rng(1).uniform(0, 255, size).astype(np.float32)
    expected = cv2.resize(image, None, fx=step, fy=step, interpolation=cv2.INTER_LINEAR)
    assert ops.pyramid_size(*size, step) == expected.shape
    got = ops.resize_linear(torch.from_numpy(image)[None], expected.shape, step)[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-3)


@pytest.mark.parametrize("small,size", [((24, 32), (48, 64)), ((10, 21), (21, 43)), ((13, 18), (17, 23))])
def test_flow_upsampling_is_cv_resize_to_size(small, size):
    flow = np.random.default_rng(2).normal(0, 3, small).astype(np.float32)
    expected = cv2.resize(flow, size[::-1], interpolation=cv2.INTER_LINEAR)
    got = ops.resize_linear(torch.from_numpy(flow)[None], size)[0].numpy()
    # float32 against OpenCV's own weights: up to 7 units in the last place of the largest value here
    # (8.4e-7 of it); 1e-5 of it leaves room for other SIMD paths and still fails a misplaced sample
    # (a tenth of a pixel is ~1e-2 of it).
    np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max())


def test_pyramid_stops_before_16_px():
    assert ops.flow_levels(256, 340, 5, 0.5) == [(256, 340), (128, 170), (64, 85), (32, 42), (16, 21)]
    assert ops.flow_levels(48, 64, 5, 0.5) == [(48, 64), (24, 32)]
    assert ops.flow_levels(40, 40, 1, 0.5) == [(40, 40)]


def test_centred_gradient_halves_the_one_sided_difference_at_borders():
    y, x = np.mgrid[0:5, 0:6].astype(np.float32)
    dx, dy = ops.centred_gradient(torch.from_numpy(3 * x + 5 * y)[None])
    expected_dx = np.full((5, 6), 3.0)
    expected_dx[:, [0, -1]] = 1.5
    expected_dy = np.full((5, 6), 5.0)
    expected_dy[[0, -1], :] = 2.5
    np.testing.assert_array_equal(dx[0].numpy(), expected_dx)
    np.testing.assert_array_equal(dy[0].numpy(), expected_dy)


def test_divergence_is_minus_the_adjoint_of_forward_gradient():
    rng = np.random.default_rng(3)
    u = torch.from_numpy(rng.normal(size=(2, 7, 9)))
    px, py = torch.from_numpy(rng.normal(size=(2, 7, 9))), torch.from_numpy(rng.normal(size=(2, 7, 9)))
    px[..., -1] = 0  # as in the solver: the dual variable stays 0 where the forward gradient is 0
    py[..., -1, :] = 0
    ux, uy = ops.forward_gradient(u)
    assert torch.all(ux[..., -1] == 0) and torch.all(uy[..., -1, :] == 0)
    lhs = (ux * px + uy * py).sum()
    rhs = -(u * ops.divergence(px, py)).sum()
    assert abs(float(lhs - rhs)) < 1e-10


@pytest.mark.parametrize("ksize", [3, 5])
def test_median_blur_is_cv_median_blur(ksize):
    flow = np.random.default_rng(4).normal(0, 2, (3, 23, 31)).astype(np.float32)
    flow[0, 4:12, 6:14] = 1.5  # ties
    got = ops.median_blur(torch.from_numpy(flow), ksize).numpy()
    for k in range(3):
        np.testing.assert_array_equal(got[k], cv2.medianBlur(flow[k], ksize))


@pytest.mark.parametrize("spread", [0.0, 0.4, 3.0, 40.0])
def test_warp_is_cv_remap_cubic(spread):
    rng = np.random.default_rng(5)
    image = rng.uniform(0, 255, (30, 40)).astype(np.float32)
    u, v = rng.normal(0, spread, (2, 30, 40)).astype(np.float32)
    y, x = np.mgrid[0:30, 0:40].astype(np.float32)
    expected = cv2.remap(image, x + u, y + v, cv2.INTER_CUBIC)
    got = ops.warp_cubic(torch.from_numpy(image)[None, None], torch.from_numpy(u)[None], torch.from_numpy(v)[None])
    np.testing.assert_allclose(got[0, 0].numpy(), expected, atol=2e-3)


def warp_inputs(spread: float, gamma: bool = False, seed: int = 6):
    """(I1, I1x, I1y) [2, 3, 30, 40], a flow [2, K, 30, 40] of the given spread, I0 [2, 30, 40]."""
    rng = np.random.default_rng(seed)
    i1 = rng.uniform(0, 255, (2, 30, 40)).astype(np.float32)
    i1x, i1y = ops.centred_gradient(torch.from_numpy(i1))
    u = torch.from_numpy(rng.normal(0, spread, (2, 3 if gamma else 2, 30, 40)).astype(np.float32))
    i0 = torch.from_numpy(rng.uniform(0, 255, (2, 30, 40)).astype(np.float32))
    return torch.stack((torch.from_numpy(i1), i1x, i1y), dim=1), u, i0


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_warp_terms_are_opencv_remap_and_calc_grad_rho(gamma):
    """The warp step against cv::remap of I1, I1x, I1y and calcGradRho written out by hand."""
    to_warp, u, i0 = warp_inputs(3.0, gamma=gamma != 0)
    gw, grad, rho_c = warp_terms(to_warp, u, i0, gamma)
    y, x = np.mgrid[0:30, 0:40].astype(np.float32)
    for b in range(2):
        mx, my = x + u[b, 0].numpy(), y + u[b, 1].numpy()
        i1w, i1wx, i1wy = (cv2.remap(to_warp[b, c].numpy(), mx, my, cv2.INTER_CUBIC) for c in range(3))
        np.testing.assert_allclose(gw[b, 0].numpy(), i1wx, atol=2e-3)  # grey levels of 0-255 images
        np.testing.assert_allclose(gw[b, 1].numpy(), i1wy, atol=2e-3)
        np.testing.assert_allclose(grad[b].numpy(), i1wx ** 2 + i1wy ** 2, rtol=1e-4, atol=1.0)
        expected = i1w - i1wx * u[b, 0].numpy() - i1wy * u[b, 1].numpy() - i0[b].numpy()
        np.testing.assert_allclose(rho_c[b].numpy(), expected, atol=5e-2)  # |u| up to 10 px times 2e-3
    assert gw.shape[1] == (3 if gamma else 2)
    if gamma:
        assert torch.all(gw[:, 2] == np.float32(gamma))


def test_the_solver_warps_with_the_warp_it_is_given():
    """tvl1_flow's `warp` is what TorchTVL1 swaps for the compiled warp: a solve must call it once
    per warp and scale, and take its result (a warp that zeroes the data term leaves u at 0)."""
    i0, i1, _ = analytic_pair("translation", (1.3, -0.7))
    cfg = FlowConfig(nscales=2, warps=3, outer_iterations=2, median_filtering=1)
    calls = []

    def spy(to_warp, u, image0, gamma):
        calls.append(tuple(u.shape[-2:]))
        return warp_terms(to_warp, u, image0, gamma)

    pair = torch.from_numpy(i0)[None], torch.from_numpy(i1)[None]
    np.testing.assert_array_equal(tvl1_flow(*pair, cfg, warp=spy).numpy(), tvl1_flow(*pair, cfg).numpy())
    assert calls == [(24, 32)] * 3 + [(48, 64)] * 3

    def no_data(to_warp, u, image0, gamma):
        gw, grad, rho_c = warp_terms(to_warp, u, image0, gamma)
        return torch.zeros_like(gw), grad, torch.zeros_like(rho_c)

    assert tvl1_flow(*pair, cfg, warp=no_data).abs().max() == 0


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_warp_equals_the_eager_warp():
    """The warp as TorchTVL1(compiled=True) runs it (one fused kernel on GPUs; C++ here) against
    the eager warp, with taps inside, across and far outside the image. Compiling takes 10-60 s on a
    CPU (less with torch's on-disk cache warm), so one shape only; docs/gpu.md has the GPU check."""
    compiled = torch.compile(warp_terms, dynamic=False)
    for spread in (0.4, 40.0):  # the same shapes: one graph
        to_warp, u, i0 = warp_inputs(spread)
        with torch.inference_mode():
            eager, fused = warp_terms(to_warp, u, i0, 0.0), compiled(to_warp, u, i0, 0.0)
        for name, a, b in zip(("gw", "grad", "rho_c"), eager, fused, strict=True):
            scale = float(a.abs().max())  # 255 for the images, up to 255^2 for grad
            assert float((a - b).abs().max()) <= 1e-6 * scale, name  # float32 rounding (fused multiply-adds)


# --- whole solves against OpenCV ------------------------------------------------------------------

@pytest.mark.parametrize("params", [
    dict(nscales=1, warps=1, inner_iterations=10, outer_iterations=1, median_filtering=1),
    dict(nscales=1, warps=2, inner_iterations=5, outer_iterations=2, median_filtering=5),
    dict(nscales=2, warps=2, inner_iterations=5, outer_iterations=2, median_filtering=3, scale_step=0.8),
    dict(nscales=1, warps=1, inner_iterations=5, outer_iterations=2, median_filtering=5, gamma=0.5),
], ids=["primal-dual", "warps+median5", "pyramid0.8+median3", "gamma"])
def test_follows_opencv_step_for_step(params):
    """While few warps have passed, the iteration is well-conditioned and both agree to float
    rounding; later, differences of 1e-6 grow at thresholding switches (as in OpenCV itself)."""
    i0, i1, _ = object_pair(48, 64)
    cfg = FlowConfig(epsilon=0.0, **params)
    diff = np.abs(torch_flow(cfg, i0, i1) - opencv_flow(cfg, i0, i1))
    assert diff.max() < 1e-3


def test_epsilon_rule_stops_like_opencv():
    """With a loose epsilon both stop after the same few iterations: far from the epsilon=0 flow,
    equal to each other."""
    i0, i1, _ = object_pair(48, 64)
    cfg = FlowConfig(nscales=1, warps=1, inner_iterations=30, outer_iterations=1, median_filtering=1, epsilon=0.05)
    ours, theirs = torch_flow(cfg, i0, i1), opencv_flow(cfg, i0, i1)
    unstopped = opencv_flow(FlowConfig(**{**cfg.__dict__, "epsilon": 0.0}), i0, i1)
    assert np.abs(ours - theirs).max() < 1e-4
    assert np.abs(unstopped - theirs).max() > 1e-2


def test_initial_flow_seeds_like_opencv():
    i0, i1, gt = object_pair(48, 64)
    cfg = FlowConfig(epsilon=0.0, warps=2, outer_iterations=3, use_initial_flow=True)
    seed = np.ascontiguousarray(gt.transpose(1, 2, 0), dtype=np.float32) * 0.5
    theirs = create_tvl1(cfg).calc(i0, i1, seed.copy())
    ours = TorchTVL1(cfg, "cpu").compute_pairs(
        torch.from_numpy(i0)[None], torch.from_numpy(i1)[None], torch.from_numpy(seed).permute(2, 0, 1)[None])
    assert within(ours[0].permute(1, 2, 0).numpy(), theirs) > 0.99


def test_synthetic_pair_within_opencv_criterion():
    i0, i1, gt = object_pair()
    cfg = FlowConfig(**CUDA_EQUIVALENT)
    ours, theirs = torch_flow(cfg, i0, i1), opencv_flow(cfg, i0, i1)
    assert within(ours, theirs) >= 0.95
    gt = gt.transpose(1, 2, 0)
    valid = np.ones(gt.shape[:2], bool)
    assert epe(ours, gt, valid) <= 1.05 * epe(theirs, gt, valid)


def test_rubberwhale_within_opencv_criterion(shared_data):
    """A 120x160 crop of RubberWhale (the wheel and the whale's tail) at OpenCV's CUDA-equivalent
    settings; the full frame is measured by `bench/flow_torch_tvl1.py --accuracy`."""
    root = shared_data / "flow_gt" / "middlebury_rubberwhale"
    crop = RUBBERWHALE_CROP
    i0, i1 = grey(root / "frame10.png")[crop], grey(root / "frame11.png")[crop]
    cfg = FlowConfig(**CUDA_EQUIVALENT)
    assert within(torch_flow(cfg, i0, i1), opencv_flow(cfg, i0, i1)) >= 0.95


def test_rubberwhale_epe_at_defaults(shared_data):
    root = shared_data / "flow_gt" / "middlebury_rubberwhale"
    crop = RUBBERWHALE_CROP
    i0, i1 = grey(root / "frame10.png")[crop], grey(root / "frame11.png")[crop]
    gt, valid = (a[crop] for a in read_flow(root / "flow10.flo"))
    cfg = FlowConfig()
    ours, theirs = epe(torch_flow(cfg, i0, i1), gt, valid), epe(opencv_flow(cfg, i0, i1), gt, valid)
    assert ours <= 1.05 * theirs
    assert ours < 0.4  # TV-L1 territory: OpenCV 0.26 px on this crop, 0.16 px on the full frame


# --- known answers ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,param", [
    ("translation", (1.3, -0.7)), ("translation", (2.6, 1.7)),
    ("rotation", 3.0), ("rotation", -4.0), ("zoom", 1.04), ("zoom", 0.95),
])
def test_analytic_motion(kind, param):
    """Mean end-point error below 0.05 px away from the 6 px border, where I1 does not show what
    left or entered the frame."""
    i0, i1, gt = analytic_pair(kind, param)
    flow = torch_flow(FlowConfig(), i0, i1).transpose(2, 0, 1)
    error = np.linalg.norm(flow - gt, axis=0)[6:-6, 6:-6]
    assert error.mean() < 0.05


@pytest.mark.numerical  # also run with 2 threads by `make test`
def test_batch_gives_each_pair_its_own_flow():
    """A still pair (converges at once), a large motion and a moving object in one batch: each
    pair gets its flow alone, whether converged pairs leave the batch at once (check_every=1) or
    stay masked until the next check (check_every=4, as on GPUs)."""
    pairs = [analytic_pair("translation", (0.0, 0.0)), analytic_pair("translation", (2.6, 1.7)),
             object_pair(48, 64)]
    i0 = torch.from_numpy(np.stack([p[0] for p in pairs]))
    i1 = torch.from_numpy(np.stack([p[1] for p in pairs]))
    cfg = FlowConfig(warps=3)
    alone = torch.cat([tvl1_flow(i0[k:k + 1], i1[k:k + 1], cfg) for k in range(len(pairs))])
    for check_every, masked in ((1, False), (4, False), (1, True)):  # (1, True): as when compiled
        batched = tvl1_flow(i0, i1, cfg, check_every=check_every, masked=masked)
        assert same_flow(batched.numpy(), alone.numpy())
    assert alone[0].abs().max() == 0 and alone[1].abs().mean() > 1


# --- the backend interface ----------------------------------------------------------------------

@pytest.mark.numerical  # also run with 2 threads by `make test`
def test_compute_keeps_every_pair_across_chunks():
    frames = np.stack([analytic_pair("translation", (0.3 * k, -0.2 * k))[1] for k in range(4)])
    backend = TorchTVL1(FlowConfig(batch_pairs=2), "cpu")
    flows = backend.compute(frames)  # pairs (0, 1) in one chunk, pair 2 in the next
    assert flows.shape == (3, 48, 64, 2) and flows.dtype == np.float32
    together = TorchTVL1(FlowConfig(batch_pairs=8), "cpu").compute_pairs(
        torch.from_numpy(frames[:-1]), torch.from_numpy(frames[1:]))
    assert same_flow(flows, together.permute(0, 2, 3, 1).numpy())
    # Each pair moves the texture by (0.3, -0.2) px.
    np.testing.assert_allclose(flows[:, 6:-6, 6:-6].mean(axis=(1, 2)), [[0.3, -0.2]] * 3, atol=0.05)
    assert backend.compute(frames[:1]).shape == (0, 48, 64, 2)


def test_use_initial_flow_chains_pairs_like_the_opencv_backend():
    frames = np.stack([analytic_pair("translation", (0.8 * k, 0.5 * k))[1] for k in range(3)])
    cfg = FlowConfig(use_initial_flow=True, epsilon=0.0, warps=2, outer_iterations=3)
    ours, theirs = TorchTVL1(cfg, "cpu").compute(frames), OpenCVTVL1(cfg).compute(frames)
    assert within(ours, theirs) > 0.99


@pytest.mark.parametrize("frames", [
    np.zeros((3, 20, 20), np.float32), np.zeros((3, 20, 20, 1), np.uint8), [[[0]]],
], ids=["float", "4-d", "list"])
def test_compute_rejects_what_is_not_grey_uint8(frames):
    with pytest.raises(FlowError, match=r"uint8 \[N, H, W\] grey frames"):
        TorchTVL1(FlowConfig(), "cpu").compute(frames)


@pytest.mark.parametrize("device,message", [("gpu", "expected 'auto'"), ("cuda:x", "expected 'auto'")])
def test_bad_device_names_the_key(device, message):
    with pytest.raises(SettingError, match=rf"flow.device: {message}"):
        TorchTVL1(FlowConfig(), device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_gpu_is_a_setting_error():
    with pytest.raises(SettingError, match="no CUDA GPU"):
        TorchTVL1(FlowConfig(device="cuda"))
    assert TorchTVL1(FlowConfig(device="auto")).device.type == "cpu"


@pytest.mark.parametrize("median", [2, 7])
def test_median_sizes_opencv_cannot_filter_are_refused(median):
    with pytest.raises(FlowError, match="flow.median_filtering"):
        TorchTVL1(FlowConfig(median_filtering=median), "cpu")
