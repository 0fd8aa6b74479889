import numpy as np
import pytest

from flow.errors import FlowError
from flow.formats import read_flo, read_flow, read_kitti_png, write_flo, write_flow, write_kitti_png


def field(h=7, w=9, seed=0):
    return np.random.default_rng(seed).uniform(-40, 40, (h, w, 2)).astype(np.float32)


def test_flo_round_trip_is_exact_and_marks_unknown(tmp_path):
    f = field()
    valid = np.ones(f.shape[:2], bool)
    valid[2, 3] = False
    write_flo(tmp_path / "a.flo", f, valid)
    data = (tmp_path / "a.flo").read_bytes()
    assert data[:4] == b"PIEH" and len(data) == 12 + 8 * 7 * 9
    got, got_valid = read_flo(tmp_path / "a.flo")
    assert np.array_equal(got_valid, valid)
    assert np.array_equal(got[valid], f[valid])


def test_kitti_png_round_trip_to_a_64th_of_a_pixel(tmp_path):
    f = field()
    valid = np.random.default_rng(1).random(f.shape[:2]) > 0.3
    write_kitti_png(tmp_path / "k.png", f, valid)
    got, got_valid = read_kitti_png(tmp_path / "k.png")
    assert np.array_equal(got_valid, valid)
    assert np.abs(got - f).max() <= 0.5 / 64 + 1e-6


def test_dispatch_by_extension_and_bad_files(tmp_path):
    f = field()
    write_flow(tmp_path / "x.flo", f)
    write_flow(tmp_path / "x.png", f)
    assert np.allclose(read_flow(tmp_path / "x.flo")[0], read_flow(tmp_path / "x.png")[0], atol=1 / 64)
    with pytest.raises(FlowError, match="unknown flow file type"):
        read_flow(tmp_path / "x.txt")
    (tmp_path / "bad.flo").write_bytes(b"nope" + bytes(20))
    with pytest.raises(FlowError, match="bad.flo: not a Middlebury"):
        read_flo(tmp_path / "bad.flo")
    (tmp_path / "short.flo").write_bytes((tmp_path / "x.flo").read_bytes()[:-8])
    with pytest.raises(FlowError, match="short.flo: .flo header says 9x7"):
        read_flo(tmp_path / "short.flo")
    with pytest.raises(FlowError, match="cannot read"):
        read_flo(tmp_path / "missing.flo")


def test_real_ground_truth_files(shared_data):
    gt = shared_data / "flow_gt"
    rw, rw_valid = read_flo(gt / "middlebury_rubberwhale" / "flow10.flo")
    assert rw.shape == (388, 584, 2) and 0.95 < rw_valid.mean() < 1.0  # unknown pixels masked
    assert np.abs(rw[rw_valid]).max() < 10
    kitti, kitti_valid = read_kitti_png(gt / "kitti_000" / "flow_gt.png")
    assert kitti.shape == (375, 1242, 2) and 0.05 < kitti_valid.mean() < 0.5  # sparse
    assert 20 < np.median(np.hypot(*kitti[kitti_valid].T)) < 50  # large motions (median 34 px)
    chairs, chairs_valid = read_flo(gt / "flyingchairs_tiny" / "00001_flow.flo")
    assert chairs.shape == (50, 50, 2) and chairs_valid.all()
