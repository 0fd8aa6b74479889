"""Accuracy metrics on class-score matrices: hit@k, mean class accuracy, mean average precision.

Every function takes `scores` as float [N, C] (higher = more likely) and `labels` as one tuple of
class indices per row: one label for UCF101/HMDB51/Kinetics/SynthActions, several for ActivityNet.

Tie rule (hit@k): ties count against the prediction. A row is a hit at k when, for one of its true
classes y, fewer than k *wrong* classes score at least as high as y. So a tie between the true class
and a wrong class at the top is a miss at k=1, whatever the class indices; a constant score vector is
a hit only when k exceeds the number of wrong classes. The rule is deterministic, does not depend on
class order and never flatters a degenerate model (one that outputs the same score for everything).
`predictions` (used for confusion matrices) breaks ties by the lowest class index instead, so under an
exact tie the confusion matrix can show a correct prediction that hit@1 counts as a miss.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Labels = Sequence[tuple[int, ...]]


def label_matrix(labels: Labels, num_classes: int) -> np.ndarray:
    """bool [N, C]: True where the class is one of the row's labels."""
    out = np.zeros((len(labels), num_classes), dtype=bool)
    for row, classes in enumerate(labels):
        if not classes:
            raise ValueError(f"row {row} has no label")
        out[row, list(classes)] = True
    return out


def wrong_ahead(scores: np.ndarray, labels: Labels) -> np.ndarray:
    """int [N]: for each row, the fewest wrong classes scoring >= one of its true classes."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = label_matrix(labels, scores.shape[1])
    # The count #{wrong c : s_c >= s_y} is smallest for the highest-scoring true class y.
    top_true = np.where(truth, scores, -np.inf).max(axis=1, keepdims=True)
    ahead = np.where(truth, False, scores >= top_true).sum(axis=1)
    # A row with a NaN score (a diverged model) is a miss at every k, not a silent hit.
    return np.where(np.isnan(scores).any(axis=1), scores.shape[1], ahead)


def hits_at_k(scores: np.ndarray, labels: Labels, k: int) -> np.ndarray:
    """bool [N]: row is a hit at k under the tie rule above."""
    return wrong_ahead(scores, labels) < k


def hit_at_k(scores: np.ndarray, labels: Labels, k: int) -> float:
    """Fraction of rows that are hits at k."""
    return float(hits_at_k(scores, labels, k).mean())


def predictions(scores: np.ndarray) -> np.ndarray:
    """int [N]: the top class of each row, ties to the lowest class index."""
    return np.asarray(scores).argmax(axis=1)


def per_class_accuracy(hits: np.ndarray, labels: Labels, num_classes: int) -> np.ndarray:
    """float [C]: hit rate over the rows labelled with each class; NaN for a class with no rows."""
    truth = label_matrix(labels, num_classes)
    counts = truth.sum(axis=0)
    correct = (truth & np.asarray(hits, dtype=bool)[:, None]).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, correct / np.maximum(counts, 1), np.nan)


def mean_class_accuracy(scores: np.ndarray, labels: Labels) -> float:
    """Mean over the classes that have rows of their hit@1 rate (a class without rows is left out)."""
    per_class = per_class_accuracy(hits_at_k(scores, labels, 1), labels, np.shape(scores)[1])
    return float(np.nanmean(per_class))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Non-interpolated AP of one class, as scikit-learn's `average_precision_score`.

    AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds, highest first; rows with equal
    scores enter together. NaN when the class has no positive row.
    """
    scores = np.asarray(scores, dtype=np.float64)
    scores = np.where(np.isnan(scores), -np.inf, scores)  # a NaN score ranks last
    positive = np.asarray(positive, dtype=bool)
    total = positive.sum()
    if total == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], positive[order]
    tp = np.cumsum(p)
    fp = np.cumsum(~p)
    last_of_threshold = np.r_[s[1:] != s[:-1], True]  # keep the last row of each tied run
    tp, fp = tp[last_of_threshold], fp[last_of_threshold]
    precision = tp / (tp + fp)
    recall_step = np.diff(np.r_[0, tp]) / total
    return float((recall_step * precision).sum())


def mean_average_precision(scores: np.ndarray, labels: Labels) -> float:
    """Mean over classes with at least one positive row of `average_precision` (video-level mAP)."""
    truth = label_matrix(labels, np.shape(scores)[1])
    aps = [average_precision(scores[:, c], truth[:, c]) for c in range(truth.shape[1]) if truth[:, c].any()]
    return float(np.mean(aps))


def confusion_matrix(scores: np.ndarray, labels: Labels, num_classes: int) -> np.ndarray:
    """int [C, C]: rows = first true label, columns = predicted class."""
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(out, ([lab[0] for lab in labels], predictions(scores)), 1)
    return out
