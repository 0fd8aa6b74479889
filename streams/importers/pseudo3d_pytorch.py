"""Import checkpoints of the pseudo-3d-pytorch port (qijiezhao/pseudo-3d-pytorch, `p3d_model.py`).

Its converted weights (`p3d_rgb_199.checkpoint.pth.tar`, `p3d_flow_199.checkpoint.pth.tar`) hold a
state dict under `['state_dict']` with the port's names: `conv1_custom`, `bn1`, per block
`layerK.i.conv1/bn1` (1x1 reduce), `conv2/bn2` (S), `conv3/bn3` (T), `conv4/bn4` (1x1 expand), in
`layer4` `conv_normal/bn_normal` instead of S and T, `layerK.0.downsample.{0,1}`, and `fc`; no
`num_batches_tracked` (PyTorch <= 0.4). Kinds cycle A, B, C over the global block index as in Caffe.

The port wires its blocks differently from the official Caffe nets, which our P3D follows:

    port B: u = ReLU(BN(S(a))) + ReLU(BN(T(a)))        Caffe B: u = ReLU(ReLU(BN(S(a))) + BN(T(a)))
    port C: u = s + ReLU(BN(T(s))), s = ReLU(BN(S(a)))  Caffe C: u = ReLU(0.5 s + 0.5 BN(T(s)))
    port pool1: max (2,3,3)/2 padded (0,1,1), floor    Caffe pool1: max (2,3,3)/2 unpadded, ceil mode

(no ReLU after the sum in the port, where it would change nothing: both terms are >= 0). The 1:1
versus 0.5:0.5 sum of C is linear, so it is folded into the weights: the expand conv of every C block
is imported x2 and sees the port's scale. The ReLU on T and the one-pixel shift of pool1 cannot be
folded: wherever BN(T(.)) is negative the two nets differ, so the imported model does not reproduce
the port's logits. Its features are a good start for fine-tuning, not the port's outputs;
`pseudo3d_forward` runs the port's wiring over an imported model when those exact outputs are needed.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from p3dbase.errors import shown
from streams.checkpoint import FORMAT, safe_load
from streams.errors import StreamsError
from streams.p3d import ARCHS, P3D, P3DBlock, build_model

WIRING_WARNING = ("pseudo-3d-pytorch wires its B and C blocks differently from the official Caffe P3D "
                  "(ReLU on T before the sum, C summed 1:1) and pads pool1: the imported model does not "
                  "reproduce that port's logits (see docs/weights.md); fine-tune it, or use "
                  "streams.importers.pseudo3d_pytorch.pseudo3d_forward for the port's exact outputs")

_OUR_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(conv|bn)_(reduce|s|t|expand)$")
_ROLE = {"reduce": "1", "s": "2", "t": "3", "expand": "4"}
_THEIR_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.conv1\.weight$")


def port_module_of(module_name: str) -> str:
    """The port's module for ours: `conv1` -> `conv1_custom`, `layer2.0.conv_s` -> `layer2.0.conv2`,
    `layer4.1.bn_s` -> `layer4.1.bn_normal`; shortcuts and `bn1`, `fc` keep their names."""
    if module_name == "conv1":
        return "conv1_custom"
    m = _OUR_BLOCK.match(module_name)
    if m:
        stage, block, kind, role = m.groups()
        if stage == "4" and role == "s":
            return f"layer4.{block}.{kind}_normal"
        return f"layer{stage}.{block}.{kind}{_ROLE[role]}"
    return module_name  # bn1, fc, layerK.i.downsample.{0,1}


def port_mapping(model: P3D) -> dict[str, str]:
    """Our state-dict key -> the port's key, for every tensor the port's checkpoint provides (all but
    num_batches_tracked). Works on a model on the meta device."""
    mapping = {}
    for key in model.state_dict():
        module, _, field = key.rpartition(".")
        if field != "num_batches_tracked":
            mapping[key] = f"{port_module_of(module)}.{field}"
    return mapping


def c_block_expand_keys(model: P3D) -> list[str]:
    """Keys of the expand conv of every C block: imported x2 to fold the port's 1:1 sum into our 0.5:0.5."""
    return [f"{name}.conv_expand.weight" for name, m in model.named_modules()
            if isinstance(m, P3DBlock) and m.kind == "C"]


