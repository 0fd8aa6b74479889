"""The transfer protocols (fusion/transfer.py) against hand-computed answers."""
import json
from pathlib import Path

import numpy as np
import pytest

from fusion import svm, transfer
from fusion.errors import FusionError

EPS = transfer.KL_EPS


# --- the 12 (dis)similarities ------------------------------------------------------------------

def _kl(p, q):
    """Symmetric KL / 2 of the smoothed histograms, written out as the docstring defines it."""
    p = (np.asarray(p, float) + EPS) / (np.sum(p) + len(p) * EPS)
    q = (np.asarray(q, float) + EPS) / (np.sum(q) + len(q) * EPS)
    return (np.sum(p * np.log(p / q)) + np.sum(q * np.log(q / p))) / 2


def test_twelve_measures_by_hand():
    # x1 = [1, 2, 0], x2 = [0, 1, 3]: x1 x2 = [0, 2, 0], x1 + x2 = [1, 3, 3]; histograms
    # p = [1/3, 2/3, 0], q = [0, 1/4, 3/4].
    got = transfer.similarities(np.array([1.0, 2.0, 0.0]), np.array([0.0, 1.0, 3.0]))
    assert got.dtype == np.float64 and got.shape == (12,)
    want = [
        2.0,                                          # 1 sum x1 x2
        np.sqrt(2.0),                                 # 2
        np.sqrt(np.sqrt(2.0)),                        # 3 sqrt(0 + sqrt(2) + 0)
        np.sqrt(2.0 / 3.0),                           # 4 sqrt(0/1 + 2/3 + 0/3)
        2.0 / np.sqrt(5.0 * 10.0),                    # 5 cosine
        np.sqrt(1.0 / 1 + 1.0 / 3 + 9.0 / 3),         # 6 chi-square
        5.0,                                          # 7 L1: 1 + 1 + 3
        np.sqrt(1.0 + (np.sqrt(2) - 1) ** 2 + 3.0),   # 8 Hellinger
        np.sqrt(1 / 9 + (2 / 3 - 1 / 4) ** 2 + 9 / 16),  # 9 L2 of p - q
        _kl([1 / 3, 2 / 3, 0], [0, 1 / 4, 3 / 4]),    # 10
        1.0 + np.sqrt(8.0 / 11.0) + 1.0,              # 11: sqrt(2/3) / sqrt(11/12) in the middle
        0.25,                                         # 12 sum min(p, q) / (1 * 1)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_symmetric_kl_on_full_support_is_the_plain_formula():
    # p = [1/2, 1/2], q = [1/4, 3/4]: (KL(p||q) + KL(q||p)) / 2, smoothing changes it by ~1e-6.
    p, q = np.array([0.5, 0.5]), np.array([0.25, 0.75])
    exact = (np.sum(p * np.log(p / q)) + np.sum(q * np.log(q / p))) / 2
    assert transfer.similarities(np.array([1.0, 1.0]), np.array([1.0, 3.0]))[9] == pytest.approx(exact, rel=1e-5)
    # Scale does not matter to the histogram measures 9-12.
    a = transfer.similarities(np.array([1.0, 1.0]), np.array([1.0, 3.0]))
    b = transfer.similarities(np.array([10.0, 10.0]), np.array([2.0, 6.0]))
    np.testing.assert_allclose(a[8:], b[8:], rtol=1e-9)


def test_zero_vectors_follow_zero_over_zero_is_zero():
    zero = np.zeros(3)
    assert transfer.similarities(zero, zero).tolist() == [0.0] * 12
    got = transfer.similarities(zero, np.array([0.0, 1.0, 3.0]))
    want = [0, 0, 0, 0, 0,
            2.0,                  # 6 sqrt(sum x2^2 / x2) = sqrt(4)
            4.0,                  # 7
            2.0,                  # 8 sqrt(sum x2)
            np.sqrt(10.0) / 4,    # 9 |q|, p = 0
            _kl([0, 0, 0], [0, 1 / 4, 3 / 4]),  # 10: the zero histogram smooths to uniform
            2.0,                  # 11: 1 on each of the two dimensions with q > 0, 0/0 = 0 on the third
            0.0]                  # 12: 0 / (0 * 1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert np.isfinite(got).all()


def test_negative_entries_are_clipped_to_zero():
    got = transfer.similarities(np.array([-1.0, 2.0, 0.5]), np.array([3.0, -4.0, 0.5]))
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, transfer.similarities(np.array([0.0, 2.0, 0.5]), np.array([3.0, 0.0, 0.5])))


