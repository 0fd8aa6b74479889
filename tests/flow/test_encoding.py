import csv

import numpy as np
import pytest

import flow.stage
from flow.encoding import decode, encode, step
from flow.errors import FlowError
from flow.stage import FlowJob, run_flow
from flow.store import open_store
from tests.builders import moving_square, write_video


def test_zero_motion_is_128_not_127():
    assert encode(np.zeros(3), 20).tolist() == [128, 128, 128]
    assert encode(np.zeros(1), 5)[0] == 128


# Every bound the settings allow, in half pixels (0.5 to 255), and odd ones between.
BOUNDS = [b / 2 for b in range(1, 511)] + [0.7, 1 / 3, 19.99, 123.456]


def test_zero_motion_is_128_and_the_bound_the_end_levels_at_every_bound():
    """(f + bound) * 255 / (2 bound) came to 127.4999... at bounds such as 25, 29, 50 and 100: a still
    background stored as 127, read back as a drift of half a level (-0.39 px at bound 100)."""
    wrong = [b for b in BOUNDS if encode(np.zeros(1), b)[0] != 128]
    assert wrong == []
    ends = {b: encode(np.array([-b, b]), b).tolist() for b in BOUNDS}
    assert all(v == [0, 255] for v in ends.values()), {b: v for b, v in ends.items() if v != [0, 255]}


def test_every_level_survives_decode_then_encode_at_every_bound():
    """Imported rawframes flow is decoded at its bound and encoded again where the store's differs: at
    one bound that round trip must give each of the 256 levels back."""
    levels = np.arange(256, dtype=np.uint8)
    bad = [b for b in BOUNDS if not np.array_equal(encode(decode(levels, b), b), levels)]
    assert bad == []


@pytest.mark.parametrize("bound", [0, -1, float("inf"), float("nan")])
def test_a_bound_that_is_no_finite_positive_number_is_refused(bound):
    with pytest.raises(FlowError, match="flow bound must be a finite number > 0"):
        encode(np.zeros(1), bound)


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


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_flow_is_refused_not_clipped(bad):
    """np.clip made NaN 0 (stored as -bound): a diverged solver's output read as motion."""
    flow = np.zeros((2, 4, 4, 2), np.float32)
    flow[1, 2, 3, 0] = bad
    with pytest.raises(FlowError) as err:
        encode(flow, 20)
    assert str(err.value) == ("flow is not finite (NaN or inf) in 1 of 64 values: TV-L1 diverged; check the [flow] "
                              "TV-L1 settings (tau, lambda_, theta, epsilon, gamma, scale_step)")


def test_a_backend_returning_nan_fails_that_video_with_the_reason(tmp_path, fast_cfg, monkeypatch):
    """tau = 1e308 (refused by [flow] now) gave NaN flow, stored as all-zero images with "0 failed" and a
    clean verify: whatever the backend, non-finite flow fails its video, the reason in the manifest."""
    folder = tmp_path / "videos"
    write_video(folder / "a.mkv", moving_square(6, seed=1))
    write_video(folder / "b.mkv", moving_square(6, seed=2))
    real = flow.stage.make_backend
    made = []

    class Diverged:
        def compute(self, gray):
            return np.full((len(gray) - 1, *gray.shape[1:], 2), np.nan, np.float32)

    def first_diverges(cfg, device=None):  # called once per video
        made.append(1)
        return Diverged() if len(made) == 1 else real(cfg, device)

    monkeypatch.setattr(flow.stage, "make_backend", first_diverges)
    jobs = [FlowJob(f"Cls/{p.stem}", p) for p in sorted(folder.iterdir())]
    summary = run_flow(jobs, tmp_path / "flow", fast_cfg)
    assert (summary.computed, summary.failed) == (1, 1)
    with open(tmp_path / "flow/manifest.csv", newline="") as f:
        rows = {r["video_id"]: r for r in csv.DictReader(f)}
    (failed,) = [r for r in rows.values() if r["status"] == "failed"]
    assert failed["error"].startswith(f"{failed['path']}: flow is not finite (NaN or inf) in ")
    assert "check the [flow] TV-L1 settings" in failed["error"]
    assert open_store(tmp_path / "flow").video_ids() == [v for v in rows if v != failed["video_id"]]
