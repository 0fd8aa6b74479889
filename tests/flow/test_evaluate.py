import numpy as np
import pytest

from flow.encoding import encode
from flow.errors import FlowError
from flow.evaluate import config_with, endpoint_errors, epe_stats, evaluate_store, main, pooled, resize_flow
from flow.formats import write_flo
from flow.store import create_store


def test_epe_statistics_on_known_errors():
    truth = np.zeros((1, 4, 2))
    est = np.array([[[0.05, 0], [0.6, 0.8], [3, 4], [0, 2]]])  # EPE 0.05, 1, 5, 2
    errors = endpoint_errors(est, truth)
    assert errors.tolist() == pytest.approx([0.05, 1.0, 5.0, 2.0])
    s = epe_stats("x", [errors])
    assert s.mean_epe == pytest.approx(2.0125) and s.within == pytest.approx((0.25, 0.5, 0.75))
    masked = endpoint_errors(est, truth, np.array([[True, True, False, False]]))
    assert masked.tolist() == pytest.approx([0.05, 1.0])
    both = pooled([s, epe_stats("y", [masked])])
    assert both.pixels == 6 and both.mean_epe == pytest.approx((8.05 + 1.05) / 6)
    with pytest.raises(FlowError, match="same size"):
        endpoint_errors(est, np.zeros((2, 4, 2)))


def test_resizing_ground_truth_scales_the_vectors():
    f = np.zeros((8, 10, 2), np.float32)
    f[..., 0], f[..., 1] = 4.0, -2.0
    valid = np.ones((8, 10), bool)
    valid[0, 0] = False
    small, small_valid = resize_flow(f, valid, (5, 2))
    assert small.shape == (2, 5, 2) and np.allclose(small[small_valid], [2.0, -0.5])
    assert not small_valid[0, 0] and small_valid[1].all()


def test_tvl1_on_rubberwhale_meets_the_target(shared_data, capsys):
    d = shared_data / "flow_gt" / "middlebury_rubberwhale"
    assert main(["--frames", str(d / "frame10.png"), str(d / "frame11.png"), "--gt", str(d / "flow10.flo")]) == 0
    line = capsys.readouterr().out.splitlines()[2]
    epe = float(line.split("|")[4])
    assert epe <= 0.17  # the target for the default settings (0.164 measured)


def test_store_mode_reports_quantisation_only_for_exact_flow(tmp_path, capsys):
    rng = np.random.default_rng(0)
    truth = rng.uniform(-5, 5, (3, 6, 8, 2)).astype(np.float32)
    store = create_store(tmp_path / "store")
    store.write_video("Cls/v", np.zeros((4, 6, 8, 3), np.uint8), encode(truth))
    for i, f in enumerate(truth):
        (tmp_path / "gt" / "Cls" / "v").mkdir(parents=True, exist_ok=True)
        write_flo(tmp_path / "gt" / "Cls" / "v" / f"flow_{i + 1:05d}.flo", f)
    [row] = evaluate_store(tmp_path / "store", tmp_path / "gt")
    assert row.pairs == 3 and row.pixels == 3 * 48
    assert row.mean_epe < 40 / 255  # only the uint8 quantisation
    assert main(["--store", str(tmp_path / "store"), "--gt-dir", str(tmp_path / "gt"),
                 "--csv", str(tmp_path / "t.csv")]) == 0
    assert "| Cls/v | 3 | 144 |" in capsys.readouterr().out
    assert (tmp_path / "t.csv").read_text().startswith("flow,pairs,pixels,mean_epe")


