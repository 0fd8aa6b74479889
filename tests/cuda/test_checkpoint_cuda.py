"""Checkpoints across devices: a run started on CUDA (bf16 AMP, channels_last_3d, pinned memory,
the train.* defaults) resumes on the CPU, and a CPU checkpoint resumes on CUDA; the model of a
CUDA checkpoint gives the same logits on either device."""
from __future__ import annotations

import json

import pytest
import torch

from streams.checkpoint import load_checkpoint, step_path
from streams.config import ModelConfig, TrainConfig
from streams.train import train_stream
from tests.builders import stream_data

pytestmark = pytest.mark.cuda
CLASSES = ["down", "up"]


def configs(device: str, max_steps: int) -> tuple[ModelConfig, TrainConfig]:
    model = ModelConfig(arch="p3d_tiny", partial_bn=False, dropout_rgb=0.0, dropout_flow=0.0)
    train = TrainConfig(clip_len=8, resize=[32, 32], crop=28, batch_size=4, epochs=2, lr=0.01, lr_steps=[],
                        fc_lr_mult=1.0, workers=1, log_every=1, checkpoint_every=1, keep_checkpoints=10, progress=False,
                        device=device, max_steps=max_steps)
    return model, train


def test_cuda_checkpoint_resumes_on_cpu_and_back(toy_store, tmp_path, cuda):
    root, train, val = toy_store
    out = tmp_path / "run"
    first = train_stream(stream_data(root, train, val, CLASSES), "rgb", *configs("cuda", 2), out)
    assert (first.step, first.finished) == (2, False)

    second = train_stream(stream_data(root, train, val, CLASSES), "rgb", *configs("cpu", 3), out)
    assert second.resumed_from == step_path(out, 2) and second.step == 3 and not second.finished

    third = train_stream(stream_data(root, train, val, CLASSES), "rgb", *configs("cuda", 0), out)
    assert third.resumed_from == step_path(out, 3) and third.step == 4 and third.finished
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))

    # The model a CUDA process wrote, loaded on each device: the same logits (TF32 off).
    x = torch.randn(3, 3, 8, 28, 28) * 50.0
    on_cpu, _ = load_checkpoint(step_path(out, 2), "cpu")
    on_cuda, _ = load_checkpoint(step_path(out, 2), cuda)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False,
                                                     allow_tf32=False):
        a, b = on_cpu(x), on_cuda(x.to(cuda)).cpu()
    assert (a - b).norm() <= 1e-4 * a.norm(), float((a - b).norm() / a.norm())