def test_similarities_rejects_vectors_of_different_length():
    with pytest.raises(FusionError, match="different lengths 2 and 3"):
        transfer.similarities(np.ones(2), np.ones(3))


# --- leave-one-video-out -----------------------------------------------------------------------

def _clusters(rng, per_class, classes, dims=6, spread=0.2):
    centres = 3.0 * np.eye(dims)[:classes] + 1.0
    x = np.concatenate([centres[k] + spread * rng.standard_normal((per_class, dims)) for k in range(classes)])
    return np.abs(x), [k for k in range(classes) for _ in range(per_class)]


def test_leave_one_out_separable_is_perfect():
    x, labels = _clusters(np.random.default_rng(0), 6, 3)
    result = transfer.leave_one_out(x, labels, 3, cs=[0.1, 10.0], folds=3)
    assert result.accuracy == 100.0
    assert result.videos == 18 and result.metrics == {}
    assert "18 fits" in result.selected and "the other videos" in result.selected


def test_leave_one_out_counts_one_known_mistake():
    x, labels = _clusters(np.random.default_rng(1), 6, 3)
    # Video 0 is labelled class 0 but looks exactly like class 1's centre: left out, it is called 1;
    # as a training video it cannot outvote the six class-1 videos around it.
    x[0] = 3.0 * np.eye(6)[1] + 1.0
    result = transfer.leave_one_out(x, labels, 3, cs=[1.0], folds=3)
    assert result.accuracy == pytest.approx(100.0 * 17 / 18)


def test_broken_videos_count_as_misses_in_every_protocol():
    """Videos without features (broken) were left out of the denominator of three_split and leave one
    out (correct / usable) while train_validation counted them as misses (correct / all), as ActivityNet's
    scorer does: the figures of the three were not comparable. REFERENCE: correct / N, N all videos."""
    x, labels = _clusters(np.random.default_rng(0), 6, 3)
    loo = transfer.leave_one_out(x, labels, 3, cs=[0.1, 10.0], folds=3, missing=2)
    assert loo.accuracy == pytest.approx(100.0 * 18 / 20) and (loo.videos, loo.excluded) == (20, 2)
    idx = np.arange(18)
    splits = [(np.setdiff1d(idx, idx[k::3]), idx[k::3]) for k in range(3)]  # 6 test videos a split, separable
    result = transfer.three_split(x, labels, None, splits, 3, cs=[1.0], folds=2, missing=[[], ["b1", "b2"], ["b1"]])
    assert result.metrics == {"split1": 100.0, "split2": pytest.approx(100.0 * 6 / 8),
                              "split3": pytest.approx(100.0 * 6 / 7)}
    # the misses are among the videos scored, once each however many splits test them (HMDB51's overlap)
    assert (result.videos, result.excluded) == (20, 2)


def test_leave_one_out_needs_labels_for_every_row():
    with pytest.raises(FusionError, match=r"expected features \[3, D\]"):
        transfer.leave_one_out(np.ones((4, 2)), [0, 1, 0], 2, cs=[1.0])


# --- three splits ------------------------------------------------------------------------------

