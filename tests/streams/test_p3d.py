"""The P3D networks: wiring against hand-written formulas, paper shapes and parameter counts, pools."""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from streams.p3d import (
    ARCHS,
    KINDS,
    P3DBlock,
    block_kinds,
    build_model,
    count_macs,
    p3d63,
    p3d131,
    p3d199,
    p3d_small,
    p3d_tiny,
)

BUILDERS = {"p3d63": p3d63, "p3d131": p3d131, "p3d199": p3d199, "p3d_small": p3d_small, "p3d_tiny": p3d_tiny}
SMALL = ("p3d_small", "p3d_tiny")  # cheap enough to run for real on CPU


def analytic_weights(arch: str, num_classes: int, in_channels: int = 3) -> tuple[int, int]:
    """(conv + fc weights incl. the fc bias, BN scale + shift) counted from the architecture's definition."""
    spec = ARCHS[arch]
    e = spec.expansion
    weights = in_channels * spec.stem * 7 * 7
    bn = 2 * spec.stem
    planes = spec.stem
    for stage, (depth, w) in enumerate(zip(spec.depths, spec.widths, strict=True)):
        for i in range(depth):
            weights += planes * w + 9 * w * w + w * w * e  # reduce, S, expand
            bn += 2 * (w + w + w * e)
            if stage < 3:  # T and its BN
                weights += 3 * w * w
                bn += 2 * w
            if i == 0:  # projection shortcut
                weights += planes * w * e
                bn += 2 * w * e
            planes = w * e
    weights += planes * num_classes + num_classes
    return weights, bn


@functools.cache
def meta_model(arch: str, in_channels: int = 3):
    """The net of `arch` with 400 classes on the meta device: shapes without memory or arithmetic."""
    with torch.device("meta"):
        return BUILDERS[arch](400, in_channels=in_channels).eval()  # eval: 2x faster on meta


def test_every_builder_is_listed():
    assert set(BUILDERS) == set(ARCHS)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_parameter_counts(arch):
    model = meta_model(arch)
    bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             for p in m.parameters())
    conv_fc = sum(p.numel() for p in model.parameters()) - bn
    assert (conv_fc, bn) == analytic_weights(arch, 400)



@pytest.mark.parametrize("arch", list(ARCHS))
def test_builder_docstrings_cite_the_paper_and_state_the_weights(arch):
    """torchvision-style builder docstrings; the weight count they state is the model's."""
    doc = BUILDERS[arch].__doc__ or ""
    assert "<https://arxiv.org/abs/1711.10305>" in doc and "`build_model`" in doc
    conv_fc, _ = analytic_weights(arch, 400)
    assert f"{conv_fc / 1e6:.2f}M conv + fc weights" in " ".join(doc.split())

def test_p3d199_matches_the_official_deploy_net():
    """REFERENCE.md: P3D-199 (400 classes) has 66.32M weights in convs + fc (counted here with the fc
    bias: 66.31995M; without it 66.31955M, both 66.32M), 66.49M with BN scale and shift, and about
    18.4 GMACs per 16x160x160 clip."""
    model = meta_model("p3d199")
    total = sum(p.numel() for p in model.parameters())
    bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm3d | nn.BatchNorm2d)
             for p in m.parameters())
    assert abs((total - bn) / 1e6 - 66.32) < 0.005
    assert abs(total / 1e6 - 66.49) < 0.005
    assert abs(count_macs(model, (3, 16, 160, 160)) / 1e9 - 18.4) < 0.05
    kinds = [k for stage in block_kinds(ARCHS["p3d199"].depths) for k in stage]
    assert len(kinds) == 47 and (kinds.count("A"), kinds.count("B"), kinds.count("C")) == (16, 16, 15)


