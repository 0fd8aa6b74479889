"""The paper's feature protocol: normalised pool5 features and a linear SVM with C chosen on train."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold
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
    cv: str = ""  # how C was chosen, for reports: "5-fold group CV on 240 videos of 40 groups"
    # z-scoring fitted on the training rows (fit_svm(zscore=True)), applied by `scores`; None = none.
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    # With fewer training rows than dimensions the SVM is fitted in coordinates of the rows' span
    # (x @ basis, float [D, N]); `scores` maps new rows the same way.
    basis: np.ndarray | None = None

    def scores(self, x: np.ndarray) -> np.ndarray:
        """float [N, num_classes] decision values; -inf for classes absent from the training videos."""
        x = np.asarray(x, dtype=np.float64)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        if self.basis is not None:
            x = x @ self.basis
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
            seed: int = 0, *, groups: Sequence[str] | None = None, zscore: bool = False) -> SvmFit:
    """Linear SVM on rows `x` (already normalised), C chosen by k-fold cross-validation on these rows.

    Single-label: one-vs-rest LinearSVC, C by held-out hit@1 with stratified folds. Multi-label
    (ActivityNet): one LinearSVC per class, C by held-out mAP. Among equally good C the smallest wins.

    `groups` (one per row, e.g. UCF101's "g08"): the folds are group-disjoint, so that no group has
    rows on both sides of a fold; clips of one group share actor and scene, and plain folds would
    let the SVM recognise the group instead of the action (a CV score far above the test score).
    `zscore`: standardise each dimension with the mean and std of the training rows of each fit
    (each CV fold's own, then all rows for the final model, which `SvmFit.scores` applies); a
    dimension constant on those rows is only centred.
    """
    x = np.asarray(x, dtype=np.float64)
    multilabel = any(len(lab) > 1 for lab in labels)
    first = np.array([lab[0] for lab in labels])
    if len(np.unique(first)) < 2:
        raise FusionError(f"the SVM needs training videos of at least 2 classes, got {len(np.unique(first))} "
                          "(are the training videos in the store? set eval.svm = false to skip the SVM)")
    if groups is not None and len(groups) != len(first):
        raise FusionError(f"fit_svm: {len(groups)} groups for {len(first)} training rows")
    splits, cv = _folds(first, folds, seed, stratify=not multilabel, groups=groups)
    basis = None
    if not zscore and len(x) < x.shape[1]:
        # The weights of an L2-regularised linear SVM lie in the span of its training rows, and every
        # fold's rows are some of these: in an orthonormal basis of their span (N coordinates instead
        # of D) each fit has the same optimum and the same decision values, 10-25 times faster for
        # pool5 (D = 2048) on small sets and leave-one-out. The bias is regularised either way.
        basis = _row_space(x)
        x = x @ basis
    cv_score = {}
    for c in sorted(cs):
        held_out = []
        for train, test in splits:
            fit = _fit(x[train], [labels[i] for i in train], num_classes, c, multilabel, zscore)
            held_out.append(_score(fit, x[test], [labels[i] for i in test], multilabel))
        cv_score[float(c)] = float(np.nanmean(held_out))
    best = max(cv_score.values())
    chosen = min(c for c, s in cv_score.items() if s == best)
    final = _fit(x, labels, num_classes, chosen, multilabel, zscore)
    final.cv_score = cv_score
    final.cv = cv
    final.basis = basis
    return final


def _row_space(x: np.ndarray) -> np.ndarray:
    """float [D, r]: an orthonormal basis of the span of the rows of x [N, D], N < D.

    From the eigenvectors of the N x N Gram matrix (X X^T = U L U^T, basis = X^T U L^-1/2): much
    cheaper than an SVD of X, which on a busy machine with threaded BLAS took seconds for 129 x 2048.
    Directions with eigenvalues below 1e-10 of the largest (variance ~1e-5 of the largest in size)
    are dropped.
    """
    eigenvalues, vectors = np.linalg.eigh(x @ x.T)
    keep = eigenvalues > 1e-10 * max(eigenvalues.max(), 1e-300)
    return x.T @ (vectors[:, keep] / np.sqrt(eigenvalues[keep]))


def fold_groups(groups: Sequence[str | None], ids: Sequence[str]) -> list[str] | None:
    """The groups the CV folds keep together, one per row: None when no row has one (stratified folds,
    e.g. Kinetics); else each row's group, and a row without one (an HMDB51 file renamed out of the
    dataset's naming) is a group of its own, so that one such row no longer dropped the groups of all."""
    if not any(groups):
        return None
    return [g if g else video_id for g, video_id in zip(groups, ids, strict=True)]


def _folds(first: np.ndarray, folds: int, seed: int, stratify: bool,
           groups: Sequence[str] | None = None) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """The CV folds (train rows, held-out rows) and a phrase saying what they are."""
    classes, counts = np.unique(first, return_counts=True)
    if groups is None:
        n_splits = min(folds, len(first))
        # Stratify when every class can appear in every fold; otherwise plain shuffled folds.
        if stratify and counts.min() >= n_splits:
            splitter, kind = StratifiedKFold(n_splits, shuffle=True, random_state=seed), "stratified"
        else:
            splitter, kind = KFold(n_splits, shuffle=True, random_state=seed), "shuffled"
        return (list(splitter.split(np.zeros(len(first)), first)),
                f"{n_splits}-fold {kind} CV on {len(first)} videos")
    groups = np.asarray([str(g) for g in groups])
    names = np.unique(groups)
    if len(names) < 2:
        raise FusionError(f"group-aware cross-validation needs training videos of at least 2 groups, got "
                          f"only {str(names[0])!r}: C cannot be chosen on held-out groups")
    n_splits = min(folds, len(names))
    groups_per_class = min(len(np.unique(groups[first == c])) for c in classes)
    # Stratify when every class has a group for every fold; otherwise group folds of balanced size.
    if stratify and groups_per_class >= n_splits:
        splitter, kind = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed), "stratified group"
    else:
        splitter, kind = GroupKFold(n_splits, shuffle=True, random_state=seed), "group"
    return (list(splitter.split(np.zeros(len(first)), first, groups)),
            f"{n_splits}-fold {kind} CV on {len(first)} videos of {len(names)} groups")


def _fit(x: np.ndarray, labels: Labels, num_classes: int, c: float, multilabel: bool,
         zscore: bool = False) -> SvmFit:
    mean = std = None
    if zscore:
        mean, std = x.mean(axis=0), x.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        x = (x - mean) / std
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
    return SvmFit(model, float(c), {}, num_classes, multilabel, mean=mean, std=std)


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
