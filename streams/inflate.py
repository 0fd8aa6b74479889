"""Start a P3D net from a 2-D ImageNet ResNet state dict (torchvision or timm key names): `model.pretrained`.
A 3-D P3D checkpoint (ours, or imported) starts a stream through `model.init_from` instead (streams.finetune).

Each 2-D 3x3 conv becomes the block's S conv; the new T conv is the identity at its centre tap in A
blocks and zero in B and C blocks, and every BN of T is the identity, so that on a clip whose frames
are all one image the P3D net (in eval mode, or training with partial BN) computes exactly what the
2-D ResNet computes on that image. C blocks output 0.5 s + 0.5 t, so their expand conv starts at twice
the 2-D weights (exact: doubling is exact in floating point) to make up for t = 0.

The flow stream's conv1 is the RGB conv1 averaged over its input channels and repeated over the two
flow channels (TSN's cross-modality initialisation). The 2-D fc (ImageNet classes) is not used.
"""
from __future__ import annotations

from pathlib import Path

import torch

from streams.checkpoint import FORMAT, safe_load
from streams.errors import StreamsError
from streams.p3d import BN_EPS, P3D, P3DBlock

# torchvision's ImageNet input: RGB in [0, 1] minus this mean, divided by this std.
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)

# torchvision/timm bottleneck names -> ours.
_BLOCK_NAMES = {"conv1": "conv_reduce", "bn1": "bn_reduce", "conv2": "conv_s", "bn2": "bn_s",
                "conv3": "conv_expand", "bn3": "bn_expand", "downsample.0": "downsample.0",
                "downsample.1": "downsample.1"}
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A 2-D ResNet state dict from `path` (plain, or under 'state_dict'/'model'; a 'module.' prefix is dropped)."""
    path = Path(path)
    obj = safe_load(path, "model.pretrained:")
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        raise StreamsError(f"model.pretrained: {path} is a P3D stream checkpoint (3-D), not a 2-D ImageNet "
                           "ResNet: start from it with model.init_from")
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise StreamsError(f"model.pretrained: {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def conv1_to_caffe_input(weight: torch.Tensor) -> torch.Tensor:
    """conv1 weights for torchvision's RGB 0-1 mean/std input -> for BGR 0-255 minus mean (ours).

    x_tv[c] = (v_rgb[c] / 255 - mean[c]) / std[c], so a weight w on x_tv[c] is w / (255 std[c]) on
    our channel 2 - c. The mean offsets differ by under 1 grey level (ours [104, 117, 123] BGR vs
    255 x torchvision's), which is left as is.
    """
    scale = 255.0 * torch.tensor(TORCHVISION_STD_RGB, dtype=weight.dtype).view(1, 3, 1, 1)
    return (weight / scale).flip(1)


def inflate_from_2d(model: P3D, state: dict[str, torch.Tensor], *, pretrained_input: str = "torchvision",
                    source: str = "state dict") -> None:
    """Copy a 2-D ResNet `state` into `model` (see the module doc); `source` names it in errors."""
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked") and not k.startswith("fc.")}
    used: set[str] = set()

    def take(key: str, shape: torch.Size | None = None) -> torch.Tensor:
        if key not in state:
            raise StreamsError(f"{source}: has no {key!r}: not a 2-D ResNet with the depths of "
                               f"{_describe(model)}")
        used.add(key)
        value = state[key]
        if shape is not None and value.numel() != torch.Size(shape).numel():
            raise StreamsError(f"{source}: {key!r} has shape {list(value.shape)}, {_describe(model)} "
                               f"needs {list(shape)}")
        return value

    targets = dict(model.named_parameters()) | dict(model.named_buffers())

    def put(name: str, value: torch.Tensor) -> None:
        target = targets[name]
        with torch.no_grad():
            target.copy_(value.reshape(target.shape).to(target.dtype))

    def copy_bn(src: str, dst: str) -> None:
        for k in _BN_KEYS:
            put(f"{dst}.{k}", take(f"{src}.{k}", targets[f"{dst}.{k}"].shape))

    conv1 = take("conv1.weight")
    if conv1.dim() == 5:
        raise StreamsError(f"{source}: 'conv1.weight' has shape {list(conv1.shape)}, a 3-D (P3D) net's, not a "
                           "2-D ImageNet ResNet's: start from a P3D checkpoint with model.init_from")
    if conv1.dim() != 4 or conv1.shape[1] != 3:
        raise StreamsError(f"{source}: 'conv1.weight' has shape {list(conv1.shape)}, expected a 2-D RGB conv")
    if pretrained_input == "torchvision":
        conv1 = conv1_to_caffe_input(conv1.float())
    if model.in_channels != 3:  # cross-modality: average over RGB, repeat over the input channels
        conv1 = conv1.mean(dim=1, keepdim=True).expand(-1, model.in_channels, -1, -1)
    expected = targets["conv1.weight"].shape  # [out, in_channels, 1, 7, 7]
    if conv1.shape[0] != expected[0] or conv1.shape[2:] != expected[3:]:
        raise StreamsError(f"{source}: 'conv1.weight' has shape {list(conv1.shape)}, {_describe(model)} "
                           f"needs [{expected[0]}, 3, {expected[3]}, {expected[4]}]")
    put("conv1.weight", conv1)
    copy_bn("bn1", "bn1")

    for stage in range(1, 5):
        for i, block in enumerate(getattr(model, f"layer{stage}")):
            prefix = f"layer{stage}.{i}"
            for src, dst in _BLOCK_NAMES.items():
                if dst.startswith("downsample") and block.downsample is None:
                    continue
                if src.startswith("bn") or src == "downsample.1":
                    copy_bn(f"{prefix}.{src}", f"{prefix}.{dst}")
                    continue
                weight = take(f"{prefix}.{src}.weight", targets[f"{prefix}.{dst}.weight"].shape)
                if isinstance(block, P3DBlock) and block.kind == "C" and dst == "conv_expand":
                    weight = weight * 2.0
                put(f"{prefix}.{dst}.weight", weight)
            if isinstance(block, P3DBlock):
                _init_temporal(block)

    unused = sorted(set(state) - used)
    if unused:
        raise StreamsError(f"{source}: has weights {_describe(model)} has no place for "
                           f"({', '.join(unused[:4])}{', ...' if len(unused) > 4 else ''}): "
                           "a deeper or different network")


def _init_temporal(block: P3DBlock) -> None:
    """T = identity at the centre tap (A) or zero (B, C); its BN the exact identity in eval mode."""
    with torch.no_grad():
        block.conv_t.weight.zero_()
        if block.kind == "A":
            width = block.conv_t.weight.shape[0]
            block.conv_t.weight[:, :, 1, 0, 0] = torch.eye(width)
        bn = block.bn_t
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - BN_EPS)  # (x - 0) / sqrt(var + eps) = x exactly


def _describe(model: P3D) -> str:
    depths = "-".join(str(d) for d in model.spec.depths)
    return f"the P3D net (depths {depths}, widths {'-'.join(str(w) for w in model.spec.widths)})"


def load_pretrained(model: P3D, path: str | Path, pretrained_input: str = "torchvision") -> None:
    """Initialise `model` from the 2-D ResNet state dict file at `path`."""
    inflate_from_2d(model, read_state_dict(path), pretrained_input=pretrained_input, source=str(path))