def test_three_split_per_split_and_mean():
    x, labels = _clusters(np.random.default_rng(2), 6, 3)
    groups = [f"g{i % 3}" for i in range(18)]
    idx = np.arange(18)
    by_group = [idx[[g == f"g{k}" for g in groups]] for k in range(3)]
    splits = [(np.setdiff1d(idx, test), test) for test in by_group]
    # Split 3 without any class-2 training video: its two class-2 test videos must be misses.
    train3, test3 = splits[2]
    splits[2] = (train3[np.array(labels)[train3] != 2], test3)
    result = transfer.three_split(x, labels, groups, splits, 3, cs=[1.0], folds=2)
    assert result.metrics["split1"] == 100.0 and result.metrics["split2"] == 100.0
    assert result.metrics["split3"] == pytest.approx(100.0 * 4 / 6)
    assert result.accuracy == pytest.approx((200.0 + 400.0 / 6) / 3)
    assert result.videos == 18
    assert "split1 C=1 (2-fold" in result.selected and "group CV" in result.selected


def test_three_split_refuses_a_video_in_train_and_test():
    x, labels = _clusters(np.random.default_rng(3), 4, 2)
    with pytest.raises(FusionError, match="split 1 has video row 3 in both train and test"):
        transfer.three_split(x, labels, None, [(np.arange(6), np.array([3, 7]))], 2, cs=[1.0], folds=2)


def test_three_split_scores_the_splits_it_can_and_says_which_it_left():
    """A split whose test videos are all broken (left out before the protocol sees them) stopped the whole
    transfer run ("three_split: split 1 has no test videos"); now it is left out, named, and the figures
    are the other splits'."""
    x, labels = _clusters(np.random.default_rng(2), 6, 3)
    idx = np.arange(18)
    splits = [(idx[6:], np.array([], dtype=int)), (np.r_[0:6, 12:18], idx[6:12]), (idx[:12], idx[12:])]
    result = transfer.three_split(x, labels, None, splits, 3, cs=[1.0], folds=2)
    assert list(result.metrics) == ["split2", "split3"] and result.videos == 12
    assert result.accuracy == pytest.approx(np.mean([result.metrics["split2"], result.metrics["split3"]]))
    assert result.skipped == ["split 1: no test video with features"]
    # training videos of one class (or one group, where C is chosen on group-disjoint folds) cannot be fitted
    one_class = [(idx[np.array(labels) == 0], idx[6:12])]
    with pytest.raises(transfer.NothingToScore, match=r"^no split can be scored \(split 1: its training videos "
                                                      r"with features are all class 0; the SVM needs 2 classes\)$"):
        transfer.three_split(x, labels, None, one_class, 3, cs=[1.0], folds=2)
    groups = [f"g{i % 3}" for i in range(18)]
    splits = [(idx[idx % 3 == 0], idx[idx % 3 != 0]), (idx[idx % 3 != 2], idx[idx % 3 == 2])]
    result = transfer.three_split(x, labels, groups, splits, 3, cs=[1.0], folds=2)
    assert list(result.metrics) == ["split2"]
    assert result.skipped == ["split 1: its training videos with features are all of group g0; C is chosen on "
                              "folds that keep a group on one side"]


def test_leave_one_out_with_one_class_or_too_few_videos_has_nothing_to_score():
    x, labels = _clusters(np.random.default_rng(5), 4, 2)
    with pytest.raises(transfer.NothingToScore, match="hold 1 class"):
        transfer.leave_one_out(x[:4], labels[:4], 2, cs=[1.0])
    with pytest.raises(transfer.NothingToScore, match="at least 3 videos with features, got 2"):
        transfer.leave_one_out(x[3:5], labels[3:5], 2, cs=[1.0])
    # the only video of its class cannot be right when it is left out (no one-class SVM is fitted)
    result = transfer.leave_one_out(x[3:8], labels[3:8], 2, cs=[1.0], folds=2)
    assert result.accuracy == pytest.approx(80.0)


# --- ActivityNet -------------------------------------------------------------------------------

