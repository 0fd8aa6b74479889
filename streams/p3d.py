"""Pseudo-3D ResNets wired exactly as the official Caffe deploy prototxts (ZhaofanQiu/pseudo-3d-residual-networks).

A P3D bottleneck is 1x1x1 reduce (BN, ReLU) -> S = 1x3x3 and T = 3x1x1 convs at the bottleneck
width, combined as A, B or C -> 1x1x1 expand (BN) -> + shortcut -> ReLU. With `a` the reduce output:

    A: s = ReLU(BN(S(a)));  u = ReLU(BN(T(s)))
    B: s = ReLU(BN(S(a)));  t = BN(T(a));  u = ReLU(s + t)
    C: s = ReLU(BN(S(a)));  t = BN(T(s));  u = ReLU(0.5 s + 0.5 t)

Kinds cycle A, B, C over the blocks of res2-res4 (`layer1`-`layer3`); res5 (`layer4`) is made of plain
2-D bottlenecks applied frame by frame once time has been max-pooled (to 1 for 16-frame clips).
Strides sit on the first 1x1 conv and the projection shortcut, as in Caffe's ResNets. Module names
follow torchvision (`conv1`, `bn1`, `layer1`..`layer4`, `fc`); docs/streams.md maps them to Caffe's.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

KINDS = ("A", "B", "C")
BN_EPS = 1e-5  # Caffe's BN: eps 1e-5, moving-average factor 0.9 (= PyTorch momentum 0.1)


@dataclass(frozen=True)
class P3DSpec:
    depths: tuple[int, int, int, int]  # blocks in res2..res5
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)  # bottleneck widths; outputs are 4x
    stem: int = 64  # conv1 channels
    expansion: int = 4


ARCHS: dict[str, P3DSpec] = {
    "p3d63": P3DSpec((3, 4, 6, 3)),  # ResNet-50 depths
    "p3d131": P3DSpec((3, 4, 23, 3)),  # ResNet-101
    "p3d199": P3DSpec((3, 8, 36, 3)),  # ResNet-152
    # CPU-sized nets of the same wiring (every block kind still appears: res2 A, res3 B, res4 C, ...).
    "p3d_small": P3DSpec((1, 2, 2, 1), widths=(16, 32, 64, 128), stem=32),
    "p3d_tiny": P3DSpec((1, 1, 1, 1), widths=(8, 16, 32, 64), stem=16),
}


def _conv3d(cin: int, cout: int, kernel, stride=1, padding=0) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False)


class P3DBlock(nn.Module):
    """A P3D bottleneck of kind A, B or C (res2-res4)."""

    def __init__(self, in_planes: int, width: int, kind: str, stride: int = 1, expansion: int = 4):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"block kind must be one of {KINDS}, got {kind!r}")
        out_planes = width * expansion
        self.kind = kind
        self.conv_reduce = _conv3d(in_planes, width, 1, stride=(1, stride, stride))
        self.bn_reduce = nn.BatchNorm3d(width, eps=BN_EPS)
        self.conv_s = _conv3d(width, width, (1, 3, 3), padding=(0, 1, 1))
        self.bn_s = nn.BatchNorm3d(width, eps=BN_EPS)
        self.conv_t = _conv3d(width, width, (3, 1, 1), padding=(1, 0, 0))
        self.bn_t = nn.BatchNorm3d(width, eps=BN_EPS)
        self.conv_expand = _conv3d(width, out_planes, 1)
        self.bn_expand = nn.BatchNorm3d(out_planes, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(_conv3d(in_planes, out_planes, 1, stride=(1, stride, stride)),
                                            nn.BatchNorm3d(out_planes, eps=BN_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.bn_reduce(self.conv_reduce(x)))
        s = self.relu(self.bn_s(self.conv_s(a)))
        if self.kind == "A":
            u = self.relu(self.bn_t(self.conv_t(s)))
        elif self.kind == "B":
            u = self.relu(s + self.bn_t(self.conv_t(a)))
        else:  # (s + t) * 0.5 is bit-identical to 0.5 s + 0.5 t: halving is exact in floating point
            u = self.relu((s + self.bn_t(self.conv_t(s))) * 0.5)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn_expand(self.conv_expand(u)) + shortcut)


class Bottleneck2d(nn.Module):
    """A plain ResNet bottleneck (res5), stride on the 1x1 reduce like Caffe's ResNets."""

    def __init__(self, in_planes: int, width: int, stride: int = 1, expansion: int = 4):
        super().__init__()
        out_planes = width * expansion
        self.conv_reduce = nn.Conv2d(in_planes, width, 1, stride=stride, bias=False)
        self.bn_reduce = nn.BatchNorm2d(width, eps=BN_EPS)
        self.conv_s = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn_s = nn.BatchNorm2d(width, eps=BN_EPS)
        self.conv_expand = nn.Conv2d(width, out_planes, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_planes, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_planes, eps=BN_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.bn_reduce(self.conv_reduce(x)))
        s = self.relu(self.bn_s(self.conv_s(a)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn_expand(self.conv_expand(s)) + shortcut)


def block_kinds(depths: tuple[int, ...]) -> list[list[str]]:
    """Kinds per stage for res2-res4: A, B, C cycling over the global block index (res2a = A, res2b = B, ...)."""
    kinds, index = [], 0
    for depth in depths[:3]:
        kinds.append([KINDS[(index + i) % 3] for i in range(depth)])
        index += depth
    return kinds


def _temporal_pool() -> nn.MaxPool3d:
    # Caffe pools with ceil mode: an odd length keeps its last frame, and a length of 1 stays 1.
    return nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1), ceil_mode=True)