def test_p3d199_stage_shapes():
    model = meta_model("p3d199")
    x = torch.empty(2, 3, 16, 160, 160, device="meta")
    shapes = {}
    x = model.relu(model.bn1(model.conv1(x)))
    shapes["conv1"] = x.shape[1:]
    x = model.pool1(x)
    shapes["pool1"] = x.shape[1:]
    for stage in (1, 2, 3):
        x = getattr(model, f"layer{stage}")(x)
        shapes[f"res{stage + 1}"] = x.shape[1:]
        x = getattr(model, f"pool{stage + 1}")(x)
        shapes[f"pool{stage + 1}"] = x.shape[1:]
    assert shapes == {
        "conv1": (64, 16, 80, 80), "pool1": (64, 8, 40, 40),
        "res2": (256, 8, 40, 40), "pool2": (256, 4, 40, 40),
        "res3": (512, 4, 20, 20), "pool3": (512, 2, 20, 20),
        "res4": (1024, 2, 10, 10), "pool4": (1024, 1, 10, 10),
    }
    res5 = model.layer4(x.flatten(1, 2))
    assert res5.shape == (2, 2048, 5, 5)
    assert model.features(torch.empty(2, 3, 16, 160, 160, device="meta")).shape == (2, 2048)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("in_channels", [3, 2])
def test_builder_outputs(arch, in_channels):
    shape = (2, in_channels, 16, 64, 64)
    if arch in SMALL:
        torch.manual_seed(0)
        model = BUILDERS[arch](400, in_channels=in_channels).eval()
        x = torch.randn(shape)
    else:
        model = meta_model(arch, in_channels)
        x = torch.empty(shape, device="meta")
    if arch in SMALL:  # (features runs inside forward; on meta one pass is enough)
        assert model.features(x).shape == (2, ARCHS[arch].widths[3] * 4)
    assert model.fc.in_features == ARCHS[arch].widths[3] * 4
    assert model(x).shape == (2, 400)
    assert model.conv1.weight.shape[1] == in_channels


def caffe_pool_size(size: int, kernel: int, stride: int) -> int:
    """Caffe's pooling output size (ceil mode, no padding, every window starting inside the input)."""
    out = math.ceil((size - kernel) / stride) + 1
    if (out - 1) * stride >= size:
        out -= 1
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 40, 79, 80, 81])
def test_pools_follow_caffe_ceil_mode(size):
    model = p3d_tiny(2)
    spatial = max(size, 3)
    out = model.pool1(torch.zeros(1, 1, size, spatial, spatial))
    assert out.shape[2:] == (caffe_pool_size(size, 2, 2), caffe_pool_size(spatial, 3, 2),
                             caffe_pool_size(spatial, 3, 2))
    for pool in (model.pool2, model.pool3, model.pool4):
        assert pool(torch.zeros(1, 1, size, 5, 5)).shape[2:] == (caffe_pool_size(size, 2, 2), 5, 5)


@pytest.mark.numerical  # also run with 2 threads by `make test`
@pytest.mark.parametrize("clip_len", [1, 8, 12, 16, 32])
def test_clip_lengths(clip_len):
    """The time axis is pooled as far as it goes (ceil mode); res5 runs per remaining step, then averages."""
    torch.manual_seed(0)
    model = p3d_tiny(5).eval().double()  # float64: the two summation orders agree to ~1e-16, on any CPU
    x = torch.randn(2, 3, clip_len, 48, 48, dtype=torch.float64)
    t = clip_len
    t = caffe_pool_size(t, 2, 2)
    y = model.pool1(model.relu(model.bn1(model.conv1(x))))
    assert y.shape[2] == t
    for stage in (1, 2, 3):
        y = getattr(model, f"pool{stage + 1}")(getattr(model, f"layer{stage}")(y))
        t = caffe_pool_size(t, 2, 2)
        assert y.shape[2] == t
    expected = torch.stack([model.layer4(y[:, :, i]).mean((2, 3)) for i in range(t)]).mean(0)
    assert (model.features(x) - expected).abs().max() <= 1e-10 * expected.abs().max()
    assert model(x).shape == (2, 5)


def _random_bn(bn: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        bn.weight.copy_(torch.rand(bn.weight.shape, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen) * 0.3)
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=gen) * 0.3)
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=gen) + 0.5)


def _bn(x, bn):
    return (x - bn.running_mean.view(1, -1, 1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1, 1) + 1e-5) \
        * bn.weight.view(1, -1, 1, 1, 1) + bn.bias.view(1, -1, 1, 1, 1)


