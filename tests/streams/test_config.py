"""[model] and [train] settings: defaults are the paper's, bad values name the field."""
from __future__ import annotations

import pytest

from streams.config import ARCH_NAMES, ModelConfig, TrainConfig
from streams.p3d import ARCHS


def test_defaults_are_valid_and_the_papers():
    ModelConfig().validate()
    TrainConfig().validate()
    assert (ModelConfig().dropout("rgb"), ModelConfig().dropout("flow")) == (0.5, 0.7)
    cfg = TrainConfig()
    assert (cfg.clip_len, cfg.resize, cfg.crop, cfg.fc_lr_mult) == (16, [182, 242], 160, 10.0)
    assert set(ARCH_NAMES) == set(ARCHS)


@pytest.mark.parametrize("section, values, field", [
    (ModelConfig, {"arch": "p3d50"}, "arch"),
    (ModelConfig, {"dropout_flow": 1.0}, "dropout_flow"),
    (ModelConfig, {"pretrained_input": "rgb"}, "pretrained_input"),
    (TrainConfig, {"crop": 200}, "crop"),
    (TrainConfig, {"scale_jitter": [150]}, "scale_jitter"),
    (TrainConfig, {"scale_jitter": [140, 200]}, "scale_jitter"),
    (TrainConfig, {"schedule": "poly"}, "schedule"),
    (TrainConfig, {"lr_steps": [20.0, 10.0]}, "lr_steps"),
    (TrainConfig, {"amp": "fp8"}, "amp"),
    (TrainConfig, {"batch_size": 0}, "batch_size"),
    (TrainConfig, {"device": "tpu"}, "device"),
    (TrainConfig, {"resize": [182]}, "resize"),
])
def test_bad_values_name_the_field(section, values, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        section(**values).validate()
