"""run_eval end to end on a tiny store with tiny random streams; the report; bad input."""
import dataclasses
import errno
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from flow.store import open_store
from fusion import figures, metrics, scoring
from fusion.config import EvalConfig
from fusion.errors import FusionError
from fusion.report import COLUMNS, MethodScores
from fusion.stage import EvalJob, average_splits, run_eval, svm_from_features
from p3dbase.atomic import DiskFullError
from streams.errors import StreamsError
from tests.builders import save_tiny_checkpoint

from .conftest import CLASSES

CFG = EvalConfig(clips=3, crops="three", batch_views=5, svm_clips=4, svm_cs=[0.1, 10.0], svm_folds=3, jobs=1)


def job(store_root, checkpoints, train, test, **kwargs) -> EvalJob:
    """An evaluation of the tiny store's videos (store_root: its folder, opened here)."""
    return EvalJob(open_store(store_root), checkpoints, train, test, CLASSES, **kwargs)


@pytest.fixture(scope="module")
def evaluated(tiny_store, tiny_checkpoints, tmp_path_factory):
    store, train, test = tiny_store
    out = tmp_path_factory.mktemp("eval")
    missing = "Blue/v_Blue_99"  # a test video that is not in the store
    evaluation = job(store, tiny_checkpoints, train, test + [(missing, (2,))], protocol="tiny split 1",
                     excluded={"Red/v_Red_98": "no frames/flow in the store"})
    table = run_eval(evaluation, CFG, out)
    return table, out, test


def test_report_rows_columns_and_files(evaluated):
    table, out, test = evaluated
    assert list(table.columns) == COLUMNS
    assert list(table["method"]) == ["rgb", "flow", "fusion", "fusion_raw", "fusion_softmax", "svm_rgb", "svm_flow",
                                     "svm_two_stream"]
    assert (table["videos"] == len(test)).all()
    assert (table["excluded"] == 2).all()  # one passed in, one missing from the store
    assert table["clip_hit@1"].notna().tolist() == [True, True] + [False] * 6
    for name in ("results.csv", "results.md", "per_class.csv", "confusion.png", "per_class.png", "fusion_weight.png",
                 "scores.npz", "scores.csv", "excluded.csv", "features/rgb.npz", "features/flow.npz"):
        assert (out / name).is_file(), name
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), table, check_exact=False, atol=1e-3)
    excluded = pd.read_csv(out / "excluded.csv")
    assert sorted(excluded["video_id"]) == ["Blue/v_Blue_99", "Red/v_Red_98"]
    assert "2 excluded" in (out / "results.md").read_text()
    per_class = pd.read_csv(out / "per_class.csv")
    assert list(per_class["class"]) == CLASSES and per_class["videos"].tolist() == [3, 3, 3]


def test_features_separate_the_classes_so_every_svm_is_right(evaluated):
    table, _, _ = evaluated
    svm_rows = table.set_index("method").loc[["svm_rgb", "svm_flow", "svm_two_stream"]]
    assert (svm_rows["video_hit@1"] == 100).all()
    assert (svm_rows["mean_class_acc"] == 100).all()


