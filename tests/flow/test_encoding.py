import numpy as np
import pytest

from flow.encoding import decode, encode, step
from flow.errors import FlowError


def test_zero_motion_is_128_not_127():
    assert encode(np.zeros(3), 20).tolist() == [128, 128, 128]
    assert encode(np.zeros(1), 5)[0] == 128


def test_bounds_and_clipping():
    u8 = encode(np.array([-20.0, 20.0, -1e6, 1e6, -20.1, 20.1]), 20)
    assert u8.tolist() == [0, 255, 0, 255, 0, 255]
    assert decode(np.array([0, 255], np.uint8), 20).tolist() == [-20.0, 20.0]


def test_formula_matches_tsn_rounding():
    f = np.array([-10.0, 0.05, 3.3, 7.77])
    expected = np.floor(255 * (f + 20) / 40 + 0.5).astype(np.uint8)
    assert np.array_equal(encode(f, 20), expected)
    u8 = np.arange(256, dtype=np.uint8)
    # decode returns float32 of |values| <= 20: rounding <= 20 * 2**-24 = 1.2e-6, well inside 1e-5.
    assert np.allclose(decode(u8, 20), u8.astype(np.float64) * 40 / 255 - 20, atol=1e-5)


@pytest.mark.parametrize("bound", [20.0, 5.0, 1.0])
def test_round_trip_within_half_a_step_inside_the_bound(bound):
    rng = np.random.default_rng(0)
    f = np.concatenate([rng.uniform(-bound, bound, 100_000), np.linspace(-bound, bound, 10_001)])
    err = np.abs(decode(encode(f, bound), bound) - f)
    assert step(bound) == pytest.approx(2 * bound / 255)
    assert err.max() <= step(bound) / 2 + 1e-5
    assert step(20.0) / 2 == pytest.approx(0.0784, abs=1e-4)


def test_every_level_round_trips_exactly():
    u8 = np.arange(256, dtype=np.uint8)
    assert np.array_equal(encode(decode(u8, 20), 20), u8)


def test_bad_inputs():
    with pytest.raises(FlowError):
        encode(np.zeros(2), 0)
    with pytest.raises(FlowError, match="uint8"):
        decode(np.zeros(2, np.float32), 20)
