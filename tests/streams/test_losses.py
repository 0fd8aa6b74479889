"""The multi-label training target (streams.losses) against hand-computed figures."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from streams.losses import clip_hits, clip_loss, label_array, labels_outside, soft_targets


def test_label_array_single_label_stays_one_dimensional():
    assert label_array([3, (1,), np.int64(2)]).tolist() == [3, 1, 2]
    assert label_array([3, (1,), np.int64(2)]).ndim == 1


def test_label_array_pads_multi_label_rows():
    assert label_array([3, (1, 4), (0, 2, 5)]).tolist() == [[3, -1, -1], [1, 4, -1], [0, 2, 5]]
    with pytest.raises(ValueError, match="without a label"):
        label_array([3, ()])


def test_soft_targets_spread_evenly():
    t = soft_targets(torch.tensor([[0, 2, -1], [1, -1, -1]]), 4)
    assert t.tolist() == [[0.5, 0.0, 0.5, 0.0], [0.0, 1.0, 0.0, 0.0]]


def test_clip_loss_worked_example():
    # Logits [0, ln 2, ln 3]: softmax = [1, 2, 3] / 6. Labels {1, 2}: target [0, 1/2, 1/2], so the loss
    # is -(ln(2/6) + ln(3/6)) / 2 = (ln 3 + ln 2) / 2 = ln(6) / 2.
    logits = torch.tensor([[0.0, math.log(2), math.log(3)]], dtype=torch.float64)
    assert clip_loss(logits, torch.tensor([[1, 2]])).item() == pytest.approx(math.log(6) / 2, rel=1e-12)
    # One label (a [B] tensor, or a row padded with -1) is the usual cross-entropy: -ln(3/6) = ln 2.
    assert clip_loss(logits, torch.tensor([2])).item() == pytest.approx(math.log(2), rel=1e-12)
    assert clip_loss(logits, torch.tensor([[2, -1]])).item() == pytest.approx(math.log(2), rel=1e-12)


def test_clip_loss_single_label_is_cross_entropy_exactly():
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor([0, 6, 3, 3, 1])
    assert torch.equal(clip_loss(logits, labels), F.cross_entropy(logits, labels))
    assert clip_loss(logits, labels, reduction="sum").item() == pytest.approx(
        F.cross_entropy(logits, labels, reduction="sum").item(), rel=1e-12)


def test_clip_hits_any_label():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4], [0.2, 0.3, 0.5]])
    # top classes 1, 0, 2
    assert clip_hits(scores, torch.tensor([[2, 1], [1, 2], [2, -1]])).tolist() == [True, False, True]
    assert clip_hits(scores, torch.tensor([1, 1, 0])).tolist() == [True, False, False]


def test_labels_outside():
    assert labels_outside([1, (0, 5), (2,)], 5) == [5]
    assert labels_outside([-1, 3], 5) == [-1]