@pytest.mark.numerical  # also run with 2 threads by `make test`
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stride", [1, 2])
def test_block_formulas(kind, stride):
    """The official wiring, computed by hand with F.conv3d: A serial, B parallel (no ReLU on T), C S + 0.5/0.5."""
    gen = torch.Generator().manual_seed(1)
    block = P3DBlock(8, 4, kind, stride=stride).eval()
    for m in block.modules():
        if isinstance(m, nn.BatchNorm3d):
            _random_bn(m, gen)
    block.double()  # float64: F.conv3d by hand and the block's convs may sum in other orders
    x = torch.randn(2, 8, 5, 9, 9, generator=gen).double()
    relu = F.relu
    a = relu(_bn(F.conv3d(x, block.conv_reduce.weight, stride=(1, stride, stride)), block.bn_reduce))
    s = relu(_bn(F.conv3d(a, block.conv_s.weight, padding=(0, 1, 1)), block.bn_s))
    if kind == "A":
        u = relu(_bn(F.conv3d(s, block.conv_t.weight, padding=(1, 0, 0)), block.bn_t))
    elif kind == "B":
        u = relu(s + _bn(F.conv3d(a, block.conv_t.weight, padding=(1, 0, 0)), block.bn_t))
    else:
        u = relu(0.5 * s + 0.5 * _bn(F.conv3d(s, block.conv_t.weight, padding=(1, 0, 0)), block.bn_t))
    shortcut = _bn(F.conv3d(x, block.downsample[0].weight, stride=(1, stride, stride)), block.downsample[1])
    expected = relu(_bn(F.conv3d(u, block.conv_expand.weight), block.bn_expand) + shortcut)
    assert (block(x) - expected).abs().max() <= 1e-10 * expected.abs().max()
    assert all(m.bias is None for m in block.modules() if isinstance(m, nn.Conv3d))


def test_block_kinds_cycle_over_res2_to_res4():
    kinds = block_kinds((3, 8, 36, 3))
    assert kinds[0] == ["A", "B", "C"]  # res2a, res2b, res2c
    assert kinds[1][:3] == ["A", "B", "C"]  # res3a = A: the index is global
    assert kinds[2][:2] == ["C", "A"]  # 3 + 8 = 11 blocks before res4a -> C
    model = build_model("p3d_small", 3)
    assert [b.kind for b in model.layer1] + [b.kind for b in model.layer2] + [b.kind for b in model.layer3] == \
        ["A", "B", "C", "A", "B"]
    assert all(isinstance(b.conv_s, nn.Conv2d) and not hasattr(b, "conv_t") for b in model.layer4)


def test_strides_on_the_first_1x1_and_the_shortcut():
    model = p3d_tiny(2)
    for stage in (2, 3):
        first = getattr(model, f"layer{stage}")[0]
        assert first.conv_reduce.stride == (1, 2, 2) and first.downsample[0].stride == (1, 2, 2)
        assert first.conv_s.stride == (1, 1, 1)
    assert model.layer4[0].conv_reduce.stride == (2, 2) and model.layer4[0].downsample[0].stride == (2, 2)
    assert model.layer1[0].conv_reduce.stride == (1, 1, 1)
    assert model.conv1.kernel_size == (1, 7, 7) and model.conv1.stride == (1, 2, 2) and model.conv1.padding == (0, 3, 3)


def test_partial_bn_freezes_every_bn_but_the_first():
    torch.manual_seed(0)
    model = p3d_tiny(3, partial_bn=True).train()
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert bns["bn1"].training and bns["bn1"].weight.requires_grad
    frozen = [m for n, m in bns.items() if n != "bn1"]
    assert frozen and all(not m.training and not m.weight.requires_grad and not m.bias.requires_grad for m in frozen)
    before = {n: m.running_mean.clone() for n, m in bns.items()}
    model(torch.randn(2, 3, 4, 32, 32)).sum().backward()
    assert not torch.equal(bns["bn1"].running_mean, before["bn1"])
    assert all(torch.equal(m.running_mean, before[n]) for n, m in bns.items() if n != "bn1")
    assert all(m.weight.grad is None for m in frozen)
    model.set_partial_bn(False)
    assert all(m.training and m.weight.requires_grad for m in bns.values())
