"""Late fusion and the feature SVM on small sets with known answers."""
import numpy as np
import pytest

from fusion import fuse, metrics, svm
from fusion.errors import FusionError


def test_video_scores_average_softmax_or_raw():
    logits = np.array([[0.0, np.log(3.0)], [np.log(3.0), 0.0]])  # softmax rows [.25, .75], [.75, .25]
    assert fuse.video_scores(logits, "softmax") == pytest.approx([0.5, 0.5])
    assert fuse.video_scores(logits, "raw") == pytest.approx([np.log(3) / 2, np.log(3) / 2])
    batched = fuse.video_scores(np.stack([logits, logits[::-1, ::-1]]), "softmax")
    assert batched.shape == (2, 2)


def test_each_stream_right_on_a_different_half_fused_right_on_all():
    # RGB is confident and right on videos 0-1, unsure and wrong on 2-3; flow the other way round.
    rgb = np.array([[0.9, 0.1], [0.1, 0.9], [0.45, 0.55], [0.55, 0.45]])
    flow = np.array([[0.45, 0.55], [0.55, 0.45], [0.9, 0.1], [0.1, 0.9]])
    labels = [(0,), (1,), (0,), (1,)]
    assert metrics.hit_at_k(rgb, labels, 1) == 0.5
    assert metrics.hit_at_k(flow, labels, 1) == 0.5
    assert metrics.hit_at_k(fuse.fuse(rgb, flow, (1.0, 1.0)), labels, 1) == 1.0


def test_fusion_weights_decide_a_disagreement():
    rgb, flow = np.array([[0.6, 0.4]]), np.array([[0.3, 0.7]])
    # The weighted mean (eval and predict alike): (1 x 0.6 + 1.5 x 0.3) / 2.5, (1 x 0.4 + 1.5 x 0.7) / 2.5.
    assert fuse.fuse(rgb, flow, (1.0, 1.5)) == pytest.approx(np.array([[0.42, 0.58]]))
    assert fuse.fuse(rgb, flow, (1.0, 0.0)).argmax() == 0
    assert fuse.fuse(rgb, flow, (1.0, 1.5)).argmax() == 1


def test_choose_flow_weight_picks_the_best_and_breaks_ties_towards_the_default():
    # Flow alone is right on every video; RGB is confidently wrong on two of them.
    rgb = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.1, 0.9]])
    flow = np.array([[0.2, 0.8], [0.3, 0.7], [0.9, 0.1], [0.1, 0.9]])
    labels = [(1,), (1,), (0,), (1,)]
    w, table = fuse.choose_flow_weight(rgb, flow, labels, [0.0, 1.0, 1.5, 4.0, 8.0], (1.0, 1.5))
    assert table[0.0] == 0.5 and table[1.0] == 0.5 and table[4.0] == 1.0 and table[8.0] == 1.0
    assert w == 4.0  # 4 and 8 both perfect; 4 is closer to 1.5
    # Every weight perfect -> the default ratio is kept.
    w, _ = fuse.choose_flow_weight(flow, flow, labels, [0.5, 1.5, 3.0], (2.0, 3.0))
    assert w == 1.5


def test_signed_sqrt_then_l2():
    x = np.array([[4.0, -9.0, 0.0], [0.0, 0.0, 0.0]])
    # sqrt -> [2, -3, 0], norm sqrt(13)
    assert svm.normalise(x)[0] == pytest.approx(np.array([2, -3, 0]) / np.sqrt(13))
    assert svm.normalise(x)[1].tolist() == [0.0, 0.0, 0.0]
    joint = svm.two_stream(np.array([[1.0, 0.0]]), np.array([[0.0, 100.0, 0.0]]))
    assert joint == pytest.approx(np.array([[1, 0, 0, 1, 0]]) / np.sqrt(2))
    assert np.linalg.norm(joint) == pytest.approx(1.0)


def _blobs(rng, centres, per_class, spread):
    x = np.concatenate([c + spread * rng.standard_normal((per_class, len(c))) for c in centres])
    labels = [(k,) for k in range(len(centres)) for _ in range(per_class)]
    return x, labels


def test_svm_separates_separable_classes_and_reports_cv():
    rng = np.random.default_rng(0)
    centres = np.eye(4) * 3
    x_train, y_train = _blobs(rng, centres, 10, 0.3)
    x_test, y_test = _blobs(rng, centres, 5, 0.3)
    fit = svm.fit_svm(x_train, y_train, 6, cs=[0.01, 1.0, 100.0], folds=5)
    scores = fit.scores(x_test)
    assert scores.shape == (20, 6)
    assert np.isneginf(scores[:, 4:]).all()  # classes without training videos never win
    assert metrics.hit_at_k(scores, y_test, 1) == 1.0
    assert set(fit.cv_score) == {0.01, 1.0, 100.0} and fit.c in fit.cv_score
    assert fit.cv_score[fit.c] == max(fit.cv_score.values()) == 1.0


