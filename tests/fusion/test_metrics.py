"""Metrics against hand-computed examples, the tie rule, and mAP against scikit-learn."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from fusion import metrics


def test_hit_at_k_hand_computed():
    scores = np.array([
        [0.1, 0.7, 0.2],  # true 1: rank 1
        [0.5, 0.3, 0.2],  # true 2: rank 3
        [0.2, 0.5, 0.3],  # true 2: rank 2
        [0.6, 0.1, 0.3],  # true 0: rank 1
    ])
    labels = [(1,), (2,), (2,), (0,)]
    assert metrics.hits_at_k(scores, labels, 1).tolist() == [True, False, False, True]
    assert metrics.hit_at_k(scores, labels, 1) == 0.5
    assert metrics.hit_at_k(scores, labels, 2) == 0.75
    assert metrics.hit_at_k(scores, labels, 3) == 1.0


def test_ties_count_against_the_prediction_whatever_the_class_index():
    # True class tied with a wrong class at the top: a miss at 1 (lower index or not), a hit at 2.
    scores = np.array([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2]])
    for labels in ([(0,), (0,)], [(1,), (1,)]):
        assert metrics.hits_at_k(scores, labels, 1).tolist() == [False, False]
        assert metrics.hits_at_k(scores, labels, 2).tolist() == [True, True]
    # A constant score vector is a hit only when k exceeds the number of wrong classes.
    flat = np.full((1, 4), 0.25)
    assert [metrics.hit_at_k(flat, [(2,)], k) for k in (1, 3, 4)] == [0.0, 0.0, 1.0]
    # Ties below the true class do not matter.
    assert metrics.hit_at_k(np.array([[0.9, 0.05, 0.05]]), [(0,)], 1) == 1.0


def test_nan_scores_are_misses():
    scores = np.array([[np.nan, 1.0, 0.0], [0.0, 1.0, 0.0]])
    assert metrics.hits_at_k(scores, [(1,), (1,)], 3).tolist() == [False, True]


def test_multilabel_hit_counts_any_true_class_and_true_ties_do_not_hurt():
    scores = np.array([[0.5, 0.5, 0.1, 0.2], [0.1, 0.2, 0.9, 0.3]])
    labels = [(0, 1), (0, 3)]
    # row 0: both top classes true -> hit at 1; row 1: class 3 has one wrong class (2) ahead.
    assert metrics.hits_at_k(scores, labels, 1).tolist() == [True, False]
    assert metrics.hits_at_k(scores, labels, 2).tolist() == [True, True]


def test_mean_class_accuracy_weights_classes_not_videos():
    # class 0: 3 videos, all right; class 1: 1 video, wrong; class 2: no video (left out).
    scores = np.array([[1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0]])
    labels = [(0,), (0,), (0,), (1,)]
    assert metrics.hit_at_k(scores, labels, 1) == 0.75
    assert metrics.mean_class_accuracy(scores, labels) == 0.5
    per_class = metrics.per_class_accuracy(metrics.hits_at_k(scores, labels, 1), labels, 3)
    assert per_class[:2].tolist() == [1.0, 0.0] and np.isnan(per_class[2])


def test_average_precision_hand_computed():
    # Ranked: P N P N -> precision at the positives 1/1 and 2/3 -> AP = (1 + 2/3) / 2.
    assert metrics.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    # A tie between a positive and a negative enters together: precision 1/2 at recall 1.
    assert metrics.average_precision([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert np.isnan(metrics.average_precision([0.1, 0.2], [0, 0]))


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, c = 60, 7
    scores = np.round(rng.random((n, c)), 1)  # coarse values: many ties
    labels = [tuple(sorted(set(rng.choice(c, size=rng.integers(1, 3), replace=False).tolist())))
              for _ in range(n)]
    truth = metrics.label_matrix(labels, c)
    for k in range(c):
        if truth[:, k].any():
            assert metrics.average_precision(scores[:, k], truth[:, k]) == pytest.approx(
                average_precision_score(truth[:, k], scores[:, k]))
    present = truth.any(axis=0)
    expected = average_precision_score(truth[:, present], scores[:, present], average="macro")
    assert metrics.mean_average_precision(scores, labels) == pytest.approx(expected)


def test_confusion_matrix_rows_true_columns_predicted():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    cm = metrics.confusion_matrix(scores, [(0,), (1,), (1,)], 2)
    assert cm.tolist() == [[1, 0], [1, 1]]
