"""The optimizer's pieces for a stream: Caffe-style parameter groups for SGD, and the learning-rate
schedule (linear warm-up, then step or cosine decay) as a multiplier of each group's base rate.
Plain values in, so that each function says what it uses; streams.train reads them from [train]."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from streams.p3d import P3D


def lr_factor(step: int, *, steps_per_unit: int, length: float, schedule: str = "step",
              milestones: Sequence[float] = (), gamma: float = 0.1, warmup_steps: int = 0) -> float:
    """Multiplier of the base learning rates for 0-based `step`. The schedule counts in units of
    `steps_per_unit` steps (an epoch's steps, or 1 under train.iterations): `length` units in all,
    x `gamma` at each of `milestones` ("step"), or a cosine from 1 to 0 over `length` ("cosine");
    a linear warm-up over the first `warmup_steps` steps."""
    position = step / steps_per_unit
    if schedule == "step":
        factor = gamma ** sum(position >= m for m in milestones)
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * min(position / length, 1.0)))
    if step < warmup_steps:
        factor *= (step + 1) / warmup_steps
    return factor


def param_groups(model: P3D, modality: str, *, lr: float, weight_decay: float, fc_lr_mult: float = 10.0,
                 flow_conv1_lr_mult: float = 5.0) -> list[dict[str, Any]]:
    """Caffe-style multipliers: fc weights x fc_lr_mult, fc bias x 2 fc_lr_mult, flow conv1 x
    flow_conv1_lr_mult; weight decay on conv and fc weights only. Frozen parameters are left out."""
    groups: dict[str, list[nn.Parameter]] = {"weights": [], "bn": [], "fc.weight": [], "fc.bias": [], "conv1": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in ("fc.weight", "fc.bias"):
            groups[name].append(p)
        elif name == "conv1.weight" and modality == "flow":
            groups["conv1"].append(p)
        else:
            groups["weights" if p.dim() > 1 else "bn"].append(p)
    settings = {"weights": (1.0, weight_decay), "bn": (1.0, 0.0), "fc.weight": (fc_lr_mult, weight_decay),
                "fc.bias": (2.0 * fc_lr_mult, 0.0), "conv1": (flow_conv1_lr_mult, weight_decay)}
    return [{"params": params, "lr": lr * settings[name][0], "weight_decay": settings[name][1], "name": name}
            for name, params in groups.items() if params]
