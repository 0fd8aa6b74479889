"""The optimizer of a stream: Caffe-style parameter groups, SGD with momentum, and the learning-rate
schedule (linear warm-up, then step or cosine decay), as a multiplier of each group's base rate."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from streams.config import TrainConfig
from streams.p3d import P3D


def lr_factor(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rates for 0-based `step`: warm-up, then step or cosine decay."""
    epoch = step / steps_per_epoch
    if cfg.schedule == "step":
        position = step if cfg.iterations else epoch  # lr_steps count steps under train.iterations
        factor = cfg.lr_gamma ** sum(position >= m for m in cfg.lr_steps)
    else:
        done = step / cfg.iterations if cfg.iterations else epoch / cfg.epochs
        factor = 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        factor *= (step + 1) / warmup_steps
    return factor


def param_groups(model: P3D, cfg: TrainConfig, modality: str) -> list[dict[str, Any]]:
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
    settings = {"weights": (1.0, cfg.weight_decay), "bn": (1.0, 0.0), "fc.weight": (cfg.fc_lr_mult, cfg.weight_decay),
                "fc.bias": (2.0 * cfg.fc_lr_mult, 0.0), "conv1": (cfg.flow_conv1_lr_mult, cfg.weight_decay)}
    return [{"params": params, "lr": cfg.lr * settings[name][0], "weight_decay": settings[name][1], "name": name}
            for name, params in groups.items() if params]


def make_optimizer(model: P3D, cfg: TrainConfig, modality: str,
                   steps_per_epoch: int) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD over `param_groups` and the per-step schedule `lr_factor`."""
    optimizer = torch.optim.SGD(param_groups(model, cfg, modality), lr=cfg.lr, momentum=cfg.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch, cfg))
    return optimizer, scheduler