def _anet_example(folder):
    gt = json.loads((folder / "ground_truth.json").read_text())
    pred = json.loads((folder / "prediction.json").read_text())
    expected = json.loads((folder / "expected.json").read_text())
    classes = [node["nodeName"] for node in gt["taxonomy"]]
    videos = [v for v, rec in gt["database"].items() if rec["subset"] == "validation"]
    labels = [tuple(sorted({classes.index(a["label"]) for a in gt["database"][v]["annotations"]})) for v in videos]
    scores = np.full((len(videos), len(classes)), np.nan)  # NaN: no prediction for that class
    for row, video in enumerate(videos):
        for entry in pred["results"].get(video, []):
            scores[row, classes.index(entry["label"])] = entry["score"]
    return scores, labels, classes, expected


def test_activitynet_worked_example_matches_the_official_scorer(shared_data):
    # The official scorer's figures on a small example (hit@k, per-class interpolated AP, mAP).
    scores, labels, classes, expected = _anet_example(shared_data / "anet_scorer")
    assert np.isnan(scores).all(axis=1).sum() == 1  # one validation video has no prediction at all
    assert transfer.anet_hit_at_k(scores, labels, 1) == pytest.approx(100 * expected["hit@1"], abs=1e-9)
    assert transfer.anet_hit_at_k(scores, labels, 3) == pytest.approx(100 * expected["hit@3"], abs=1e-9)
    assert transfer.anet_map(scores, labels) == pytest.approx(100 * expected["mAP"], abs=1e-9)
    from fusion.metrics import interpolated_average_precision, label_matrix
    truth = label_matrix(labels, len(classes))
    for c, name in enumerate(classes):
        ap = interpolated_average_precision(scores[:, c], truth[:, c])
        assert ap == pytest.approx(expected["AP_per_class"][name], abs=1e-12), name


def test_train_validation_counts_missing_videos_as_misses():
    rng = np.random.default_rng(4)
    x, labels = _clusters(rng, 5, 3)
    x_test, test_labels = _clusters(rng, 2, 3)
    result = transfer.train_validation(x, [(k,) for k in labels], x_test, [(k,) for k in test_labels], 3,
                                       cs=[1.0], folds=2, labels_missing=[(0,), (2,)])
    # 6 scored videos all right, 2 missing ones wrong.
    assert result.accuracy == pytest.approx(75.0) and result.metrics["hit@3"] == pytest.approx(75.0)
    assert result.videos == 8 and result.excluded == 2
    # Class 0: 2 retrieved positives at the top, a third positive never retrieved -> AP 2/3; class 1
    # has no missing video -> 1; class 2 like class 0.
    assert result.metrics["mAP"] == pytest.approx(100 * (2 / 3 + 1 + 2 / 3) / 3)


def test_train_validation_without_validation_or_training_videos_has_nothing_to_score():
    x, labels = _clusters(np.random.default_rng(4), 5, 3)
    with pytest.raises(transfer.NothingToScore, match="^no validation video with features$"):
        transfer.train_validation(x, [(k,) for k in labels], np.zeros((0, 6)), [], 3, cs=[1.0],
                                  labels_missing=[(0,), (1,)])
    with pytest.raises(transfer.NothingToScore, match="^its training videos with features are all class 2"):
        transfer.train_validation(x[-5:], [(2,)] * 5, x, [(k,) for k in labels], 3, cs=[1.0])


# --- ASLAN View-2 ------------------------------------------------------------------------------

