"""The paper's transfer protocols on frozen features: pure functions from feature arrays to results.

One representation, linear SVMs, four protocols (../shared/REFERENCE.md, "Transfer benchmarks";
docs/transfer.md, "Protocols"):

- `three_split` (UCF101, HMDB51, SynthActions): an SVM per split on its train videos, mean accuracy;
- `train_validation` (ActivityNet v1.3): an SVM on `training`, `validation` scored like the
  official scorer (hit@1, hit@3, interpolated mAP);
- `leave_one_out` (YUPENN, Dynamic Scene): N SVMs, accuracy = correct / N;
- `aslan_view2` (ASLAN): 10 folds of same/not-same pairs, 12 (dis)similarities per layer, one SVM.

Inputs are raw features (pool5 averaged over clips); the functions normalise them as the protocol
says. Every C is chosen by cross-validation on the training rows of that fit only, on group-disjoint
folds where groups are known (`fusion.svm.fit_svm`), so nothing of a test video reaches training.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score

from fusion.config import EvalConfig
from fusion.errors import FusionError
from fusion.metrics import Labels, anet_hit_at_k, anet_map, hits_at_k
from fusion.svm import SvmFit, fit_svm, normalise
from fusion.transfer_config import NORMALISATIONS

__all__ = ["ProtocolResult", "NothingToScore", "three_split", "train_validation", "leave_one_out", "aslan_view2",
           "similarities", "check_pairs", "anet_hit_at_k", "anet_map", "KL_EPS", "NORMALISATIONS"]

DEFAULT_CS = tuple(EvalConfig().svm_cs)  # the C values `make eval` tries
# Symmetric KL (measure 10) is infinite where one histogram is 0 and the other is not, which sparse
# ReLU features often are: both histograms get KL_EPS added to every bin and are renormalised first.
KL_EPS = 1e-6
MEASURES = 12
PAIRS_PER_BLOCK = 512


@dataclass
class ProtocolResult:
    accuracy: float  # percent (hit@1 for ActivityNet; mean fold accuracy for ASLAN)
    metrics: dict[str, float]  # the protocol's other metrics: {"se", "auc"} (ASLAN), {"hit@3", "mAP"}
    # (ActivityNet), {"split1", ...} (three-split); percent
    videos: int  # videos scored, missing ones (misses) included (pairs for ASLAN; three-split: distinct test rows)
    selected: str  # what C was chosen on, for the report
    excluded: int = 0  # ASLAN: pairs left out (a clip without features); otherwise the missing videos
    # three_split, aslan_view2: the splits (folds) left unscored and why, e.g. "split 1: no test video
    # with features"; accuracy and the metrics are those of the others
    skipped: list[str] = field(default_factory=list)


class NothingToScore(FusionError):
    """The videos with features leave the protocol nothing it can score (every test video broken, or
    training videos of one class): the caller reports that benchmark without a row, not the run."""


def three_split(x: np.ndarray, labels: Sequence[int], groups: Sequence[str] | None,
                splits: Sequence[tuple[np.ndarray, np.ndarray]], num_classes: int,
                cs: Sequence[float] = DEFAULT_CS, *, folds: int = 5, seed: int = 0,
                missing: Sequence[Collection[str]] = ()) -> ProtocolResult:
    """UCF101 / HMDB51: per split, a linear SVM on its train rows (C by `folds`-fold CV on them,
    group-disjoint when `groups` is given), hit@1 on its test rows; accuracy = mean over splits.

    `x` float [N, D] raw features of every video; `splits` (train row indices, test row indices) per
    split. metrics: {"split1": .., "split2": .., ...}; videos: distinct videos tested in any split, the
    scored splits' `missing` ones included.
    `missing`: per split, the ids of its test videos without features (broken): misses, as ActivityNet's
    scorer counts them (train_validation), so that a split's accuracy is correct / all its test videos;
    counted once in `videos` and `excluded` however many splits test them (HMDB51's lists overlap).
    """
    x = normalise(_rows(x, len(labels), "three_split"))
    rows = [(int(lab),) for lab in labels]
    if not splits:
        raise FusionError("three_split: no splits given")
    per_split, chosen, tested, skipped, absent_ids = {}, [], set(), [], set()
    for k, (train, test) in enumerate(splits, 1):
        train, test = np.asarray(train, dtype=int), np.asarray(test, dtype=int)
        both = np.intersect1d(train, test)
        if len(both):
            raise FusionError(f"three_split: split {k} has video row {both[0]} in both train and test")
        train_groups = None if groups is None else [groups[i] for i in train]
        why = _unscorable(len(test), [rows[i][0] for i in train], train_groups)
        if why:
            skipped.append(f"split {k}: {why}")
            continue
        fit = fit_svm(x[train], [rows[i] for i in train], num_classes, cs, folds, seed, groups=train_groups)
        absent = set(missing[k - 1]) if missing else set()
        absent_ids |= absent
        hits = hits_at_k(fit.scores(x[test]), [rows[i] for i in test], 1)
        per_split[f"split{k}"] = 100.0 * float(hits.sum()) / (len(test) + len(absent))
        chosen.append(f"split{k} C={fit.c:g} ({fit.cv})")
        tested.update(test.tolist())
    if not per_split:
        raise NothingToScore(f"no split can be scored ({'; '.join(skipped)})")
    return ProtocolResult(float(np.mean(list(per_split.values()))), per_split, len(tested) + len(absent_ids),
                          "C by CV on each split's train videos: " + "; ".join(chosen), skipped=skipped,
                          excluded=len(absent_ids))


def train_validation(x_train: np.ndarray, labels_train: Labels, x_test: np.ndarray, labels_test: Labels,
                     num_classes: int, cs: Sequence[float] = DEFAULT_CS, *, folds: int = 5, seed: int = 0,
                     groups_train: Sequence[str] | None = None,
                     labels_missing: Labels = ()) -> ProtocolResult:
    """ActivityNet: a linear SVM on the training videos (one per class when any video has several
    labels, C by CV mAP; else one-vs-rest, C by CV hit@1), the validation videos scored like the
    official scorer: accuracy = hit@1, metrics {"hit@3", "mAP"} (interpolated AP), all percent.

    `labels_missing`: labels of validation videos without features (broken): the official scorer
    counts a video without predictions as a miss and its labels as positives never retrieved, and so
    do we; they are counted in `videos` and `excluded`.
    """
    why = _unscorable(len(labels_test), [lab[0] for lab in labels_train], groups_train,
                      tested="validation video with features")
    if why:
        raise NothingToScore(why)
    x_train = normalise(_rows(x_train, len(labels_train), "train_validation training"))
    x_test = normalise(_rows(x_test, len(labels_test), "train_validation validation"))
    fit = fit_svm(x_train, list(labels_train), num_classes, cs, folds, seed, groups=groups_train)
    scores = np.concatenate([fit.scores(x_test), np.full((len(labels_missing), num_classes), np.nan)])
    labels = [tuple(lab) for lab in labels_test] + [tuple(lab) for lab in labels_missing]
    return ProtocolResult(anet_hit_at_k(scores, labels, 1),
                          {"hit@3": anet_hit_at_k(scores, labels, 3), "mAP": anet_map(scores, labels)},
                          len(labels), f"C={fit.c:g} by {fit.cv} ({_cv_metric(fit)})",
                          excluded=len(labels_missing))


def leave_one_out(x: np.ndarray, labels: Sequence[int], num_classes: int, cs: Sequence[float] = DEFAULT_CS,
                  folds: int = 5, seed: int = 0, *, groups: Sequence[str] | None = None,
                  missing: int = 0) -> ProtocolResult:
    """YUPENN / Dynamic Scene: for each of the N videos a linear SVM on the other N - 1, with C chosen
    by `folds`-fold CV inside those N - 1 only; accuracy = correct / N (hit@1, ties count against).
    `missing` videos without features (broken) are in N as misses (as train_validation counts them).

    N * (len(cs) * folds + 1) fits: 420 videos and 6 C values make 13,020 small fits.
    """
    x = normalise(_rows(x, len(labels), "leave_one_out"))
    rows = [(int(lab),) for lab in labels]
    n = len(rows)
    if n < 3:
        raise NothingToScore(f"leave one out needs at least 3 videos with features, got {n}")
    if len(set(labels)) < 2:
        raise NothingToScore(f"its {n} videos with features hold 1 class; a classifier needs at least 2")
    why = _unscorable(n, list(labels), groups)  # all of one group: C cannot be chosen on group folds
    if why:
        raise NothingToScore(why)
    correct, chosen, cv, one_group = 0, Counter(), "", 0
    for i in range(n):
        train = np.r_[0:i, i + 1:n]
        if len({rows[j] for j in train}) < 2:  # the only video of one of two classes: it cannot be right
            continue
        if groups is not None and len({groups[j] for j in train}) < 2:
            # the only video of one of two groups: C cannot be chosen on group-disjoint folds of the others,
            # and a C chosen otherwise would not be the protocol's; it counts as a miss, and the row says so
            one_group += 1
            continue
        fit = fit_svm(x[train], [rows[j] for j in train], num_classes, cs, folds, seed,
                      groups=None if groups is None else [groups[j] for j in train])
        correct += int(hits_at_k(fit.scores(x[i:i + 1]), [rows[i]], 1)[0])
        chosen[fit.c] += 1
        cv = fit.cv
    spread = ", ".join(f"C={c:g} in {count}" for c, count in sorted(chosen.items()))
    unfit = (f"; {one_group} left-out video(s) whose others are all of one group: not fitted, counted as misses"
             if one_group else "")
    return ProtocolResult(100.0 * correct / (n + missing), {}, n + missing,
                          f"C per fit by {cv or 'no fit'} (the other videos; {sum(chosen.values())} fits: "
                          f"{spread}){unfit}",
                          excluded=missing)


def aslan_view2(layers: Mapping[str, Mapping[int, np.ndarray]], pairs: np.ndarray, normalisation: str = "l2",
                cs: Sequence[float] = DEFAULT_CS, folds: int = 5, seed: int = 0) -> ProtocolResult:
    """ASLAN View-2: for each split, a linear SVM on the pairs of the other splits, tested on its own.

    `layers`: layer name -> clip id -> feature vector (the layers in the dict's order make the pair
    vector: 12 measures each, see `similarities`). `pairs`: int [pairs, 5, splits] as View2.mat's
    `action_splits_pairs` ([600, 5, 10]; columns id 1, id 2, same (1) / not-same (0), action 1,
    action 2). `normalisation`: "l2" (P3D: each pair vector to unit length) or "zscore" (C3D: each
    dimension standardised with the mean and std of the training pairs of the fit: the outer fold's
    for its SVM, each inner CV fold's own for choosing C).

    C is chosen by CV over the training splits with the split as the group, so no CV fold shares an
    action class with its training rows (the View-2 splits share none; checked). A pair with a clip
    missing from any layer is left out and counted in `excluded`. accuracy: mean over folds of the
    test accuracy (decision value > 0 means "same"; exactly 0 is a miss); metrics: "se" = sample
    std over folds / sqrt(folds), "auc" = the mean of the per-fold ROC AUCs (each fold's SVM has its
    own scale; a fold whose test pairs are all of one kind has no AUC and is left out of the mean).
    All percent; videos = pairs scored.
    """
    if normalisation not in NORMALISATIONS:
        raise FusionError(f"aslan normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    if not layers:
        raise FusionError("aslan_view2: no feature layers given")
    pairs = check_pairs(pairs)
    n_splits = pairs.shape[2]
    rows = pairs.transpose(2, 0, 1).reshape(-1, 5)  # split-major: split s holds rows s*P .. (s+1)*P - 1
    split_of = np.repeat(np.arange(n_splits), pairs.shape[0])
    usable = np.array([all(int(a) in layer and int(b) in layer for layer in layers.values())
                       for a, b in rows[:, :2]])
    features = np.zeros((len(rows), MEASURES * len(layers)))
    usable_rows = np.flatnonzero(usable)
    for k, (name, layer) in enumerate(layers.items()):
        # In blocks of pairs: the measures make a dozen temporaries of [pairs, dims] float64.
        for start in range(0, len(usable_rows), PAIRS_PER_BLOCK):
            idx = usable_rows[start:start + PAIRS_PER_BLOCK]
            try:
                x1, x2 = (np.stack([np.asarray(layer[int(i)], dtype=np.float64).ravel() for i in rows[idx, col]])
                          for col in (0, 1))
                if x1.shape != x2.shape:
                    raise ValueError
            except ValueError:
                raise FusionError(f"aslan layer {name!r}: its feature vectors differ in length") from None
            features[idx, MEASURES * k:MEASURES * (k + 1)] = _similarities(x1, x2)
    if normalisation == "l2":
        features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-300)
    same = rows[:, 2].astype(int)
    accuracies, aucs, chosen, cv, skipped, scored_pairs = [], [], Counter(), "", [], 0
    for test_split in range(n_splits):
        train = np.flatnonzero(usable & (split_of != test_split))
        test = np.flatnonzero(usable & (split_of == test_split))
        why = _unscorable(len(test), same[train].tolist(), (split_of[train] + 1).tolist(),
                          tested="pair with features for both clips", rows="pairs", group="View-2 split",
                          name_of=lambda v: "same" if v else "not-same")
        if why:
            skipped.append(f"View-2 split {test_split + 1}: {why}")
            continue
        scored_pairs += len(test)
        fit = fit_svm(features[train], [(v,) for v in same[train]], 2, cs, folds, seed,
                      groups=[str(s) for s in split_of[train]], zscore=normalisation == "zscore")
        decision = _margin(fit, features[test])
        truth = same[test]
        accuracies.append(float(np.mean(np.where(truth == 1, decision > 0, decision < 0))))
        if 0 < truth.sum() < len(truth):
            aucs.append(float(roc_auc_score(truth, decision)))
        chosen[fit.c] += 1
        cv = fit.cv.replace(" videos of ", " pairs of ").replace(" groups", " splits")  # the rows here
    if not accuracies:
        raise NothingToScore(f"no View-2 split can be scored ({'; '.join(skipped)})")
    accuracy = np.array(accuracies)
    scored = len(accuracies)
    metrics = {"se": float(100.0 * accuracy.std(ddof=1) / np.sqrt(scored)) if scored > 1 else float("nan"),
               "auc": float(100.0 * np.mean(aucs)) if aucs else float("nan")}
    spread = ", ".join(f"C={c:g} in {count}" for c, count in sorted(chosen.items()))
    return ProtocolResult(float(100.0 * accuracy.mean()), metrics, scored_pairs,
                          f"C per fold by {cv} ({spread}); "
                          f"{len(layers)} layers x 12 measures, {normalisation} normalised",
                          excluded=int((~usable).sum()), skipped=skipped)


def similarities(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """The 12 (dis)similarities of two feature vectors, float64 [12], in REFERENCE.md's order:

    1 sum(x1 x2); 2 sqrt(sum(x1 x2)); 3 sqrt(sum(sqrt(x1 x2))); 4 sqrt(sum(x1 x2 / (x1 + x2)));
    5 cosine; 6 sqrt(sum((x1 - x2)^2 / (x1 + x2))) (chi-square); 7 sum|x1 - x2| (L1);
    8 sqrt(sum((sqrt(x1) - sqrt(x2))^2)) (Hellinger); and on the histograms p = x1 / sum(x1),
    q = x2 / sum(x2): 9 ||p - q||_2; 10 (KL(p'||q') + KL(q'||p')) / 2 with p', q' = the histograms
    plus KL_EPS in every bin, renormalised; 11 sum(sqrt(max(p, q)) / sqrt(p + q));
    12 sum(min(p, q)) / (sum(p) sum(q)).

    Every 0/0 is 0 (a zero vector has the zero histogram; its cosine is 0). Negative entries, which
    make the square roots, ratios and logarithms undefined, are clipped to 0 first: every layer we
    compare (pool5, res5c, res4's last block: pooled ReLU outputs; prob: a softmax) is >= 0, so
    the clip changes nothing there and only keeps the measures defined on other features.
    """
    x1 = np.asarray(x1, dtype=np.float64).ravel()
    x2 = np.asarray(x2, dtype=np.float64).ravel()
    if x1.shape != x2.shape:
        raise FusionError(f"similarities: vectors of different lengths {x1.size} and {x2.size}")
    return _similarities(x1[None], x2[None])[0]


def _similarities(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """`similarities` of each row pair of x1, x2 (float [P, D] each): float64 [P, 12]."""
    a, b = np.maximum(x1, 0.0), np.maximum(x2, 0.0)
    total = a + b
    dot = (a * b).sum(axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    p, q = _histogram(a), _histogram(b)
    ps, qs = _histogram(p + KL_EPS), _histogram(q + KL_EPS)
    kl = (ps * np.log(ps / qs)).sum(axis=1) + (qs * np.log(qs / ps)).sum(axis=1)
    out = np.stack([
        dot,
        np.sqrt(dot),
        np.sqrt(np.sqrt(a * b).sum(axis=1)),
        np.sqrt(_ratio(a * b, total).sum(axis=1)),
        _ratio(dot, norms),
        np.sqrt(_ratio((a - b) ** 2, total).sum(axis=1)),
        np.abs(a - b).sum(axis=1),
        np.sqrt(((np.sqrt(a) - np.sqrt(b)) ** 2).sum(axis=1)),
        np.linalg.norm(p - q, axis=1),
        kl / 2,
        _ratio(np.sqrt(np.maximum(p, q)), np.sqrt(p + q)).sum(axis=1),
        _ratio(np.minimum(p, q).sum(axis=1), p.sum(axis=1) * q.sum(axis=1)),
    ], axis=1)
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise with 0/0 = 0 (every denominator here is >= 0 and 0 only where num is)."""
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _histogram(x: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to one; an all-zero row stays zero."""
    return _ratio(x, x.sum(axis=1, keepdims=True))


def _margin(fit: SvmFit, x: np.ndarray) -> np.ndarray:
    """The binary SVM's decision value: > 0 for class 1 ("same")."""
    return fit.scores(x)[:, 1]  # fit_svm has seen both classes: the columns are -d, d


def check_pairs(pairs: np.ndarray) -> np.ndarray:
    """View-2's pairs array, checked: shape, same/not-same column, splits sharing no action class."""
    pairs = np.asarray(pairs)
    if pairs.ndim != 3 or pairs.shape[1] != 5 or pairs.shape[2] < 2 or pairs.shape[0] < 1:
        raise FusionError(f"View-2 pairs: expected an array [pairs, 5, splits] like action_splits_pairs "
                          f"[600, 5, 10], got shape {list(pairs.shape)}")
    if not np.issubdtype(pairs.dtype, np.number) or not np.array_equal(pairs, np.round(pairs)):
        raise FusionError("View-2 pairs: expected integer ids, same flags and action labels")
    pairs = pairs.astype(np.int64)
    flags = np.unique(pairs[:, 2, :])
    if not set(flags.tolist()) <= {0, 1}:
        raise FusionError(f"View-2 pairs: column 3 (same/not-same) must be 0 or 1, found {flags.tolist()}")
    seen: dict[int, int] = {}
    for s in range(pairs.shape[2]):
        for action in np.unique(pairs[:, 3:5, s]).tolist():
            if seen.setdefault(action, s) != s:
                raise FusionError(f"View-2 pairs: splits {seen[action] + 1} and {s + 1} share action class "
                                  f"{action}; View-2's splits share none, and the protocol relies on it")
    return pairs


def _unscorable(tests: int, train_labels: Sequence[int], train_groups: Sequence[object] | None, *,
                tested: str = "test video with features", rows: str = "videos", group: str = "group",
                name_of: Callable[[int], str] = lambda c: f"class {c}") -> str:
    """Why one fit cannot be scored ("" when it can): no test row, no training rows or all of one class,
    or, with groups (C is chosen on group-disjoint folds), all of one group. The rows are those with
    features: a protocol never sees broken videos."""
    if not tests:
        return f"no {tested}"
    classes = sorted(set(train_labels))
    if not classes:
        return f"no training {rows} with features"
    if len(classes) < 2:
        return f"its training {rows} with features are all {name_of(classes[0])}; the SVM needs 2 classes"
    if train_groups is not None and len(set(train_groups)) < 2:
        return (f"its training {rows} with features are all of {group} {train_groups[0]}; C is chosen on "
                f"folds that keep a {group} on one side")
    return ""


def _cv_metric(fit: SvmFit) -> str:
    best = fit.cv_score[fit.c] * 100
    return f"CV mAP {best:.1f}" if fit.multilabel else f"CV hit@1 {best:.1f}%"


def _rows(x: np.ndarray, n: int, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) != n:
        raise FusionError(f"{what}: expected features [{n}, D] (one row per label), got shape {list(x.shape)}")
    return x
