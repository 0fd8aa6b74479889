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


# ActivityNet's official classifier scorer (activitynet/ActivityNet, Evaluation/eval_classification.py),
# offline: no "blocked videos" list. Its input is a list of (label, score) predictions per video; here a
# score matrix stands for it, where a NaN or -inf entry is a class the video has no prediction for (a
# single-label SVM gives -inf to classes without training videos) and a row of them is a video with no
# prediction at all (broken: a miss at every k, its labels still counted as positives). Exact ties,
# which the official scorer orders by numpy's argsort, count against the prediction here (the rule
# above for hit@k; in AP tied rows enter the ranking together), so the figures do not depend on row
# or class order.


def anet_hit_at_k(scores: np.ndarray, labels: Labels, k: int) -> float:
    """Percent of videos with any of their labels among their top k predicted classes."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = label_matrix(labels, scores.shape[1])
    predicted = np.isfinite(scores) | (scores == np.inf)
    s = np.where(predicted, scores, -np.inf)
    top_true = np.where(truth & predicted, s, -np.inf).max(axis=1, keepdims=True)
    ahead = (predicted & ~truth & (s >= top_true)).sum(axis=1)
    hits = (top_true[:, 0] > -np.inf) & (ahead < k)
    return float(100.0 * hits.mean())


def interpolated_average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """VOC-2011 interpolated AP of one class: the precision envelope made monotone (each precision
    replaced by the best at any higher recall), summed over the recall steps.

    `scores` float [N]: NaN or -inf = no prediction for that row (it is never retrieved but, when
    positive, still counts in the recall's denominator). Tied rows enter the ranking together.
    NaN when the class has no positive row.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    total = positive.sum()
    if total == 0:
        return float("nan")
    retrieved = np.isfinite(scores) | (scores == np.inf)
    s, p = scores[retrieved], positive[retrieved]
    order = np.argsort(-s, kind="stable")
    s, p = s[order], p[order]
    tp = np.cumsum(p)
    fp = np.cumsum(~p)
    last_of_threshold = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, dtype=bool)
    tp, fp = tp[last_of_threshold], fp[last_of_threshold]
    precision = np.r_[0.0, tp / np.maximum(tp + fp, 1), 0.0]
    recall = np.r_[0.0, tp / total, 1.0]
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    step = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(((recall[step] - recall[step - 1]) * precision[step]).sum())


def anet_map(scores: np.ndarray, labels: Labels) -> float:
    """Percent: mean over the classes with at least one labelled row of `interpolated_average_precision`."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = label_matrix(labels, scores.shape[1])
    aps = [interpolated_average_precision(scores[:, c], truth[:, c])
           for c in range(truth.shape[1]) if truth[:, c].any()]
    return float(100.0 * np.mean(aps))