def _aslan(rng, splits=4, pairs_per_split=12, dims=6):
    """A tiny View-2: each split has its own two action classes, half the pairs same, half not."""
    clips, pairs, clip_id = {}, np.zeros((pairs_per_split, 5, splits), dtype=np.int64), 1
    prototypes = {}
    for s in range(splits):
        actions = (10 * (s + 1), 10 * (s + 1) + 1)
        for a in actions:
            prototypes[a] = np.abs(rng.standard_normal(dims)) * 2
        for i in range(pairs_per_split):
            same = i % 2 == 0
            a1 = actions[(i // 2) % 2]
            a2 = a1 if same else actions[1 - (i // 2) % 2]
            for a in (a1, a2):
                clips[clip_id] = prototypes[a] + 0.05 * np.abs(rng.standard_normal(dims))
                clip_id += 1
            pairs[i, :, s] = [clip_id - 2, clip_id - 1, int(same), a1, a2]
    return {"pool5": clips, "prob": {k: v[::-1] / v.sum() for k, v in clips.items()}}, pairs


class _Spy:
    """Records each fit_svm call made by the protocol (rows, groups, the fit)."""

    def __init__(self, monkeypatch, fake_decisions=None):
        self.calls = []
        self.fake = fake_decisions
        monkeypatch.setattr(transfer, "fit_svm", self)

    def __call__(self, x, labels, num_classes, cs, folds, seed=0, groups=None, zscore=False):
        if self.fake is None:
            fit = svm.fit_svm(x, labels, num_classes, cs, folds, seed, groups=groups, zscore=zscore)
        else:
            fit = _FixedDecisions(self.fake[len(self.calls)])
        self.calls.append({"x": np.array(x), "groups": list(groups), "fit": fit})
        return fit


class _FixedDecisions:
    c, cv = 1.0, "fixed"

    def __init__(self, decisions):
        self.decisions = np.asarray(decisions, dtype=float)

    def scores(self, x):
        assert len(x) == len(self.decisions)
        return np.stack([-self.decisions, self.decisions], axis=1)


def test_aslan_accuracy_se_and_auc_aggregation(monkeypatch):
    layers, pairs = _aslan(np.random.default_rng(5), splits=3, pairs_per_split=4)
    pairs[:, 2, :] = np.array([1, 1, 0, 0])[:, None]  # same, same, not, not in every split
    _Spy(monkeypatch, fake_decisions=[[1, 2, -1, -2],    # all right; AUC 1
                                      [1, -1, 2, -2],    # 2 of 4 right; AUC 2/4
                                      [3, 0, -1, 1]])    # 3, -1 right, 0 is a miss, 1 wrong; AUC 3/4
    result = transfer.aslan_view2(layers, pairs, cs=[1.0], folds=2)
    assert result.accuracy == pytest.approx(100 * 2 / 3)
    assert result.metrics["se"] == pytest.approx(100 * np.std([1, 0.5, 0.5], ddof=1) / np.sqrt(3))
    assert result.metrics["auc"] == pytest.approx(100 * (1 + 0.5 + 0.75) / 3)  # mean of per-fold AUCs
    assert result.videos == 12 and result.excluded == 0


def test_aslan_separable_pairs_and_folds_never_share_a_class(monkeypatch):
    layers, pairs = _aslan(np.random.default_rng(6))
    spy = _Spy(monkeypatch)
    result = transfer.aslan_view2(layers, pairs, cs=[0.1, 10.0], folds=3)
    assert result.accuracy == 100.0 and result.metrics["se"] == 0.0 and result.metrics["auc"] == 100.0
    assert result.videos == 48 and "2 layers x 12 measures, l2 normalised" in result.selected
    assert len(spy.calls) == 4
    actions = {s: set(pairs[:, 3:5, s].ravel().tolist()) for s in range(4)}
    for test_split, call in enumerate(spy.calls):
        groups = np.array(call["groups"], dtype=int)
        assert len(groups) == 36 and test_split not in groups  # the 3 other splits only
        x = call["x"]
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0)  # each pair vector L2-normalised
        assert x.shape[1] == 24
        # The inner CV folds that choose C: whole splits, so never an action class on both sides.
        folds, _ = svm._folds(np.zeros(36, dtype=int) + (np.arange(36) % 2), 3, 0, True, [str(g) for g in groups])
        for train, held in folds:
            inner_train = set().union(*(actions[g] for g in set(groups[train])))
            inner_held = set().union(*(actions[g] for g in set(groups[held])))
            assert not inner_train & inner_held


def test_aslan_zscore_statistics_come_from_training_pairs_only(monkeypatch):
    layers, pairs = _aslan(np.random.default_rng(7))
    first = _Spy(monkeypatch)
    transfer.aslan_view2(layers, pairs, normalisation="zscore", cs=[0.1, 10.0], folds=3)
    # Change the clips of split 3's pairs (they appear in no other split): fold 3's training is unchanged.
    changed = {name: dict(layer) for name, layer in layers.items()}
    for clip in pairs[:, :2, 2].ravel().tolist():
        for layer in changed.values():
            layer[clip] = layer[clip] * 50.0 + 7.0
    second = _Spy(monkeypatch)
    transfer.aslan_view2(changed, pairs, normalisation="zscore", cs=[0.1, 10.0], folds=3)
    a, b = first.calls[2]["fit"], second.calls[2]["fit"]
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.std, b.std)
    np.testing.assert_array_equal(a.model.coef_, b.model.coef_)
    assert a.c == b.c and a.cv_score == b.cv_score
    # The statistics are those of the raw training pair vectors (no L2 under zscore), not of all pairs.
    x = first.calls[2]["x"]
    np.testing.assert_allclose(a.mean, x.mean(axis=0), rtol=1e-12)
    assert not np.allclose(first.calls[0]["fit"].mean, a.mean)
    # The other folds did train on split 3's pairs, so theirs moved.
    assert not np.array_equal(first.calls[0]["fit"].mean, second.calls[0]["fit"].mean)


def test_aslan_pairs_with_a_missing_clip_are_excluded():
    layers, pairs = _aslan(np.random.default_rng(8))
    del layers["prob"][int(pairs[0, 0, 1])]
    result = transfer.aslan_view2(layers, pairs, cs=[1.0], folds=3)
    assert result.excluded == 1 and result.videos == 47


def test_aslan_a_split_without_pairs_is_left_out_and_named():
    """All clips of one View-2 split broken stopped the run ("View-2 split 1: no pair with features ...")."""
    layers, pairs = _aslan(np.random.default_rng(12))
    for layer in layers.values():
        for clip in pairs[:, :2, 0].ravel():
            del layer[int(clip)]
    result = transfer.aslan_view2(layers, pairs, cs=[1.0], folds=3)
    assert result.skipped == ["View-2 split 1: no pair with features for both clips"]
    assert result.videos == 36 and result.excluded == 12 and np.isfinite(result.metrics["se"])
    # every split but one gone: that one has no training pairs; nothing can be scored
    for layer in layers.values():
        for clip in pairs[:, :2, 1:3].ravel():
            del layer[int(clip)]
    with pytest.raises(transfer.NothingToScore, match=r"^no View-2 split can be scored \(View-2 split 1: no pair "
                                                      r".*View-2 split 4: no training pairs with features\)$"):
        transfer.aslan_view2(layers, pairs, cs=[1.0], folds=3)


@pytest.mark.parametrize("change, message", [
    (lambda p: p[:, :4, :], r"expected an array \[pairs, 5, splits\]"),
    (lambda p: np.where(np.arange(5)[None, :, None] == 2, 2, p), "column 3 .* must be 0 or 1"),
    (lambda p: np.where(np.arange(5)[None, :, None] == 3, 10, p), "splits 1 and 2 share action class 10"),
])
def test_aslan_bad_pairs_are_refused(change, message):
    layers, pairs = _aslan(np.random.default_rng(9))
    with pytest.raises(FusionError, match=message):
        transfer.aslan_view2(layers, change(pairs), cs=[1.0])


def test_aslan_unknown_normalisation():
    layers, pairs = _aslan(np.random.default_rng(10))
    with pytest.raises(FusionError, match="normalisation must be one of"):
        transfer.aslan_view2(layers, pairs, normalisation="minmax")


def test_aslan_layer_with_vectors_of_different_lengths():
    layers, pairs = _aslan(np.random.default_rng(11))
    layers["pool5"][int(pairs[3, 1, 2])] = np.ones(4)
    with pytest.raises(FusionError, match="aslan layer 'pool5': its feature vectors differ in length"):
        transfer.aslan_view2(layers, pairs, cs=[1.0])


def test_the_stage_gives_leave_one_out_its_groups_and_counts_misses_once():
    """`protocol = "loo"` on grouped videos chose C by plain stratified CV (three_split used group CV on
    the same data); a broken test video that two splits test counted twice in three_split's `videos`."""
    from types import SimpleNamespace

    from fusion.transfer_config import TransferConfig
    from fusion.transfer_stage import Benchmark, TransferVideo, _protocol

    rng = np.random.default_rng(0)
    ids = [f"c{c}/v{i}" for c in range(2) for i in range(6)]
    videos = [TransferVideo(v, Path(v), (int(v[1]),), f"g{v[-1]}") for v in ids]
    centre = {"c0": np.r_[np.ones(4), np.zeros(4)], "c1": np.r_[np.zeros(4), np.ones(4)]}  # separable
    features = {v: {"pool5": centre[v[:2]] + 0.1 * rng.random(8)} for v in ids if v != "c0/v5"}
    got = SimpleNamespace(features={"rgb": features})
    cfg = TransferConfig(svm_cs=[1.0], svm_folds=2)
    loo = Benchmark("scenes", "loo", Path("."), ["a", "b"], videos)
    result, details = _protocol(loo, got, "rgb", ("rgb",), set(features), cfg)
    assert "group CV" in result.selected and details == "1 of the 12 videos have no features: counted as misses"
    assert (result.videos, result.excluded, result.accuracy) == (12, 1, pytest.approx(100.0 * 11 / 12))
    train = [v for v in ids if not v.endswith(("v4", "v5"))]
    test = [v for v in ids if v.endswith(("v4", "v5"))]
    both = Benchmark("hmdb", "three_split", Path("."), ["a", "b"], videos, splits=[(train, test), (train, test)])
    result, details = _protocol(both, got, "rgb", ("rgb",), set(features), cfg)
    assert (result.videos, result.excluded) == (4, 1) and result.metrics == {"split1": 75.0, "split2": 75.0}


def test_leave_one_out_of_one_group_has_nothing_to_score():
    """Every video of one group: C cannot be chosen on group-disjoint folds. The plain FusionError of
    fit_svm stopped the whole transfer stage, every other benchmark unscored."""
    x, labels = _clusters(np.random.default_rng(0), 6, 3)
    with pytest.raises(transfer.NothingToScore, match=r"its training videos with features are all of group g01; C "
                                                      r"is chosen on folds that keep a group on one side"):
        transfer.leave_one_out(x, labels, 3, cs=[0.1, 10.0], folds=3, groups=["g01"] * 18)


def test_leave_one_out_a_video_whose_others_are_all_of_one_group_is_a_miss():
    """Video 0 alone in group g02: left out, the other 17 are all of g01 and C cannot be chosen on
    group-disjoint folds, so that fit is not made and counts as a miss (the row says so); the 17 other
    fits have both groups and are right (separable clusters)."""
    x, labels = _clusters(np.random.default_rng(0), 6, 3)
    groups = ["g02"] + ["g01"] * 17
    result = transfer.leave_one_out(x, labels, 3, cs=[0.1, 10.0], folds=3, groups=groups)
    assert result.accuracy == pytest.approx(100.0 * 17 / 18) and result.videos == 18
    assert "1 left-out video(s) whose others are all of one group: not fitted, counted as misses" in result.selected
    assert "17 fits:" in result.selected  # the fits made, not the videos
    assert "group CV" in result.selected
