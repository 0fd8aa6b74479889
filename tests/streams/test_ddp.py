"""DDP: two gloo processes under torchrun take the same first step as one process on the combined batch."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import torch

from streams.checkpoint import read_checkpoint
from streams.train import train_stream

CLASSES = ["up", "down"]

SCRIPT = """
import json, sys
from pathlib import Path
from streams.config import ModelConfig, TrainConfig
from streams.train import train_stream
a = json.loads(sys.argv[1])
train_stream(Path(a["root"]), [tuple(i) for i in a["train"]], [tuple(i) for i in a["val"]], a["classes"], "rgb",
             ModelConfig(**a["model"]), TrainConfig(**a["train_cfg"]), Path(a["out"]))
"""


def test_two_gloo_processes_compute_the_one_process_gradients(toy_store, tmp_path, configs):
    root, train, val = toy_store
    # BN in training mode everywhere (no partial BN): each BN must see the global batch, across processes.
    model_cfg, train_cfg = configs(max_steps=1, checkpoint_every=1, weight_decay=0.0, batch_size=8)
    single = train_stream(root, train, val, CLASSES, "rgb", model_cfg, train_cfg, tmp_path / "single")

    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    args = {"root": str(root), "train": train, "val": val, "classes": CLASSES, "out": str(tmp_path / "ddp"),
            "model": dataclasses.asdict(model_cfg), "train_cfg": dataclasses.asdict(train_cfg)}
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), json.dumps(args)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    one = read_checkpoint(single.checkpoint).state
    two = read_checkpoint(tmp_path / "ddp" / "checkpoint_00000001.pt").state
    assert len(two["rng"]) == 2 and two["world_size"] == 2
    # With no weight decay, SGD's momentum buffer after the first step is that step's gradient.
    grads_one = [s["momentum_buffer"] for _, s in sorted(one["optimizer"]["state"].items())]
    grads_two = [s["momentum_buffer"] for _, s in sorted(two["optimizer"]["state"].items())]
    assert len(grads_one) == len(grads_two) > 30
    for g1, g2 in zip(grads_one, grads_two, strict=True):
        assert g1.abs().max() > 0
        assert (g1 - g2).abs().max() <= 1e-4 * g1.abs().max() + 1e-7
    for name, value in one["model"].items():  # weights after the step and BN running statistics
        if value.is_floating_point():
            assert torch.allclose(value, two["model"][name], rtol=1e-4, atol=1e-6), name