class P3D(nn.Module):
    """P3D ResNet on clips [B, C, T, H, W] (already normalised, see streams.transforms)."""

    def __init__(self, spec: P3DSpec, num_classes: int, in_channels: int = 3, dropout: float = 0.5,
                 partial_bn: bool = False):
        super().__init__()
        self.spec = spec
        self.in_channels = in_channels
        self.feature_dim = spec.widths[3] * spec.expansion
        self.conv1 = _conv3d(in_channels, spec.stem, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3))
        self.bn1 = nn.BatchNorm3d(spec.stem, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool3d((2, 3, 3), stride=2, ceil_mode=True)
        kinds = block_kinds(spec.depths)
        planes = spec.stem
        stages = []
        for stage, (depth, width) in enumerate(zip(spec.depths, spec.widths, strict=True)):
            blocks = []
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                if stage < 3:
                    blocks.append(P3DBlock(planes, width, kinds[stage][i], stride, spec.expansion))
                else:
                    blocks.append(Bottleneck2d(planes, width, stride, spec.expansion))
                planes = width * spec.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool2, self.pool3, self.pool4 = _temporal_pool(), _temporal_pool(), _temporal_pool()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.feature_dim, num_classes)
        self._init_weights()
        self.partial_bn = False
        self.set_partial_bn(partial_bn)

    def _init_weights(self) -> None:
        if self.conv1.weight.is_meta:  # shapes only (parameter counts, MACs): nothing to initialise
            return
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, std=0.001)  # Caffe's gaussian filler of the official fc
        nn.init.zeros_(self.fc.bias)

    def frozen_bns(self) -> list[nn.Module]:
        """The BN layers partial BN freezes: every one but bn1."""
        return [m for name, m in self.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and name != "bn1"]

    def set_partial_bn(self, enabled: bool) -> None:
        """Freeze (running stats and scale/shift) every BN but bn1, as in the official nets; or unfreeze."""
        self.partial_bn = enabled
        for m in self.frozen_bns():
            for p in m.parameters():
                p.requires_grad_(not enabled)
        self.train(self.training)

    def train(self, mode: bool = True) -> P3D:
        super().train(mode)
        if mode and self.partial_bn:
            for m in self.frozen_bns():
                m.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """pool5: [B, C, T, H, W] -> [B, feature_dim] (2048 for the ResNet depths), before dropout and fc."""
        x = self.pool1(self.relu(self.bn1(self.conv1(x))))
        x = self.pool2(self.layer1(x))
        x = self.pool3(self.layer2(x))
        x = self.pool4(self.layer3(x))
        b, c, t, h, w = x.shape
        # res5 is 2-D: fold the remaining time steps (1 for 16-frame clips) into the batch.
        x = self.layer4(x.transpose(1, 2).reshape(b * t, c, h, w))
        return x.reshape(b, t, *x.shape[1:]).mean(dim=(1, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


def build_model(arch: str, num_classes: int, in_channels: int = 3, dropout: float = 0.5,
                partial_bn: bool = False) -> P3D:
    """The P3D ResNet named `arch` (a key of ARCHS) on clips [B, in_channels, T, H, W].

    From `Learning Spatio-Temporal Representation with Pseudo-3D Residual Networks
    <https://arxiv.org/abs/1711.10305>`__ (Qiu, Yao, Mei, ICCV 2017).

    Args:
        num_classes: outputs of `fc`.
        in_channels: 3 for the RGB stream, 2 for the flow stream (x and y of each flow field).
        dropout: before `fc` (the official Kinetics nets: 0.5 RGB, 0.7 flow).
        partial_bn: freeze every BN but `bn1` (running statistics and scale/shift), as the official
            nets are fine-tuned.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    return P3D(ARCHS[arch], num_classes, in_channels, dropout, partial_bn)


def p3d63(num_classes: int, in_channels: int = 3, dropout: float = 0.5, partial_bn: bool = False) -> P3D:
    """P3D-63: ResNet-50 depths, 3, 4, 6, 3 P3D blocks in res2-res5 (res5 2-D).

    From `Learning Spatio-Temporal Representation with Pseudo-3D Residual Networks
    <https://arxiv.org/abs/1711.10305>`__ (Qiu, Yao, Mei, ICCV 2017).
    25.69M conv + fc weights; 8.44 GMACs on a 16x160x160 clip (400 classes, RGB).
    Arguments as for `build_model`.
    """
    return build_model("p3d63", num_classes, in_channels, dropout, partial_bn)


def p3d131(num_classes: int, in_channels: int = 3, dropout: float = 0.5, partial_bn: bool = False) -> P3D:
    """P3D-131: ResNet-101 depths, 3, 4, 23, 3 blocks in res2-res5 (res5 2-D).

    From `Learning Spatio-Temporal Representation with Pseudo-3D Residual Networks
    <https://arxiv.org/abs/1711.10305>`__ (Qiu, Yao, Mei, ICCV 2017).
    47.97M conv + fc weights; 12.90 GMACs on a 16x160x160 clip (400 classes, RGB).
    Arguments as for `build_model`.
    """
    return build_model("p3d131", num_classes, in_channels, dropout, partial_bn)


def p3d199(num_classes: int, in_channels: int = 3, dropout: float = 0.5, partial_bn: bool = False) -> P3D:
    """P3D-199, the paper's network: ResNet-152 depths, 3, 8, 36, 3 blocks in res2-res5 (res5 2-D).

    From `Learning Spatio-Temporal Representation with Pseudo-3D Residual Networks
    <https://arxiv.org/abs/1711.10305>`__ (Qiu, Yao, Mei, ICCV 2017).
    66.32M conv + fc weights; 18.40 GMACs on a 16x160x160 clip (400 classes, RGB), the
    figures of the official Kinetics deploy prototxt.
    Arguments as for `build_model`.
    """
    return build_model("p3d199", num_classes, in_channels, dropout, partial_bn)


def p3d_small(num_classes: int, in_channels: int = 3, dropout: float = 0.5, partial_bn: bool = False) -> P3D:
    """A CPU-sized P3D net of the same wiring: 1, 2, 2, 1 blocks, widths 16-128, stem 32.

    Not in the paper: for runs and tests on a CPU (every block kind A, B, C still appears). The
    wiring is that of `Learning Spatio-Temporal Representation with Pseudo-3D Residual Networks
    <https://arxiv.org/abs/1711.10305>`__ (Qiu, Yao, Mei, ICCV 2017). 0.83M conv + fc weights;
    0.69 GMACs on a 16x160x160 clip (400 classes, RGB).
    Arguments as for `build_model`.
    """
    return build_model("p3d_small", num_classes, in_channels, dropout, partial_bn)


def p3d_tiny(num_classes: int, in_channels: int = 3, dropout: float = 0.5, partial_bn: bool = False) -> P3D:
    """The smallest P3D net of the same wiring: 1 block per stage (A, B, C in res2-res4), widths 8-64.

    Not in the paper: `make all` on SynthActions trains it on a CPU. The wiring is that of
    `Learning Spatio-Temporal Representation with Pseudo-3D Residual Networks
    <https://arxiv.org/abs/1711.10305>`__ (Qiu, Yao, Mei, ICCV 2017). 0.23M conv + fc weights;
    0.28 GMACs on a 16x160x160 clip (400 classes, RGB).
    Arguments as for `build_model`.
    """
    return build_model("p3d_tiny", num_classes, in_channels, dropout, partial_bn)


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of the convs and the fc for one input of `input_shape` [C, T, H, W].

    Runs on the meta device (no memory, no arithmetic); a model elsewhere is copied there first.
    """
    meta = model if next(model.parameters()).is_meta else copy.deepcopy(model).to("meta")
    macs = 0

    def hook(module, inputs, output):
        nonlocal macs
        if isinstance(module, nn.Linear):
            macs += output.numel() * module.in_features
        else:
            per_output = module.weight[0].numel()  # in_channels / groups * kernel volume
            macs += output.numel() * per_output

    handles = [m.register_forward_hook(hook) for m in meta.modules()
               if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear))]
    training = meta.training
    with torch.no_grad():
        meta.eval()(torch.empty(1, *input_shape, device="meta"))
    meta.train(training)
    for h in handles:
        h.remove()
    return macs

