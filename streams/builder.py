"""The one path that builds a stream's net for training: the architecture with its classifier, then the
weights it starts from (random, a 2-D ImageNet ResNet inflated by streams.inflate, or a P3D checkpoint
or run folder by streams.finetune), partial BN, synchronised BN under DDP, the device and its memory
format."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from streams import distributed, transforms
from streams.checkpoint import file_sha256, stream_path
from streams.config import ModelConfig
from streams.finetune import init_from_checkpoint
from streams.inflate import load_pretrained
from streams.p3d import P3D, build_model


def build_stream(model_cfg: ModelConfig, modality: str, classes: list[str], ctx: distributed.DistContext, *,
                 seed: int, fresh: bool, sync_bn: bool, channels_last: bool) -> P3D:
    """The stream's net on `ctx.device`, the same initial weights in every process: random (from
    `seed`), or when `fresh` (not about to be resumed) from `model.pretrained` or `model.init_from`."""
    torch.manual_seed(seed)
    model = build_model(model_cfg.arch, len(classes), transforms.CHANNELS[modality], model_cfg.dropout(modality))
    if model_cfg.pretrained and fresh:
        load_pretrained(model, model_cfg.pretrained, model_cfg.pretrained_input)
    if model_cfg.init_from and fresh:
        started_from = init_from_checkpoint(model, model_cfg.arch, model_cfg.init_from, modality, classes)
        if ctx.is_main:
            print(started_from)
    model.set_partial_bn(model_cfg.partial_bn)
    if ctx.distributed and sync_bn:
        distributed.sync_batchnorm(model, ctx.device)
    model.to(ctx.device)
    if channels_last:
        to_channels_last(model)
    return model


def started_from(model_cfg: ModelConfig) -> dict[str, str]:
    """What a fresh stream's weights start from, for its checkpoints: {"init_from" or "pretrained": the
    file, "sha256": its SHA-256}; {} for random weights. The path alone does not say which weights a
    fine-tuned model came from once the file is replaced (a re-trained run's last.pt, new weights)."""
    for key in ("init_from", "pretrained"):
        value = getattr(model_cfg, key)
        if value:
            path = stream_path(value) if key == "init_from" else Path(value)
            return {key: str(path.resolve()), "sha256": file_sha256(path)}
    return {}


def to_channels_last(model: nn.Module) -> nn.Module:
    """channels_last_3d for the 3-D convs, channels_last for res5's 2-D convs."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            m.to(memory_format=torch.channels_last_3d)
        elif isinstance(m, nn.Conv2d):
            m.to(memory_format=torch.channels_last)
    return model
