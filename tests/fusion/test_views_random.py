"""The paper's Sports-1M testing views: random clips per video, seeded (fusion.views, mode "random")."""
from __future__ import annotations

import pytest

from fusion.config import EvalConfig
from fusion.outputs import eval_plans
from fusion.views import ViewPlan, score_plan


def test_random_clips_are_seeded_by_seed_and_video():
    plan = score_plan(20, "center", "random", seed=0)
    first = plan.starts(1000, 16, "UDqivjS-lpI")
    assert first == plan.starts(1000, 16, "UDqivjS-lpI")  # a re-run scores the same clips
    assert len(first) == 20 and first == sorted(first)
    assert all(0 <= s <= 1000 - 16 for s in first)
    assert first != plan.starts(1000, 16, "a_b-c_d-e_f")  # another video, other clips
    assert first != score_plan(20, "center", "random", seed=1).starts(1000, 16, "UDqivjS-lpI")
    assert first != ViewPlan().starts(1000, 16) and len(set(first)) > 10  # not the evenly spaced ones


def test_random_clips_reach_both_ends_and_loop_a_short_video():
    starts = score_plan(20, "center", "random").starts(30, 16, "v")
    assert set(starts) <= set(range(15))
    many = [s for k in range(50) for s in score_plan(20, "center", "random", k).starts(30, 16, "v")]
    assert min(many) == 0 and max(many) == 14  # every full window can be drawn, the last included
    assert score_plan(20, "center", "random").starts(10, 16, "v") == [0] * 20  # shorter than a clip


def test_random_views_are_one_centre_crop_each():
    views = score_plan(20, "center", "random").views(500, 16, "v")
    assert len(views) == 20 and {(v.crop, v.flip) for v in views} == {("center", False)}


def test_seed_is_in_the_cache_key_of_random_plans_only():
    assert "seed" not in score_plan(10, "center").key()
    assert score_plan(20, "center", "random", 3).key()["seed"] == 3
    assert score_plan(20, "center", "random", 3).key() != score_plan(20, "center", "random", 4).key()


def test_eval_config_clip_sampling():
    assert eval_plans(EvalConfig(clips=20, clip_sampling="random", seed=5))["scores"] == ViewPlan(
        "random", 20, "center", False, seed=5)
    assert eval_plans(EvalConfig())["scores"].mode == "uniform"
    with pytest.raises(ValueError, match="clip_sampling: must be 'uniform' or 'random', got 'randm'"):
        EvalConfig(clip_sampling="randm").validate()
