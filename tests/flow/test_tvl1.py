import cv2
import numpy as np
import pytest

from flow.config import FlowConfig
from flow.errors import FlowError
from flow.tvl1 import OpenCVTVL1, create_tvl1, to_gray


def shifted_pair(dx, dy, size=64, seed=0):
    rng = np.random.default_rng(seed)
    big = cv2.GaussianBlur(rng.integers(0, 256, (size * 2, size * 2), np.uint8), (0, 0), 2.0)
    a = big[size // 2: size // 2 + size, size // 2: size // 2 + size]
    m = np.float32([[1, 0, dx], [0, 1, dy]])  # content moves by (dx, dy): b(x + d) = a(x)
    b = cv2.warpAffine(big, m, big.shape[::-1], flags=cv2.INTER_CUBIC)[size // 2: size // 2 + size,
                                                                        size // 2: size // 2 + size]
    return a, b


@pytest.mark.parametrize("dx,dy", [(1.5, -0.75), (-3.0, 2.0), (0.0, 0.0)])
def test_recovers_a_known_translation(dx, dy):
    a, b = shifted_pair(dx, dy)
    flow = OpenCVTVL1(FlowConfig()).compute(np.stack([a, b, b]))
    assert flow.shape == (2, 64, 64, 2) and flow.dtype == np.float32
    inner = flow[0, 12:-12, 12:-12]
    err = np.hypot(inner[..., 0] - dx, inner[..., 1] - dy)
    assert np.median(err) < 0.1
    assert np.abs(flow[1, 12:-12, 12:-12]).mean() < 0.05  # b -> b: no motion


def test_every_parameter_reaches_opencv():
    cfg = FlowConfig(tau=0.2, lambda_=0.1, theta=0.4, nscales=3, warps=2, epsilon=0.02,
                     inner_iterations=7, outer_iterations=4, scale_step=0.6, gamma=0.1,
                     median_filtering=3, use_initial_flow=True)
    t = create_tvl1(cfg)
    got = (t.getTau(), t.getLambda(), t.getTheta(), t.getScalesNumber(), t.getWarpingsNumber(),
           t.getEpsilon(), t.getInnerIterations(), t.getOuterIterations(), t.getScaleStep(),
           t.getGamma(), t.getMedianFiltering(), t.getUseInitialFlow())
    assert got == pytest.approx((0.2, 0.1, 0.4, 3, 2, 0.02, 7, 4, 0.6, 0.1, 3, True))


def test_initial_flow_chains_each_pair_from_the_previous_one():
    """A 2 px/frame translation with a budget too small to reach it cold (one scale, one warp, 10
    iterations: every cold pair stops about 1.2 px short). With use_initial_flow each pair starts
    from the previous pair's flow, so the error shrinks pair by pair (1.2, 0.47, 0.11 px measured);
    the first pair of the call starts from zero and equals the cold one exactly."""
    size = 64
    big = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (2 * size, 2 * size), np.uint8), (0, 0), 2.0)
    inside = np.s_[size // 2: size // 2 + size, size // 2: size // 2 + size]
    frames = np.stack([cv2.warpAffine(big, np.float32([[1, 0, 2.0 * t], [0, 1, 0]]), big.shape[::-1],
                                      flags=cv2.INTER_CUBIC)[inside] for t in range(4)])
    budget = dict(nscales=1, warps=1, outer_iterations=1, inner_iterations=10, median_filtering=1, epsilon=0.0)
    cold = OpenCVTVL1(FlowConfig(**budget)).compute(frames)
    warm = OpenCVTVL1(FlowConfig(use_initial_flow=True, **budget)).compute(frames)

    def error(flow):  # mean end-point error against (2, 0) away from the border
        return [float(np.hypot(f[12:-12, 12:-12, 0] - 2.0, f[12:-12, 12:-12, 1]).mean()) for f in flow]

    np.testing.assert_array_equal(warm[0], cold[0])
    assert min(error(cold)) > 1.0, error(cold)  # the budget is too small from zero
    e = error(warm)
    assert e[0] > 1.0 and e[1] < 0.6 * e[0] and e[2] < 0.2 * e[0], e


def test_input_checks_and_single_frame():
    with pytest.raises(FlowError, match="uint8"):
        OpenCVTVL1(FlowConfig()).compute(np.zeros((2, 8, 8), np.float32))
    assert OpenCVTVL1(FlowConfig()).compute(np.zeros((1, 8, 8), np.uint8)).shape == (0, 8, 8, 2)
    assert to_gray(np.zeros((3, 4, 5, 3), np.uint8)).shape == (3, 4, 5)


def test_a_small_video_does_not_coarsen_the_next_one():
    """OpenCV lowers nscales for good after a small image; the wrapper must undo that per video."""
    rng = np.random.default_rng(3)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (140, 180)).astype(np.float32), (0, 0), 2)
    big = np.stack([texture[:128, :160], texture[3:131, 2:162]]).astype(np.uint8)
    small = rng.integers(0, 255, (2, 40, 40), dtype=np.uint8)
    cfg = FlowConfig(nscales=5, scale_step=0.5, warps=1, outer_iterations=2)
    fresh = OpenCVTVL1(cfg).compute(big)
    reused = OpenCVTVL1(cfg)
    reused.compute(small)
    np.testing.assert_array_equal(reused.compute(big), fresh)
