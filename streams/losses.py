"""The training target and loss of a clip whose video has one label or several (Sports-1M, ActivityNet).

A multi-label video trains with the softmax cross-entropy against a target spread evenly over its k
labels (1/k each), the practice of Mahajan et al., "Exploring the Limits of Weakly Supervised
Pretraining" (ECCV 2018), for multi-tag data trained with a softmax, which they found better than
per-class sigmoids, and used again for videos by Ghadiyaram et al. (IG-65M, CVPR 2019). It keeps the
softmax classifier of the P3D and C3D nets, and for k = 1 it is the usual cross-entropy to the bit.
See docs/datasets.md (Sports-1M) for the alternatives and why this one.

Labels travel through the DataLoader as an int64 tensor: [B] when every video of the dataset has one
label (all single-label data sets, unchanged), else [B, L], each row the video's labels padded with -1.
A clip counts as correct when its top class is one of its video's labels (the hit@1 of Karpathy et
al., CVPR 2014, that P3D and C3D report on Sports-1M).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

Label = int | Sequence[int]


def label_array(labels: Sequence[Label]) -> np.ndarray:
    """int64 [N] when every entry is one label (an int, or a sequence of one), else [N, L] padded with -1."""
    rows = [(int(x),) if isinstance(x, (int, np.integer)) else tuple(int(v) for v in x) for x in labels]
    if any(not row for row in rows):
        raise ValueError("a video without a label")
    width = max((len(row) for row in rows), default=1)
    if width == 1:
        return np.array([row[0] for row in rows], dtype=np.int64)
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def soft_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float [B, C]: 1/k on each of a row's k labels ([B, L] padded with -1)."""
    valid = labels >= 0
    target = torch.zeros(labels.shape[0], num_classes, dtype=torch.float32, device=labels.device)
    target.scatter_add_(1, labels.clamp(min=0), valid.float())
    return target / target.sum(1, keepdim=True)


def clip_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Softmax cross-entropy: to the label ([B]) or to the labels' even spread ([B, L])."""
    if labels.dim() == 1:
        return F.cross_entropy(logits, labels, reduction=reduction)
    return F.cross_entropy(logits, soft_targets(labels, logits.shape[1]), reduction=reduction)


def clip_hits(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """bool [B]: the top class (ties to the lowest index, as argmax) is one of the row's labels."""
    top = scores.argmax(1)
    if labels.dim() == 1:
        return top == labels
    return (labels == top[:, None]).any(1)


def labels_outside(labels: Sequence[Label], num_classes: int) -> list[int]:
    """The labels of `labels` (ints or sequences) that are not class indices."""
    flat = [x for row in labels for x in ((row,) if isinstance(row, (int, np.integer)) else row)]
    return [int(x) for x in flat if not 0 <= x < num_classes]