def test_table_agrees_with_the_dumped_scores(evaluated):
    table, out, test = evaluated
    with np.load(out / "scores.npz") as dump:
        assert list(dump["video_ids"]) == [v for v, _ in test]
        labels = [tuple(int(c) for c in row if c >= 0) for row in dump["labels"]]
        rows = table.set_index("method")
        for method in rows.index:
            assert 100 * metrics.hit_at_k(dump[method], labels, 1) == pytest.approx(rows.loc[method, "video_hit@1"])
            assert 100 * metrics.mean_average_precision(dump[method], labels) == pytest.approx(rows.loc[method, "mAP"])
        views = dump["views_rgb"]
        assert views.shape == (len(test), 3 * 3, len(CLASSES))  # 3 clips x 3 crops
        # The default (TSN): fused = the 1 : 1.5 weighted mean of the averaged raw logits; the softmax
        # row the same of the averaged softmax probabilities, from the per-view logits.
        # Recomputed in float64 from the stored float32 logits, as fusion.fuse does: the same numbers up to
        # float64 rounding, on any CPU (a float32 mean is ~1e-7 of the logits away, which an rtol alone fails
        # on a fused score near 0, and exp() of float32 logits above 88 overflows). A wrong weight or a
        # mean over other views is off by far more than 1e-9 of the largest score.
        view_logits = {s: dump[f"views_{s}"].astype(np.float64) for s in ("rgb", "flow")}
        raw = {s: v.mean(1) for s, v in view_logits.items()}
        fused = (raw["rgb"] + 1.5 * raw["flow"]) / 2.5
        np.testing.assert_allclose(dump["fusion"], fused, rtol=1e-9, atol=1e-9 * np.abs(fused).max())
        np.testing.assert_allclose(dump["fusion_raw"], dump["fusion"], rtol=0)
        soft = {s: np.exp(v - v.max(-1, keepdims=True)) / np.exp(v - v.max(-1, keepdims=True)).sum(-1, keepdims=True)
                for s, v in view_logits.items()}
        np.testing.assert_allclose(dump["fusion_softmax"], (soft["rgb"].mean(1) + 1.5 * soft["flow"].mean(1)) / 2.5,
                                   rtol=1e-9, atol=1e-12)  # probabilities, at most 1
        clip = 100 * metrics.hit_at_k(views.reshape(-1, 3), [lab for lab in labels for _ in range(9)], 1)
        assert clip == pytest.approx(rows.loc["rgb", "clip_hit@1"])


def test_rerun_uses_the_cache_not_the_network(evaluated, tiny_store, tiny_checkpoints, monkeypatch, tmp_path):
    table, out, test = evaluated
    store, train, _ = tiny_store
    copy = tmp_path / "eval"
    shutil.copytree(out, copy)

    def no_network(*args, **kwargs):
        raise AssertionError("the network ran although every output was cached")

    monkeypatch.setattr(scoring.StreamRunner, "run", no_network)
    again = run_eval(job(store, tiny_checkpoints, train, test, protocol="tiny split 1"), CFG, copy)
    pd.testing.assert_frame_equal(again.drop(columns="excluded"), table.drop(columns="excluded"))
    # Other fusion weights and SVM settings need no network either.
    other = EvalConfig(**{**CFG.__dict__, "fusion_weights": [1.0, 0.0], "svm_cs": [1.0]})
    fused = run_eval(job(store, tiny_checkpoints, train, test, protocol="t"), other, copy)
    rows = fused.set_index("method")
    assert rows.loc["fusion", "video_hit@1"] == rows.loc["rgb", "video_hit@1"]


def test_parallel_processes_give_the_same_report(evaluated, tiny_store, tiny_checkpoints, tmp_path):
    table, _, test = evaluated
    store, train, _ = tiny_store
    cfg = EvalConfig(**{**CFG.__dict__, "jobs": 2})
    evaluation = job(store, tiny_checkpoints, train, test, protocol="tiny split 1",
                     excluded={"Red/v_Red_98": "no frames/flow in the store", "Blue/v_Blue_99": "absent"})
    parallel = run_eval(evaluation, cfg, tmp_path)
    pd.testing.assert_frame_equal(parallel, table, check_exact=False, rtol=1e-4)


def test_fusion_weight_chosen_on_train_videos(tiny_store, tiny_checkpoints, tmp_path):
    store, train, test = tiny_store
    cfg = EvalConfig(clips=2, svm=False, fusion_cv=True, fusion_cv_grid=[0.0, 1.0, 100.0], jobs=1)
    table = run_eval(job(store, tiny_checkpoints, train, test, protocol="t"), cfg, tmp_path)
    assert list(table["method"]) == ["rgb", "flow", "fusion", "fusion_raw", "fusion_softmax"]
    assert "chosen on 15 train videos" in table.set_index("method").loc["fusion", "details"]
    assert "not an honest selection" in (tmp_path / "results.md").read_text()