def test_svm_c_choice_prefers_the_smallest_of_equals_and_cv_sees_noise():
    rng = np.random.default_rng(1)
    # Class 0 and 1 share a centre along dim 0 but differ along a small dim 1: a tiny C cannot fit it.
    x0 = np.c_[rng.standard_normal(30), 0.05 + 0.01 * rng.standard_normal(30)]
    x1 = np.c_[rng.standard_normal(30), -0.05 + 0.01 * rng.standard_normal(30)]
    x = np.r_[x0, x1]
    labels = [(0,)] * 30 + [(1,)] * 30
    fit = svm.fit_svm(x, labels, 2, cs=[1e-4, 1e3, 1e4], folds=3)
    assert fit.cv_score[1e3] == 1.0 and fit.cv_score[1e-4] < 1.0
    assert fit.c == 1e3
    assert metrics.hit_at_k(fit.scores(x), labels, 1) == 1.0


def test_svm_multilabel_one_vs_rest():
    rng = np.random.default_rng(2)
    # Feature i is on when label i is present; videos carry one or two labels.
    labels = [(0,), (1,), (2,), (0, 1), (1, 2)] * 8
    x = np.array([[1.0 if k in lab else 0.0 for k in range(3)] for lab in labels])
    x += 0.05 * rng.standard_normal(x.shape)
    fit = svm.fit_svm(x, labels, 3, cs=[0.1, 1.0], folds=4)
    assert fit.multilabel
    assert metrics.mean_average_precision(fit.scores(x), labels) == pytest.approx(1.0)


def test_svm_needs_two_classes():
    with pytest.raises(FusionError, match="at least 2 classes"):
        svm.fit_svm(np.zeros((4, 2)), [(0,)] * 4, 3, cs=[1.0], folds=2)


def _groups_toy(seed, groups_per_class=6, classes=4, clips=4):
    """UCF101-like: the clips of one (class, group) share a strong look of their own (8 dims) and carry
    a weak class signal (4 dims). Groups are named per group number, shared across classes."""
    rng = np.random.default_rng(seed)
    x, labels, groups = [], [], []
    for k in range(classes):
        for g in range(groups_per_class):
            look = 3.0 * rng.standard_normal(8)
            for _ in range(clips):
                signal = np.eye(classes)[k] + 0.3 * rng.standard_normal(classes)
                x.append(np.r_[look + 0.1 * rng.standard_normal(8), signal])
                labels.append((k,))
                groups.append(f"g{g:02d}")
    return np.array(x), labels, groups


def test_group_folds_never_split_a_group_and_stratify_when_they_can():
    _, labels, groups = _groups_toy(0)
    first = np.array([lab[0] for lab in labels])
    folds, what = svm._folds(first, 3, 0, True, groups)
    assert what == "3-fold stratified group CV on 96 videos of 6 groups"
    held = np.zeros(len(first), dtype=int)
    for train, test in folds:
        assert not set(np.array(groups)[train]) & set(np.array(groups)[test])
        assert set(first[test]) == {0, 1, 2, 3}
        held[test] += 1
    assert (held == 1).all()  # every row held out exactly once
    # Fewer groups than folds: as many folds as groups.
    folds, what = svm._folds(first[:8], 5, 0, True, ["a"] * 4 + ["b"] * 4)
    assert len(folds) == 2 and what.startswith("2-fold")
    # A class with fewer groups than folds: unstratified group folds, still group-disjoint.
    y = np.array([0] * 6 + [1] * 6)
    g = ["a", "a", "b", "b", "c", "c", "d", "d", "d", "d", "d", "d"]
    folds, what = svm._folds(y, 3, 0, True, g)
    assert what == "3-fold group CV on 12 videos of 4 groups"
    for train, test in folds:
        assert not set(np.array(g)[train]) & set(np.array(g)[test])


def test_group_leakage_inflates_plain_cv_but_not_group_cv():
    x, labels, groups = _groups_toy(0)
    x_new, labels_new, _ = _groups_toy(1)  # new groups: what the test split holds
    cs = [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]
    plain = svm.fit_svm(x, labels, 4, cs, folds=5)
    grouped = svm.fit_svm(x, labels, 4, cs, folds=5, groups=groups)
    assert plain.cv == "5-fold stratified CV on 96 videos"
    assert grouped.cv == "5-fold stratified group CV on 96 videos of 6 groups"
    on_new_plain = metrics.hit_at_k(plain.scores(x_new), labels_new, 1)
    on_new_grouped = metrics.hit_at_k(grouped.scores(x_new), labels_new, 1)
    # Plain folds: a held-out clip's group siblings are in training, the SVM recognises the group:
    # CV ~99% against ~77% on new groups. Group folds hold whole groups out: no inflation.
    assert plain.cv_score[plain.c] > 0.95
    assert plain.cv_score[plain.c] - on_new_plain > 0.15
    assert max(grouped.cv_score.values()) < 0.6
    assert max(grouped.cv_score.values()) <= on_new_grouped
    # The group CV curve is no copy of the plain one: each C scores lower, by a wide margin.
    assert all(plain.cv_score[c] - grouped.cv_score[c] > 0.3 for c in cs if c >= 0.01)


