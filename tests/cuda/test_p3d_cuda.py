"""P3D on CUDA: the same numbers as on the CPU (fp32), in channels_last_3d, and bf16 AMP training.

P3D-199 with random weights is ill-conditioned in float32 (its rounding error is amplified to a few
tenths of a percent of pool5), so the tolerance is measured, not guessed: CUDA float32 must be as
close to a float64 forward as the CPU's float32 is, within a small factor. TF32 is off for these
comparisons; a real defect (layout, wiring, a kernel) is off by tens of percent.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from streams.config import TrainConfig
from streams.p3d import build_model
from streams.train import param_groups, to_channels_last, train_step

pytestmark = pytest.mark.cuda
FACTOR = 3.0  # CUDA fp32 may be this many times further from float64 than the CPU's fp32


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMS relative difference ||a - b|| / ||b|| in float64."""
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        features = model.features(x)
        return features, model.fc(features)


@pytest.fixture(scope="module")
def p3d199(cuda):
    """P3D-199 (400 classes) with BN statistics taken from the test batch (realistic activations
    instead of the growth of untrained statistics), its input, the float64 forward on CUDA and the
    float32 forward on the CPU."""
    torch.manual_seed(0)
    model = build_model("p3d199", 400, 3, dropout=0.0)
    x = torch.randn(2, 3, 16, 112, 112) * 50.0  # the spread of mean-subtracted BGR
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = None  # a cumulative average: one batch sets the statistics
        model.to(cuda).train()
        with torch.no_grad():
            model(x.to(cuda))
        model.eval()
        reference = forward(copy.deepcopy(model).double(), x.double().to(cuda))
        model.cpu()
        cpu = forward(model, x)
    return model, x, reference, cpu


def test_p3d199_forward_on_cuda_equals_the_cpu_forward(p3d199, cuda):
    model, x, reference, cpu = p3d199
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
        got = forward(copy.deepcopy(model).to(cuda), x.to(cuda))
    for name, c, g, r in zip(("pool5", "logits"), cpu, got, reference, strict=True):
        cpu_error = rel(c, r)
        assert cpu_error < 0.05, f"{name}: the CPU is {cpu_error:.2e} from the float64 forward on CUDA"
        assert rel(g, r) <= FACTOR * cpu_error + 1e-6, (name, rel(g, r), cpu_error)
        assert rel(g, c) <= (FACTOR + 1) * cpu_error + 1e-6, (name, rel(g, c), cpu_error)
    assert torch.equal(got[1].argmax(1).cpu(), cpu[1].argmax(1))


def test_channels_last_3d_gives_the_same_logits(p3d199, cuda):
    model, x, reference, cpu = p3d199
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
        plain = forward(copy.deepcopy(model).to(cuda), x.to(cuda))
        last = forward(to_channels_last(copy.deepcopy(model).to(cuda)),
                       x.to(cuda).contiguous(memory_format=torch.channels_last_3d))
    cpu_error = rel(cpu[1], reference[1])
    assert rel(last[1], reference[1]) <= FACTOR * cpu_error + 1e-6
    assert rel(last[1], plain[1]) <= 2 * FACTOR * cpu_error + 1e-6
    assert rel(last[0], plain[0]) <= 2 * FACTOR * rel(cpu[0], reference[0]) + 1e-6


def test_bf16_amp_training_step_is_finite_and_lowers_the_loss(cuda):
    """streams.train.train_step with bf16 autocast and channels_last_3d, P3D-199 with every BN
    training, six steps on one fixed batch of 8 clips: finite losses, and the last below the first."""
    torch.manual_seed(0)
    model = to_channels_last(build_model("p3d199", 4, 3, dropout=0.0).to(cuda))
    cfg = TrainConfig(lr=0.001)  # the paper's rate (x10 for the classifier): 0.01 diverges here
    optimizer = torch.optim.SGD(param_groups(model, cfg, "rgb"), lr=cfg.lr, momentum=cfg.momentum)
    scaler = torch.amp.GradScaler("cuda", enabled=False)  # bf16 needs no loss scaling
    clips = torch.randint(0, 256, (8, 3, 8, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(8) % 4
    model.train()
    losses = [float(train_step(model, optimizer, scaler, clips, labels, "rgb", cuda, torch.bfloat16, True)[0])
              for _ in range(6)]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], losses
    assert all(torch.isfinite(p).all() for p in model.parameters())