def read_port_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a pseudo-3d-pytorch checkpoint (`['state_dict']`, or a bare state dict), with a
    DataParallel `module.` prefix removed. torch.load(weights_only=True): the file cannot run code."""
    path = Path(path)
    payload = safe_load(path, "pseudo-3d-pytorch checkpoint")
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        raise StreamsError(f"{shown(path)} is already one of our stream checkpoints ({payload.get('arch')}, "
                           f"{payload.get('modality')}): use it as it is (eval --rgb/--flow, train.init_from, "
                           "transfer.rgb/flow, predict, export); import-weights reads published weights")
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise StreamsError(f"{shown(path)}: no state dict of tensors (expected the pseudo-3d-pytorch layout, "
                           "a dict with 'state_dict')")
    return {k.removeprefix("module."): v for k, v in state.items()}


def detect_port_arch(state: dict[str, torch.Tensor], path: Path) -> str:
    depths = [0, 0, 0, 0]
    for key in state:
        m = _THEIR_BLOCK.match(key)
        if m:
            depths[int(m.group(1)) - 1] += 1
    for arch, spec in ARCHS.items():
        if spec.depths == tuple(depths):
            return arch
    if "conv1_custom.weight" not in state:
        raise StreamsError(f"{shown(path)}: no conv1_custom.weight: not a pseudo-3d-pytorch P3D checkpoint")
    raise StreamsError(f"{shown(path)}: blocks per layer1..layer4 are {depths}, which match no known net "
                       f"({', '.join(f'{a} {list(s.depths)}' for a, s in ARCHS.items())})")


def port_state_dict(state: dict[str, torch.Tensor], model: P3D, path: Path) -> dict[str, torch.Tensor]:
    """Our state dict from the port's tensors: every shape checked, every port tensor used, C blocks'
    expand conv x2."""
    mapping = port_mapping(model)
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in mapping.items():
        if theirs not in state:
            raise StreamsError(f"{shown(path)}: key {theirs!r} (for our {ours}) is missing")
        value = state[theirs]
        if not value.is_floating_point():  # a cast to float would drop a complex tensor's imaginary part
            raise StreamsError(f"{shown(path)}: {theirs} holds {value.dtype} values, not floating-point weights")
        if value.shape != target[ours].shape:
            raise StreamsError(f"{shown(path)}: {theirs} has shape {list(value.shape)}, our {ours} needs "
                               f"{list(target[ours].shape)}")
        out[ours] = value.detach().to(target[ours].dtype).clone()
    for key in c_block_expand_keys(model):
        out[key] = out[key] * 2.0
    unused = sorted(set(state) - set(mapping.values()) - {k for k in state if k.endswith("num_batches_tracked")})
    if unused:
        raise StreamsError(f"{shown(path)}: key(s) the net does not have: {shown(', '.join(unused[:8]))}"
                           f"{' ...' if len(unused) > 8 else ''}")
    for key, value in target.items():
        out.setdefault(key, value)
    return out


def load_pseudo3d(path: Path | str, arch: str | None = None) -> tuple[str, P3D]:
    """(arch, our P3D in eval mode) with the weights of a pseudo-3d-pytorch checkpoint; warns that the
    port's wiring differs (module docstring)."""
    path = Path(path)
    if arch is not None and arch not in ARCHS:  # as the Caffe importer says it, before reading the file
        raise StreamsError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    state = read_port_state_dict(path)
    arch = arch or detect_port_arch(state, path)
    if "conv1_custom.weight" not in state or "fc.weight" not in state:
        raise StreamsError(f"{shown(path)}: conv1_custom.weight or fc.weight missing: not a pseudo-3d-pytorch "
                           "checkpoint")
    # The channels and classes are read before the shapes are checked against a model built from them.
    for key, dims, layout in (("conv1_custom.weight", 5, "[out, in, t, h, w]"), ("fc.weight", 2, "[classes, in]")):
        if state[key].ndim != dims:
            raise StreamsError(f"{shown(path)}: {key} has shape {list(state[key].shape)}, expected {dims}-D {layout}")
    in_channels = int(state["conv1_custom.weight"].shape[1])
    num_classes = int(state["fc.weight"].shape[0])
    if num_classes == 0:  # every reader refuses a checkpoint of no classes: refused here, before writing one
        raise StreamsError(f"{shown(path)}: fc.weight has shape {list(state['fc.weight'].shape)}: a classifier "
                           "of no classes")
    if in_channels not in (2, 3):
        raise StreamsError(f"{shown(path)}: conv1_custom takes {in_channels} channels; expected 3 (RGB) or 2 (flow)")
    model = build_model(arch, num_classes, in_channels)
    model.load_state_dict(port_state_dict(state, model, path))
    warnings.warn(WIRING_WARNING, stacklevel=2)
    return arch, model.eval()


def pseudo3d_forward(model: P3D, x: torch.Tensor) -> torch.Tensor:
    """Logits of `model` (imported by `load_pseudo3d`) computed with the port's wiring: its B and C
    blocks, its padded pool1, floor-mode temporal pools; [B, C, T, H, W] -> [B, classes].

    For checking against the port's own outputs; training, evaluation and export use our faithful net.
    """
    x = F.relu(model.bn1(model.conv1(x)))
    x = F.max_pool3d(x, (2, 3, 3), stride=2, padding=(0, 1, 1))
    for layer in (model.layer1, model.layer2, model.layer3):
        for block in layer:
            x = _port_block(block, x)
        x = F.max_pool3d(x, (2, 1, 1), stride=(2, 1, 1))
    b, c, t, h, w = x.shape
    x = model.layer4(x.transpose(1, 2).reshape(b * t, c, h, w))
    features = x.reshape(b, t, *x.shape[1:]).mean(dim=(1, 3, 4))
    return model.fc(model.dropout(features))


def _port_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    a = F.relu(block.bn_reduce(block.conv_reduce(x)))
    s = F.relu(block.bn_s(block.conv_s(a)))
    if block.kind == "A":
        u = F.relu(block.bn_t(block.conv_t(s)))
    elif block.kind == "B":
        u = s + F.relu(block.bn_t(block.conv_t(a)))
    else:  # 0.5: the import doubled this block's expand conv, the port's sum is 1:1
        u = 0.5 * (s + F.relu(block.bn_t(block.conv_t(s))))
    shortcut = x if block.downsample is None else block.downsample(x)
    return F.relu(block.bn_expand(block.conv_expand(u)) + shortcut)
