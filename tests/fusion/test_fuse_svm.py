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
    assert fuse.fuse(rgb, flow, (1.0, 1.5)) == pytest.approx(np.array([[1.05, 1.45]]))
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