def test_multilabel_videos_activitynet_style(evaluated, tiny_store, tiny_checkpoints, monkeypatch, tmp_path):
    from sklearn.metrics import average_precision_score

    _, out, _ = evaluated
    store, train, test = tiny_store
    shutil.copytree(out, tmp_path / "eval")  # same videos, other labels: the cached outputs serve
    monkeypatch.setattr(scoring.StreamRunner, "run", lambda *a, **k: pytest.fail("network ran"))

    def two_labels(items):  # every other video also carries the next class
        return [(v, lab + ((lab[0] + 1) % 3,) if i % 2 else lab) for i, (v, lab) in enumerate(items)]

    table = run_eval(job(store, tiny_checkpoints, two_labels(train), two_labels(test), protocol="activitynet split 1"),
                     CFG, tmp_path / "eval")
    rows = table.set_index("method")
    text = (tmp_path / "eval" / "results.md").read_text()
    assert "ActivityNet's official metrics (its scorer's top-1 / top-3 / mAP" in text
    assert "mAP" in rows.loc["svm_two_stream", "details"]  # C chosen by cross-validated mAP
    with np.load(tmp_path / "eval" / "scores.npz") as dump:
        truth = metrics.label_matrix([lab for _, lab in two_labels(test)], 3)
        assert dump["labels"].shape == (len(test), 2)
        for method in rows.index:
            expected = 100 * average_precision_score(truth, dump[method], average="macro")
            assert rows.loc[method, "mAP"] == pytest.approx(expected)


