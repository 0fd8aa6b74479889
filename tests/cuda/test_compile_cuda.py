"""torch.compile on CUDA: `train.compile` through train_stream (what bench/gpu.py's train_compiled
section times on P3D-199) and the compiled TV-L1 (flow_compiled), each against its eager path."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flow.config import FlowConfig
from flow.encoding import encode
from flow.store import open_store
from flow.tvl1 import to_gray
from flow.tvl1_torch import TorchTVL1
from pipeline.synth.config import SynthConfig
from pipeline.synth.render import render_clip
from streams.checkpoint import load_checkpoint, step_path
from streams.config import ModelConfig, TrainConfig
from streams.loaders import StreamData
from streams.train import train_stream

pytestmark = pytest.mark.cuda
CLASSES = ["down", "up"]


def run(toy_store, out, compile: bool):
    root, train, val = toy_store
    model = ModelConfig(arch="p3d_tiny", partial_bn=True, dropout_rgb=0.0, dropout_flow=0.0)
    cfg = TrainConfig(clip_len=8, resize=[32, 32], crop=28, batch_size=4, epochs=1, lr=0.01, lr_steps=[],
                      fc_lr_mult=1.0, workers=1, log_every=1, checkpoint_every=1, progress=False, device="cuda",
                      compile=compile, max_steps=2)
    result = train_stream(StreamData(open_store(root), train, val, CLASSES), "rgb", model, cfg, out)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    return result, losses


def test_train_compile_trains_like_eager_and_writes_a_plain_checkpoint(toy_store, tmp_path, cuda):
    """Two bf16 steps with train.compile against the same two steps eager (same seed, same batches):
    the losses agree to bf16 rounding, and the checkpoint holds the plain model (no `_orig_mod.`
    keys), which loads and runs without compiling."""
    eager, eager_losses = run(toy_store, tmp_path / "eager", compile=False)
    compiled, losses = run(toy_store, tmp_path / "compiled", compile=True)
    assert compiled.step == eager.step == 2
    assert len(losses) == 2 and all(np.isfinite(losses))
    # bf16 autocast keeps 8 bits of mantissa: kernels fused in another order differ by ~1e-2 relative.
    np.testing.assert_allclose(losses, eager_losses, rtol=3e-2)
    model, _ = load_checkpoint(step_path(tmp_path / "compiled", 2), cuda)
    reference, _ = load_checkpoint(step_path(tmp_path / "eager", 2), cuda)
    x = torch.randn(2, 3, 8, 28, 28, device=cuda) * 50.0
    with torch.no_grad():
        a, b = model(x), reference(x)
    assert torch.isfinite(a).all() and (a - b).norm() <= 0.1 * b.norm(), float((a - b).norm() / b.norm())


def test_compiled_tvl1_within_one_uint8_level_of_eager(cuda):
    """bench/gpu.py's flow_compiled criterion on 12 SynthActions pairs (64x64, the [flow] defaults):
    the stored uint8 flow of the compiled solver within one level (40/255 px) of the eager one."""
    cfg = SynthConfig()
    pairs = []
    for k in range(len(cfg.class_names())):
        grey = to_gray(render_clip(cfg, k, 1, 1).frames)
        pairs.append(grey[len(grey) // 2:len(grey) // 2 + 2])
    i0, i1 = (torch.from_numpy(np.stack([p[j] for p in pairs])) for j in (0, 1))
    flows = [TorchTVL1(FlowConfig(), "cuda", compiled=c).compute_pairs(i0, i1).permute(0, 2, 3, 1).cpu().numpy()
             for c in (False, True)]
    diff = np.abs(encode(flows[0]).astype(np.int16) - encode(flows[1]).astype(np.int16))
    assert (diff <= 1).mean() >= 0.999, ((diff <= 1).mean(), diff.max())
