"""train.iterations: the schedule counted in optimiser steps, as the paper states Sports-1M's."""
from __future__ import annotations

import pytest

from streams.config import TrainConfig
from streams.train import lr_schedule


@pytest.mark.parametrize("steps_per_epoch", [100, 6896])  # any number of downloaded videos
def test_paper_sports1m_schedule_in_iterations(steps_per_epoch):
    # lr 0.001 / 10 every 60K iterations, 150K in all
    cfg = TrainConfig(iterations=150_000, lr_steps=[60_000.0, 120_000.0], lr_gamma=0.1)
    factors = [lr_schedule(cfg, steps_per_epoch)(s) for s in (0, 59_999, 60_000, 119_999, 120_000, 149_999)]
    assert factors == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01], rel=1e-12)


def test_cosine_in_iterations_ends_at_the_last_step():
    cfg = TrainConfig(iterations=1000, schedule="cosine", lr_steps=[])
    assert [lr_schedule(cfg, 7)(s) for s in (0, 500, 1000)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)


def test_epochs_unchanged_without_iterations():
    cfg = TrainConfig(lr_steps=[12.0, 24.0])
    assert [lr_schedule(cfg, 10)(s) for s in (119, 120, 240)] == pytest.approx([1.0, 0.1, 0.01], rel=1e-12)


def test_iterations_must_not_be_negative():
    with pytest.raises(ValueError, match="iterations: must be >= 0, got -1"):
        TrainConfig(iterations=-1).validate()


def test_a_warm_up_longer_than_the_run_is_refused_unless_the_run_counts_iterations():
    with pytest.raises(ValueError, match=r"^warmup_epochs: 5.5 is more than epochs = 5 \(the run would end before"):
        TrainConfig(epochs=5, warmup_epochs=5.5).validate()
    TrainConfig(epochs=1, warmup_epochs=1.0).validate()  # a smoke run may warm up throughout
    TrainConfig(epochs=1, warmup_epochs=2.0, iterations=1000).validate()  # epochs do not bound an iterations run