def test_activitynet_reports_carry_its_official_metrics():
    """`make eval` on ActivityNet gave only scikit-learn's AP and hit@5; the paper reports the official
    scorer's top-1, top-3 and interpolated mAP. Worked example: class 0's positives rank 2nd and 3rd
    (precisions 1/2, 2/3: AP 0.583, interpolated 0.667), class 1's 3rd (1/3), class 2's 1st (1):
    mAP 66.67 interpolated where scikit-learn's is 63.89; video 1 is wrong at top-1, right at top-3."""
    from fusion.stage import anet_note

    scores = np.array([[0.5, 0.05, 0.05], [0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    labels = [(0,), (1,), (0,), (2,)]
    assert 100 * metrics.mean_average_precision(scores, labels) == pytest.approx(100 * (7 / 12 + 1 / 3 + 1) / 3)
    note = anet_note([MethodScores("fusion", scores, "")], labels)
    assert note.endswith("(its scorer's top-1 / top-3 / mAP with interpolated precision, as the paper reports "
                         "them; the table's mAP is not interpolated): fusion 75.00 / 100.00 / 66.67.")
    # A test video eval excluded (no frames) is a miss, as the scorer counts a video without predictions:
    # 3 of 5 at top-1, 4 of 5 at top-3; class 2's second video is never retrieved: its AP halves to 0.5.
    note = anet_note([MethodScores("fusion", scores, "")], labels, excluded=[(2,)])
    assert note.endswith("paper reports them, the 1 excluded videos as misses; the table's mAP is not "
                         "interpolated): fusion 60.00 / 80.00 / 50.00.")


def test_activitynet_counts_the_excluded_test_videos_as_misses(tiny_store, tiny_checkpoints, tmp_path):
    """Excluded test videos (no flow, or absent under the root) were not in the job's test list, so the
    ActivityNet scorer's figures left them out; they come with their labels now, never read."""
    store, train, test = tiny_store
    gone = ("Red/v_Red_98", (0,))  # in no store: read, it would fail
    cfg = dataclasses.replace(CFG, svm=False, clips=1, crops="center")
    run_eval(job(store, {"rgb": tiny_checkpoints["rgb"]}, train, [*test, gone], protocol="activitynet val",
                 excluded={gone[0]: "listed in the annotations but not under the root"}), cfg, tmp_path)
    assert "the 1 excluded videos as misses" in (tmp_path / "results.md").read_text()
    excluded = pd.read_csv(tmp_path / "excluded.csv")
    assert list(excluded["video_id"]) == [gone[0]]
    assert excluded["reason"].iloc[0] == "listed in the annotations but not under the root"


def test_every_test_video_excluded_is_refused_before_any_network_work(tiny_store, tiny_checkpoints, tmp_path,
                                                                       monkeypatch):
    """With the excluded test videos in the job's test list, "no test videos" no longer fired: eval
    computed every training video's features, then refused."""
    from fusion import stage

    store, train, test = tiny_store
    monkeypatch.setattr(stage, "collect", lambda *a, **k: pytest.fail("network outputs computed"))
    with pytest.raises(FusionError, match=r"^none of the 2 test videos can be evaluated \(all excluded, e\.g\. "):
        run_eval(job(store, tiny_checkpoints, train, test[:2], protocol="t",
                     excluded={v: "no frames/flow in the store" for v, _ in test[:2]}), CFG, tmp_path)


def test_svm_rerun_from_saved_features(evaluated):
    table, out, _ = evaluated
    rerun = svm_from_features(out / "features", CFG)
    expected = table[table["method"].str.startswith("svm_")].reset_index(drop=True)
    pd.testing.assert_frame_equal(rerun, expected)


def test_average_splits(tmp_path):
    a = pd.DataFrame([{"method": "rgb", "clip_hit@1": 50.0, "video_hit@1": 60.0, "video_hit@5": 90.0,
                       "mean_class_acc": 55.0, "mAP": 70.0, "videos": 10, "excluded": 1, "protocol": "s1",
                       "details": "x"}], columns=COLUMNS)
    b = a.assign(**{"video_hit@1": 80.0, "videos": 12, "excluded": 0, "protocol": "s2"})
    avg = average_splits([a, b], tmp_path, protocol="3-split")
    row = avg.iloc[0]
    assert row["video_hit@1"] == 70.0 and row["clip_hit@1"] == 50.0
    assert row["videos"] == 22 and row["excluded"] == 1 and row["splits"] == 2 and row["protocol"] == "3-split"
    assert (tmp_path / "results.csv").is_file() and "| rgb | 50.00 | 70.00 |" in (tmp_path / "results.md").read_text()


def test_single_stream_eval(tiny_store, tiny_checkpoints, tmp_path):
    store, train, test = tiny_store
    cfg = EvalConfig(clips=2, svm_clips=2, svm_folds=2, jobs=1)
    table = run_eval(job(store, {"rgb": tiny_checkpoints["rgb"]}, train, test, protocol="t"), cfg, tmp_path)
    assert list(table["method"]) == ["rgb", "svm_rgb"]


# Bad input: each message names the file or video and what to run.

def _eval(tiny_store, checkpoints, tmp_path, store_dir=None, out_dir=None, **kwargs):
    store, train, test = tiny_store
    evaluation = dataclasses.replace(job(store_dir or store, checkpoints, train, test, protocol="t"), **kwargs)
    return run_eval(evaluation, EvalConfig(clips=1, svm=False, jobs=1), out_dir or tmp_path / "out")


def test_missing_checkpoint_names_the_training_to_run(tiny_store, tiny_checkpoints, tmp_path):
    with pytest.raises(FusionError, match=r"flow stream.*make train-flow"):
        _eval(tiny_store, {**tiny_checkpoints, "flow": tmp_path / "never_trained"}, tmp_path)
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(FusionError, match=r"not finished.*make train-rgb"):
        _eval(tiny_store, {**tiny_checkpoints, "rgb": tmp_path / "unfinished"}, tmp_path)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(StreamsError, match=r"^checkpoint .*broken\.pt cannot be read"):  # the loader's own error
        _eval(tiny_store, {**tiny_checkpoints, "rgb": tmp_path / "broken.pt"}, tmp_path)


def test_modality_and_class_mismatches(tiny_store, tiny_checkpoints, tmp_path):
    with pytest.raises(FusionError, match=r"is a rgb stream but was given as the flow stream.*make train-flow"):
        _eval(tiny_store, {**tiny_checkpoints, "flow": tiny_checkpoints["rgb"]}, tmp_path)
    renamed = save_tiny_checkpoint(tmp_path / "renamed.pt", "rgb", classes=["Red", "Green", "Cyan"])
    with pytest.raises(FusionError, match=r"renamed\.pt does not know 1 of the dataset's 3 classes \('Blue'; "
                                          r".*make train-rgb"):
        _eval(tiny_store, {**tiny_checkpoints, "rgb": renamed}, tmp_path)


def test_videos_without_flow_are_excluded_and_counted(tiny_store, tiny_checkpoints, tmp_path):
    store, train, test = tiny_store
    root = tmp_path / "store"
    shutil.copytree(store, root)
    one = np.zeros((1, 24, 32, 3), np.uint8)
    open_store(root).write_video("Red/one_frame", one, np.zeros((0, 24, 32, 2), np.uint8))
    table = _eval(tiny_store, tiny_checkpoints, tmp_path, store_dir=root,
                  test=test + [("Red/one_frame", (0,))])
    assert (table["excluded"] == 1).all() and (table["videos"] == len(test)).all()
    reasons = pd.read_csv(tmp_path / "out" / "excluded.csv").set_index("video_id")["reason"]
    assert "no flow images" in reasons["Red/one_frame"]
    with pytest.raises(FusionError, match=r"none of the test videos"):
        _eval(tiny_store, tiny_checkpoints, tmp_path, store_dir=root, test=[("Red/one_frame", (0,))])


def test_checkpoint_classes_matched_by_name(tiny_store, tiny_checkpoints, tmp_path, monkeypatch):
    """Weights that know more classes, in another order and spelling (imported Kinetics-style), score
    the dataset's classes from the matching output columns: the same numbers as the original net."""
    import torch

    from streams.checkpoint import read_checkpoint, save_checkpoint

    original = read_checkpoint(tiny_checkpoints["rgb"] / "last.pt").state
    state = dict(original)
    order = [2, 0, 1]  # the new file's columns: Blue, Red, Green, then an extra class
    fc_w, fc_b = state["model"]["fc.weight"], state["model"]["fc.bias"]
    model = dict(state["model"])
    model["fc.weight"] = torch.cat([fc_w[order], torch.randn(1, fc_w.shape[1])])
    model["fc.bias"] = torch.cat([fc_b[order], torch.zeros(1)])
    state.update(model=model, classes=["blue", "RED", "Green", "Extra class"])
    save_checkpoint(tmp_path / "imported.pt", state)
    cfg = EvalConfig(clips=2, svm=False, jobs=1)
    store, train, test = tiny_store
    plain = run_eval(job(store, {"rgb": tiny_checkpoints["rgb"]}, train, test, protocol="t"), cfg, tmp_path / "a")
    matched = run_eval(job(store, {"rgb": tmp_path / "imported.pt"}, train, test, protocol="t"), cfg, tmp_path / "b")
    with np.load(tmp_path / "a" / "scores.npz") as a, np.load(tmp_path / "b" / "scores.npz") as b:
        # float32 logits of two runs: within 1e-5 of the largest, whatever the CPU and thread count
        np.testing.assert_allclose(b["views_rgb"], a["views_rgb"], rtol=0, atol=1e-5 * np.abs(a["views_rgb"]).max())
    pd.testing.assert_frame_equal(matched.drop(columns="details"), plain.drop(columns="details"))
    assert "3 of its 4 classes matched by name" in (tmp_path / "b" / "results.md").read_text()


def test_class_columns_lists_every_unknown_class():
    from fusion.stage import class_columns

    assert class_columns(["a", "b"], ["a", "b"], "x.pt") is None
    assert class_columns(["Apply Eye_Makeup", "b"], ["b", "ApplyEyeMakeup"], "x.pt").tolist() == [1, 0]
    with pytest.raises(FusionError, match=r"x\.pt does not know 2 of the dataset's 3 classes \('c', 'd'; it has 2"):
        class_columns(["a", "b"], ["a", "c", "d"], "x.pt")


def test_held_out_videos_choose_the_rule_and_c_never_the_test(evaluated, tiny_store, tiny_checkpoints, tmp_path):
    _, out, _ = evaluated
    store, train, test = tiny_store
    shutil.copytree(out, tmp_path / "eval")  # the held-out videos' outputs are cached: no network needed
    val = [item for item in train if item[0].endswith("_04")]
    rest = [item for item in train if item not in val]
    table = run_eval(job(store, tiny_checkpoints, rest, test, protocol="t", val=val, val_note="group 04"), CFG,
                     tmp_path / "eval")
    rows = table.set_index("method")
    assert "chosen on 3 held-out videos" in rows.loc["fusion", "details"]
    assert "chosen on 3 held-out videos" in rows.loc["svm_two_stream", "details"]
    assert "fitted on 15 videos" in rows.loc["svm_rgb", "details"]
    text = (tmp_path / "eval" / "results.md").read_text()
    assert "Fusion rule (" in text and "chosen on the held-out videos (3 videos of group 04)" in text
    assert "SVM C: chosen on the held-out videos (3 videos of group 04)" in text
    # The saved features hold the held-out videos too: the SVM rows re-run from them are the report's
    # (they held the training videos alone, and a re-run chose C by cross-validation on them).
    rerun = svm_from_features(tmp_path / "eval" / "features", CFG)
    pd.testing.assert_frame_equal(rerun, table[table["method"].str.startswith("svm_")].reset_index(drop=True))
    # The rows describe the features as they were made, whatever the config given says.
    other = svm_from_features(tmp_path / "eval" / "features", dataclasses.replace(CFG, svm_clips=CFG.svm_clips + 7))
    assert list(other["details"]) == list(rerun["details"])
    with pytest.raises(FusionError, match="also training or held-out videos"):
        run_eval(job(store, tiny_checkpoints, rest, test, protocol="t", val=test[:1]), CFG, tmp_path / "eval")


def _report_intact(out) -> dict:
    """report.json's listing, checked against the files next to it."""
    from streams.checkpoint import file_sha256

    listing = json.loads((out / "report.json").read_text())["files"]
    assert {name: file_sha256(out / name) for name in listing} == listing
    assert not list(out.glob(".report.tmp-*"))
    return listing


def test_the_report_is_never_a_mix_of_two_runs(tiny_store, tiny_checkpoints, tmp_path, monkeypatch):
    """A kill while the report was written left old and new files side by side. Now the files are
    written to a folder of their own and moved in together, report.json (with each file's SHA-256) last."""
    out = tmp_path / "out"
    _eval(tiny_store, tiny_checkpoints, tmp_path)
    listing = _report_intact(out)
    assert {"results.csv", "results.md", "per_class.csv", "confusion.png", "scores.npz", "excluded.csv"} <= set(listing)
    assert set(listing) == {p.name for p in out.iterdir() if p.is_file()} - {"report.json"}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(figures, "per_class_bars", killed)  # after results.* and confusion.png are written
    with pytest.raises(KeyboardInterrupt):
        _eval(tiny_store, tiny_checkpoints, tmp_path, protocol="another run")
    assert _report_intact(out) == listing
    assert "another run" not in (out / "results.md").read_text()


def test_a_full_disk_in_eval_is_one_error_and_keeps_the_old_report(tiny_store, tiny_checkpoints, tmp_path,
                                                                   monkeypatch):
    out = tmp_path / "out"
    _eval(tiny_store, tiny_checkpoints, tmp_path)
    listing = _report_intact(out)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(DiskFullError, match=r"out \(the evaluation report\): disk full") as err:
        _eval(tiny_store, tiny_checkpoints, tmp_path, protocol="another run")
    assert str(out) in str(err.value) and "\n" not in str(err.value)
    assert _report_intact(out) == listing
    # Writing the network outputs' cache: the stage stops, rather than failing every video in turn.
    with pytest.raises(DiskFullError, match=r"cache/.*\.npz: disk full"):
        _eval(tiny_store, tiny_checkpoints, tmp_path, out_dir=tmp_path / "fresh")