def test_flow_file_mode_and_errors(tmp_path, capsys):
    f = np.ones((4, 5, 2), np.float32)
    write_flo(tmp_path / "gt.flo", f)
    write_flo(tmp_path / "est.flo", f + [3, 4])
    assert main(["--flow", str(tmp_path / "est.flo"), "--gt", str(tmp_path / "gt.flo"),
                 "--vis", str(tmp_path / "v.png")]) == 0
    assert "| est.flo | 1 | 20 | 5.000 | 0.0% | 0.0% | 0.0% |" in capsys.readouterr().out
    assert (tmp_path / "v.png").exists()
    # --set acts on TV-L1 computing --frames / --pair alone: elsewhere, and for the store's settings, a warning
    assert main(["--flow", str(tmp_path / "est.flo"), "--gt", str(tmp_path / "gt.flo"), "--set", "warps=3"]) == 0
    assert "warning: --set warps: no effect here" in capsys.readouterr().err
    from flow.evaluate import _unused_settings

    assert _unused_settings(["size=10x10", "flow.bound=5", "scale_step=0.8", "codec=png"], pairs=True) == [
        "size", "bound", "codec"]
    assert _unused_settings(["scale_step=0.8", "backend=fast"], pairs=True) == []
    import dataclasses

    from flow.config import FlowConfig
    from flow.evaluate import PAIR_FIELDS

    assert set(PAIR_FIELDS) <= {f.name for f in dataclasses.fields(FlowConfig)}  # a renamed field is caught
    assert main([]) == 2
    assert main(["--flow", str(tmp_path / "est.flo")]) == 2
    assert "needs --gt" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # was read as "all", as 0 is
        main(["--store", str(tmp_path), "--gt-dir", str(tmp_path), "--videos", "-1"])
    assert "argument --videos: must be a whole number, 0 (all) or more, got '-1'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--store", str(tmp_path), "--gt-dir", str(tmp_path), "--videos", "1.5"])
    assert "argument --videos: must be a whole number, 0 (all) or more, got '1.5'" in capsys.readouterr().err


def test_set_overrides():
    cfg = config_with(["scale_step=0.8", "flow.warps=3", "use_initial_flow=true"])
    assert (cfg.scale_step, cfg.warps, cfg.use_initial_flow) == (0.8, 3, True)
    with pytest.raises(FlowError, match="nope"):
        config_with(["nope=1"])
    with pytest.raises(FlowError, match="warps"):
        config_with(["warps=x"])
    with pytest.raises(FlowError, match="scale_step"):
        config_with(["scale_step=2"])


def test_unknown_estimates_count_as_errors_not_as_left_out_pixels(tmp_path, capsys):
    """A NaN pixel, or one a KITTI estimate marks invalid, is an error outside every threshold: the
    estimator that leaves pixels out cannot score better than one that gets them exactly right."""
    truth = np.zeros((1, 4, 2))
    est = np.zeros((1, 4, 2))
    est[0, 1] = np.nan
    errors = endpoint_errors(est, truth, known=np.array([[True, True, False, True]]))
    assert errors.tolist() == [0.0, np.inf, np.inf, 0.0]
    s = epe_stats("x", [errors])
    assert s.unknown == 2 and s.mean_epe == np.inf and s.within == pytest.approx((0.5, 0.5, 0.5))
    write_flo(tmp_path / "gt.flo", np.ones((4, 5, 2), np.float32))
    nan = np.ones((4, 5, 2), np.float32)
    nan[0, :3] = np.nan
    write_flo(tmp_path / "nan.flo", nan)
    assert main(["--flow", str(tmp_path / "nan.flo"), "--gt", str(tmp_path / "gt.flo")]) == 0
    assert "| nan.flo | 1 | 20 | inf | 85.0% | 85.0% | 85.0% | 3 |" in capsys.readouterr().out


def test_an_all_unknown_estimate_and_bad_outputs_are_one_line_errors(tmp_path, capsys):
    write_flo(tmp_path / "gt.flo", np.ones((4, 5, 2), np.float32))
    write_flo(tmp_path / "nan.flo", np.full((4, 5, 2), np.nan, np.float32))
    write_flo(tmp_path / "small.flo", np.ones((3, 5, 2), np.float32))
    cases = [
        (["--flow", "nan.flo", "--gt", "gt.flo"], "the estimate is unknown (NaN, infinite or marked invalid) at "
                                                  "every one of the 20 pixels with ground truth"),
        (["--flow", "small.flo", "--gt", "gt.flo"], "small.flo is 5x3 but its ground truth"),
        (["--flow", "gt.flo", "--gt", "gt.flo", "--csv", "no/such/t.csv"], "no/such/t.csv: the folder"),
        (["--flow", "gt.flo", "--gt", "gt.flo", "--vis", "v.txt"], "v.txt: writes a PNG picture, so the "
                                                                   "name must end in .png"),
    ]
    for argv, message in cases:
        argv = [str(tmp_path / a) if a.endswith((".flo", ".csv", ".txt")) else a for a in argv]
        assert main(argv) == 2, argv
        out = capsys.readouterr()
        assert message in out.err and out.err.count("\n") == 1 and "nan" not in out.out, (argv, out)
    assert not (tmp_path / "v.txt").exists()
