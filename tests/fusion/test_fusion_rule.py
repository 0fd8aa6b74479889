"""The fusion rule chosen on held-out videos: raw logits or softmax, and the flow weight (worked examples)."""
import numpy as np
import pytest

from fusion import fuse


def test_raw_logits_keep_a_confident_streams_margin_that_softmax_squashes():
    # One view per video, two classes. RGB is right on video 0 by a huge logit margin, flow wrong by a
    # small one; on video 1 RGB is right by 0.5, flow wrong by 0.2.
    rgb = np.array([[[10.0, 0.0]], [[0.0, 0.5]]])
    flow = np.array([[[0.0, 2.0]], [[0.2, 0.0]]])
    labels = [(0,), (1,)]
    # Raw at 1:1.5: video 0 -> (10, 3) / 2.5, video 1 -> (0.3, 0.5) / 2.5: both right.
    raw = fuse.fuse(fuse.video_scores(rgb, "raw"), fuse.video_scores(flow, "raw"), (1.0, 1.5))
    np.testing.assert_allclose(raw, [[4.0, 1.2], [0.12, 0.2]])
    # Softmax at 1:1.5, video 0: rgb p = (0.99995, 0.00005), flow p = (0.1192, 0.8808):
    # (0.99995 + 1.5 x 0.1192) / 2.5 = 0.4715 against (0.00005 + 1.5 x 0.8808) / 2.5 = 0.5285: wrong.
    # Video 1: rgb (0.3775, 0.6225), flow (0.5498, 0.4502): 0.4809 against 0.5191: right.
    soft = fuse.fuse(fuse.video_scores(rgb, "softmax"), fuse.video_scores(flow, "softmax"), (1.0, 1.5))
    np.testing.assert_allclose(soft, [[0.4715, 0.5285], [0.4809, 0.5191]], atol=1e-4)
    kind, weight, accuracy = fuse.choose_fusion(rgb, flow, labels, [1.5], (1.0, 1.5), "softmax")
    assert (kind, weight) == ("raw", 1.5)  # better than the default kind, so it wins
    assert accuracy == {"softmax": {1.5: 0.5}, "raw": {1.5: 1.0}}


def test_ties_keep_the_default_kind_and_weight():
    rgb = np.array([[[2.0, 0.0]], [[0.0, 2.0]]])
    flow = rgb.copy()  # both streams agree and are right: every rule is right on every video
    kind, weight, accuracy = fuse.choose_fusion(rgb, flow, [(0,), (1,)], [0.0, 1.0, 1.5, 4.0], (1.0, 1.5), "raw")
    assert (kind, weight) == ("raw", 1.5)
    assert all(a == 1.0 for table in accuracy.values() for a in table.values())
    kind, _, _ = fuse.choose_fusion(rgb, flow, [(0,), (1,)], [1.5], (1.0, 1.5), "softmax")
    assert kind == "softmax"


def test_weight_curve_is_the_hit_at_1_of_each_weight():
    rgb = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9]])
    flow = np.array([[0.2, 0.8], [0.3, 0.7], [0.1, 0.9]])
    labels = [(1,), (1,), (1,)]
    # w = 0: RGB alone, right on video 2 only. w = 1: (0.55, 0.45) wrong, (0.6, 0.4) wrong. w = 4:
    # (0.9 + 0.8, 0.1 + 3.2)/5 right; (0.9 + 1.2, 0.1 + 2.8)/5 right.
    curve = fuse.weight_curve(rgb, flow, labels, [0.0, 1.0, 4.0])
    np.testing.assert_allclose(curve, [1 / 3, 1 / 3, 1.0])


def test_fuse_is_a_weighted_mean_and_refuses_zero_weights():
    rgb, flow = np.array([0.2, 0.8]), np.array([0.6, 0.4])
    np.testing.assert_allclose(fuse.fuse(rgb, flow, (1.0, 1.5)), [(0.2 + 0.9) / 2.5, (0.8 + 0.6) / 2.5])
    assert fuse.fuse(rgb, flow, (1.0, 1.5)).sum() == pytest.approx(1.0)  # probabilities stay probabilities
    with pytest.raises(ValueError, match="fusion_weights"):
        fuse.fuse(rgb, flow, (0.0, 0.0))
