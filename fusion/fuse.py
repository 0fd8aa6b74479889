"""Video scores from per-clip logits, and late fusion of the RGB and flow streams."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fusion.metrics import Labels, hits_at_k


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def video_scores(view_logits: np.ndarray, kind: str) -> np.ndarray:
    """[..., V, C] logits of a video's views -> [..., C]: mean softmax ("softmax") or mean logit ("raw")."""
    if kind == "softmax":
        return softmax(view_logits).mean(axis=-2)
    if kind == "raw":
        return np.asarray(view_logits, dtype=np.float64).mean(axis=-2)
    raise ValueError(f"fusion_scores: must be 'softmax' or 'raw', got {kind!r}")


def fuse(rgb: np.ndarray, flow: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """The fused video scores of `eval` and `predict` alike: the weighted mean of the two streams'
    video scores, weights = (rgb, flow). A mean rather than a sum, so fused softmax scores are again
    probabilities; the ranking is that of TSN's weighted sum (the factor is the same for every class)."""
    w_rgb, w_flow = weights
    total = w_rgb + w_flow
    if not total > 0:
        raise ValueError(f"fusion_weights: need rgb + flow > 0, got {list(weights)}")
    return (w_rgb * np.asarray(rgb, dtype=np.float64) + w_flow * np.asarray(flow, dtype=np.float64)) / total


def probabilities(scores: np.ndarray, kind: str) -> np.ndarray:
    """Video scores of `kind` as class probabilities: softmax scores already are; raw logits go
    through a softmax (what `predict` shows)."""
    return np.asarray(scores, dtype=np.float64) if kind == "softmax" else softmax(scores)


def weight_curve(rgb: np.ndarray, flow: np.ndarray, labels: Labels, weights: Sequence[float]) -> np.ndarray:
    """Video hit@1 of the fused scores at each flow weight (RGB weight 1): the accuracy-against-weight
    curve of the report, from scores already computed."""
    return np.array([hits_at_k(fuse(rgb, flow, (1.0, float(w))), labels, 1).mean() for w in weights])


def choose_flow_weight(rgb: np.ndarray, flow: np.ndarray, labels: Labels, grid: Sequence[float],
                       default: Sequence[float]) -> tuple[float, dict[float, float]]:
    """The flow weight (RGB weight 1) of `grid` with the best video hit@1 on the given (training) videos.

    Nothing is fitted per weight, so k-fold cross-validation would average the same per-video hits:
    selecting on all training videos is the same choice. Ties go to the weight whose ratio is closest
    to the default RGB:flow ratio, so networks that fit their training videos perfectly keep the
    default. Returns the weight and the hit@1 of every candidate.
    """
    accuracy = {float(w): float(hits_at_k(fuse(rgb, flow, (1.0, w)), labels, 1).mean()) for w in grid}
    default_ratio = default[1] / default[0] if default[0] > 0 else np.inf

    def distance(w: float) -> float:  # in log ratio, so 0.75 and 3.0 are equally far from 1.5
        if np.isinf(default_ratio):
            return -w
        return abs(np.log((w + 1e-6) / (default_ratio + 1e-6)))

    best = max(accuracy.values())
    chosen = min((w for w, acc in accuracy.items() if acc == best), key=distance)
    return chosen, accuracy


def choose_fusion(rgb_views: np.ndarray, flow_views: np.ndarray, labels: Labels, grid: Sequence[float],
                  default: Sequence[float], default_kind: str) -> tuple[str, float, dict[str, dict[float, float]]]:
    """The fusion rule with the best video hit@1 on the given (held-out) videos: score kind ("raw"
    or "softmax", from the per-view logits [N, V, C]) and flow weight of `grid` (RGB weight 1).
    Ties keep the default kind, then the weight closest to the default ratio (choose_flow_weight).
    Returns (kind, flow weight, {kind: {weight: hit@1}})."""
    kinds = [default_kind] + [k for k in ("raw", "softmax") if k != default_kind]
    chosen: dict[str, tuple[float, float]] = {}
    accuracy: dict[str, dict[float, float]] = {}
    for kind in kinds:
        weight, accuracy[kind] = choose_flow_weight(video_scores(rgb_views, kind), video_scores(flow_views, kind),
                                                    labels, grid, default)
        chosen[kind] = (weight, accuracy[kind][weight])
    best = max(acc for _, acc in chosen.values())
    kind = next(k for k in kinds if chosen[k][1] == best)
    return kind, chosen[kind][0], accuracy
