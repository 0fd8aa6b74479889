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


# ActivityNet's official scorer: NaN / -inf = no prediction for that class (a row of them: no video).

def test_anet_hit_at_k_hand_computed():
    nan, inf = np.nan, np.inf
    scores = np.array([
        [0.9, 0.5, nan],   # true 1: second -> miss at 1, hit at 2
        [nan, nan, nan],   # no prediction at all -> miss at every k
        [0.2, 0.3, 0.1],   # true {0, 2}: class 0 second -> hit at 2
        [-inf, 0.1, 0.4],  # true 0 not predicted -> miss even at k = 3
        [0.7, 0.7, 0.1],   # tie with a wrong class -> miss at 1, hit at 2
    ])
    labels = [(1,), (0,), (0, 2), (0,), (0,)]
    assert metrics.anet_hit_at_k(scores, labels, 1) == 0.0
    assert metrics.anet_hit_at_k(scores, labels, 2) == pytest.approx(60.0)
    assert metrics.anet_hit_at_k(scores, labels, 3) == pytest.approx(60.0)


def test_interpolated_average_precision_hand_computed():
    # Retrieved by score: P N P N (the NaN row, a positive, never): precision 1, 1/2, 2/3, 1/2 at
    # recall 1/3, 1/3, 2/3, 2/3 (3 positives). Envelope: 1 at recall 1/3, 2/3 at 2/3, 0 at 1:
    # AP = 1/3 * 1 + 1/3 * 2/3 = 5/9 (non-interpolated AP of the retrieved rows would be different).
    scores = np.array([0.9, 0.8, 0.7, np.nan, 0.6])
    positive = np.array([True, False, True, True, False])
    assert metrics.interpolated_average_precision(scores, positive) == pytest.approx(5 / 9, rel=1e-12)
    # The envelope lifts an early dip: P N P P -> precision 1, 1/2, 2/3, 3/4; AP = 1/3 + 1/3 * 3/4 + 1/3 * 3/4.
    assert metrics.interpolated_average_precision(np.array([4.0, 3, 2, 1]), np.array([1, 0, 1, 1], bool)) \
        == pytest.approx(1 / 3 + 2 * (1 / 3) * (3 / 4), rel=1e-12)
    assert np.isnan(metrics.interpolated_average_precision(np.array([1.0]), np.array([False])))
    assert metrics.interpolated_average_precision(np.array([np.nan, np.nan]), np.array([True, False])) == 0.0


def test_interpolated_average_precision_tied_rows_enter_together():
    # A positive and a negative tied at the top: precision 1/2 at recall 1, whatever the row order.
    for order in ([0, 1], [1, 0]):
        positive = np.array([True, False])[order]
        assert metrics.interpolated_average_precision(np.array([0.5, 0.5]), positive) == 0.5


def test_anet_map_averages_classes_with_positives_only():
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.4], [0.6, 0.7, 0.5]])
    labels = [(0,), (1,), (0, 1)]
    # Class 0: rows 0 (P), 2 (P) on top -> 1. Class 1: rows 1 (P) 0.8, 2 (P) 0.7 -> 1. Class 2 has no
    # positive row and is left out, like the official scorer's classes absent from the ground truth.
    assert metrics.anet_map(scores, labels) == pytest.approx(100.0)
    scores[0, 1] = 0.95  # class 1: N P P -> precision 0, 1/2, 2/3 -> envelope 2/3 at both recall steps
    assert metrics.anet_map(scores, labels) == pytest.approx(100 * (1 + 2 / 3) / 2)


def sports1m_worked_example():
    """Four videos, 7 classes, 2 clips each, multi-label as in Sports-1M. Hand-computed:
    A (1, 2): clips top 2 (hit), top 0 (miss); mean [1, .5, 1.5, 0...] top 2: video hit@1.
    B (4,):   both clips top 5 (miss); mean: class 4 has one wrong class ahead: miss@1, hit@5.
    C (0, 3): clips top 0 (hit), top 1 (miss); mean [2.5, 4.5, 3.5, 2.5, 1.5, .5, 0]: the true 2.5s have
              two wrong classes ahead: miss@1, hit@5.
    D (6,):   clips top 5, top 0 (miss); mean: six wrong classes ahead of class 6: miss@1, miss@5.
    Clip hit@1 = 2/8 = 25%, video hit@1 = 1/4 = 25%, video hit@5 = 3/4 = 75%."""
    views = np.array([
        [[0, 0, 3, 0, 0, 0, 0], [2, 1, 0, 0, 0, 0, 0]],
        [[0, 0, 0, 0, 1, 2, 0], [0, 0, 0, 0, 1, 2, 0]],
        [[5, 4, 3, 2, 1, 0, 0], [0, 5, 4, 3, 2, 1, 0]],
        [[1, 2, 3, 4, 5, 6, 0], [6, 5, 4, 3, 2, 1, 0]],
    ], dtype=np.float64)
    return views, [(1, 2), (4,), (0, 3), (6,)]


def test_sports1m_hit_at_k_worked_example():
    from fusion.report import MethodScores, results_row

    views, labels = sports1m_worked_example()
    video = views.mean(axis=1)
    assert metrics.hits_at_k(video, labels, 1).tolist() == [True, False, False, False]
    assert metrics.hits_at_k(video, labels, 5).tolist() == [True, True, True, False]
    row = results_row(MethodScores("rgb", video, "", view_logits=views), labels, "sports1m split 1", 0)
    assert (row["clip_hit@1"], row["video_hit@1"], row["video_hit@5"]) == (25.0, 25.0, 75.0)


def test_paper_table_beside_ours():
    from fusion.paper import paper_comparison
    from fusion.report import MethodScores, results_table

    views, labels = sports1m_worked_example()
    video = views.mean(axis=1)
    table = results_table([MethodScores("rgb", video, "", view_logits=views), MethodScores("svm_rgb", video, "")],
                          labels, "sports1m split 1", 2)
    text = paper_comparison(table, "sports1m split 1")
    assert text.splitlines()[2:] == [
        "| method | clip hit@1 | video hit@1 | video hit@5 |", "|---|---|---|---|",
        "| P3D ResNet (paper) | 47.9 | 66.4 | 87.4 |", "| ResNet-152 (paper) | 46.5 | 64.6 | 86.4 |",
        "| C3D (paper) | 46.1 | 61.1 | 85.2 |", "| ours: rgb | 25.0 | 25.0 | 75.0 |"]
    assert paper_comparison(table, "ucf101 split 1") == ""
