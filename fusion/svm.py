"""The paper's feature protocol: normalised pool5 features and a linear SVM with C chosen on train."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.svm import LinearSVC

from fusion.errors import FusionError
from fusion.metrics import Labels, hits_at_k, label_matrix, mean_average_precision


def normalise(features: np.ndarray) -> np.ndarray:
    """Signed square root, then L2 normalisation of each row (an all-zero row stays zero)."""
    x = np.asarray(features, dtype=np.float64)
    x = np.sign(x) * np.sqrt(np.abs(x))
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def two_stream(rgb: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Concatenation of the normalised RGB and flow features, scaled back to unit length.

    Each half is normalised on its own so that neither stream dominates by its feature scale.
    """
    return np.concatenate([normalise(rgb), normalise(flow)], axis=-1) / np.sqrt(2.0)


@dataclass
class SvmFit:
    model: LinearSVC | OneVsRestClassifier
    c: float
    cv_score: dict[float, float]  # C -> mean held-out hit@1 (single label) or mAP (multi-label)
    num_classes: int
    multilabel: bool

    def scores(self, x: np.ndarray) -> np.ndarray:
        """float [N, num_classes] decision values; -inf for classes absent from the training videos."""
        decision = self.model.decision_function(x)
        if self.multilabel:
            return np.asarray(decision, dtype=np.float64)
        classes = self.model.classes_
        if decision.ndim == 1:  # two classes: one margin, positive for classes_[1]
            decision = np.stack([-decision, decision], axis=1)
        out = np.full((len(x), self.num_classes), -np.inf)
        out[:, classes] = decision
        return out


def fit_svm(x: np.ndarray, labels: Labels, num_classes: int, cs: Sequence[float], folds: int,
            seed: int = 0) -> SvmFit:
    """Linear SVM on rows `x` (already normalised), C chosen by k-fold cross-validation on these rows.

    Single-label: one-vs-rest LinearSVC, C by held-out hit@1 with stratified folds. Multi-label
    (ActivityNet): one LinearSVC per class, C by held-out mAP. Among equally good C the smallest wins.
    """
    x = np.asarray(x, dtype=np.float64)
    multilabel = any(len(lab) > 1 for lab in labels)
    first = np.array([lab[0] for lab in labels])
    if len(np.unique(first)) < 2:
        raise FusionError(f"the SVM needs training videos of at least 2 classes, got {len(np.unique(first))} "
                          "(are the training videos in the store? set eval.svm = false to skip the SVM)")
    splits = _folds(first, folds, seed, stratify=not multilabel)
    cv_score = {}
    for c in sorted(cs):
        held_out = []
        for train, test in splits:
            fit = _fit(x[train], [labels[i] for i in train], num_classes, c, multilabel)
            held_out.append(_score(fit, x[test], [labels[i] for i in test], multilabel))
        cv_score[float(c)] = float(np.nanmean(held_out))
    best = max(cv_score.values())
    chosen = min(c for c, s in cv_score.items() if s == best)
    final = _fit(x, labels, num_classes, chosen, multilabel)
    final.cv_score = cv_score
    return final


def _folds(first: np.ndarray, folds: int, seed: int, stratify: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    smallest = np.unique(first, return_counts=True)[1].min()
    n_splits = min(folds, len(first))
    # Stratify when every class can appear in every fold; otherwise plain shuffled folds.
    if stratify and smallest >= n_splits:
        splitter = StratifiedKFold(n_splits, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(first)), first))


def _fit(x: np.ndarray, labels: Labels, num_classes: int, c: float, multilabel: bool) -> SvmFit:
    # The primal solver (Newton) needs a few iterations whatever C; the dual one needs thousands at
    # large C on pool5 features, which are all positive and highly correlated (35 s against 0.2 s
    # for C = 100 on 240 random-network features, same solution).
    svc = LinearSVC(C=c, dual=False, max_iter=10000)
    with warnings.catch_warnings():
        # A class present in every (or no) training row of a fold gets a constant one-vs-rest model.
        warnings.simplefilter("ignore", UserWarning)
        if multilabel:
            model = OneVsRestClassifier(svc).fit(x, label_matrix(labels, num_classes))
        elif len({lab[0] for lab in labels}) < 2:
            model = _Constant(labels[0][0])
        else:
            model = svc.fit(x, [lab[0] for lab in labels])
    return SvmFit(model, float(c), {}, num_classes, multilabel)


def _score(fit: SvmFit, x: np.ndarray, labels: Labels, multilabel: bool) -> float:
    scores = fit.scores(x)
    if multilabel:
        return mean_average_precision(scores, labels)
    return float(hits_at_k(scores, labels, 1).mean())


class _Constant:
    """Stands in for LinearSVC on a cross-validation fold whose training rows hold one class only."""

    def __init__(self, label: int):
        self.classes_ = np.array([label])

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return np.zeros((len(x), 1))