def test_group_cv_needs_two_groups_and_one_group_per_row():
    x, labels, _ = _groups_toy(2, groups_per_class=1)
    with pytest.raises(FusionError, match="at least 2 groups, got only 'g'"):
        svm.fit_svm(x, labels, 4, [1.0], folds=3, groups=["g"] * len(labels))
    with pytest.raises(FusionError, match="3 groups for 16 training rows"):
        svm.fit_svm(x, labels, 4, [1.0], folds=3, groups=["a", "b", "c"])


def test_fold_groups_keep_what_has_a_group_and_make_the_rest_their_own():
    """A row without a group (an HMDB51 file renamed out of the dataset's naming) used to drop the groups
    of every row: the folds went back to stratified ones and split every group's clips."""
    assert svm.fold_groups([None, None], ["a", "b"]) is None  # no groups (Kinetics): stratified folds
    assert svm.fold_groups(["g1", None, "g1", ""], ["a", "b", "c", "d"]) == ["g1", "b", "g1", "d"]
    with pytest.raises(ValueError):
        svm.fold_groups(["g1"], ["a", "b"])


def test_zscore_uses_the_training_rows_statistics():
    rng = np.random.default_rng(3)
    # Dimension 1 carries the class on a scale 1000 times smaller than the noise in dimension 0.
    x = np.c_[1000.0 * rng.standard_normal(40), 1e-3 * np.repeat([-1.0, 1.0], 20) + 1e-5 * rng.standard_normal(40),
              np.full(40, 5.0)]
    labels = [(0,)] * 20 + [(1,)] * 20
    fit = svm.fit_svm(x, labels, 2, [1.0], folds=4, zscore=True)
    np.testing.assert_allclose(fit.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(fit.std[:2], x.std(axis=0)[:2], rtol=1e-12)
    assert fit.std[2] == 1.0  # a constant dimension is only centred
    assert metrics.hit_at_k(fit.scores(x), labels, 1) == 1.0
    # scores() applies the training statistics to new rows: shifting a row by the training mean of
    # dimension 0 changes its standardised value by exactly that amount over the training std.
    row = x[:1].copy()
    moved = row + np.array([[fit.std[0], 0.0, 0.0]])
    delta = fit.scores(moved) - fit.scores(row)
    coef = fit.model.coef_.ravel()[0]
    assert delta[0, 1] == pytest.approx(coef, rel=1e-9)


def test_svm_methods_pass_groups_and_say_which_folds():
    from fusion.config import EvalConfig
    from fusion.stage import svm_methods
    x, labels, groups = _groups_toy(4)
    x = np.abs(x)
    cfg = EvalConfig(svm_cs=[1.0], svm_folds=3)
    grouped = svm_methods({"rgb": x}, labels, {"rgb": x[:4]}, 4, cfg, groups=groups)
    assert "3-fold stratified group CV on 96 videos of 6 groups" in grouped[0].details
    plain = svm_methods({"rgb": x}, labels, {"rgb": x[:4]}, 4, cfg)
    assert "3-fold stratified CV on 96 videos" in plain[0].details


def test_fewer_rows_than_dimensions_same_svm_in_the_rows_span():
    rng = np.random.default_rng(5)
    x = svm.normalise(np.abs(rng.standard_normal((30, 200)) + 2.0 * np.repeat(np.eye(3, 200), 10, axis=0)))
    labels = [(k,) for k in range(3) for _ in range(10)]
    new = svm.normalise(np.abs(rng.standard_normal((7, 200))))
    for c in (0.01, 1.0, 100.0):
        fit = svm.fit_svm(x, labels, 3, [c], folds=3)
        assert fit.basis.shape == (200, 30)
        np.testing.assert_allclose(fit.basis.T @ fit.basis, np.eye(30), atol=1e-9)  # orthonormal
        direct = svm._fit(x, labels, 3, c, False)  # the 200-d fit
        # Same optimum up to the solver's tolerance (decision values are O(1)).
        np.testing.assert_allclose(fit.scores(new), direct.scores(new), atol=1e-3)
    assert svm.fit_svm(x[:, :20], labels, 3, [1.0], folds=3).basis is None  # 30 rows, 20 dims: as is
