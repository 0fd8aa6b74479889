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
    """Weighted sum of the two streams' video scores, weights = (rgb, flow)."""
    w_rgb, w_flow = weights
    return w_rgb * np.asarray(rgb, dtype=np.float64) + w_flow * np.asarray(flow, dtype=np.float64)


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
