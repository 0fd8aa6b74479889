"""Import the official P3D Caffe weights (`.caffemodel`) into our P3D ResNets.

The official deploy nets (ZhaofanQiu/pseudo-3d-residual-networks, prototxt/) name their layers like
Caffe's ImageNet ResNets: `conv1` + `bn_conv1`; per block `res{2..5}{a,b,..}_branch2a` (1x1 reduce),
`_branch2b` (S, 1x3x3; a 3x3 2-D conv in res5), `_branch2b_t` (T, 3x1x1), `_branch2c` (1x1 expand),
`_branch1` (projection shortcut), each followed by a BN layer named `bn` + the same suffix
(`bn2a_branch2a`); and one InnerProduct classifier (`fc_kinetics`, `fc_sports1m`). P3D-199 names the
blocks of res3 and res4 `a, b1, b2, ...` (ResNet-152 style) and those of res2 and res5 `a, b, c`; both
styles are accepted in every stage. The custom BN layer keeps four blobs (scale, shift, moving mean,
moving variance, shaped [1, C]), which are exactly PyTorch's weight, bias, running_mean and
running_var; its eps is 1e-5 like ours. Caffe's ND convolution blobs are [out, in, t, h, w], the
layout of nn.Conv3d; res5's convolutions are 2-D ([out, in, h, w]) after a Reshape, like our res5.

Every tensor of the model must be found with exactly its shape, and every layer of the file that
holds weights must be used: a mismatch is an error naming the layer, never a silent partial import.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from google.protobuf.message import DecodeError

from p3dbase.errors import file_problem, shown
from streams.errors import StreamsError
from streams.importers.caffe_proto import NetParameter
from streams.p3d import ARCHS, P3D, build_model

BN_BLOBS = ("weight", "bias", "running_mean", "running_var")  # scale, shift, moving mean, moving var
_OUR_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(conv|bn)_(reduce|s|t|expand)$")
_OUR_SHORTCUT = re.compile(r"^layer([1-4])\.(\d+)\.downsample\.([01])$")
_BRANCH = {"reduce": "branch2a", "s": "branch2b", "t": "branch2b_t", "expand": "branch2c"}
_CAFFE_BLOCK = re.compile(r"^res([2-5])([a-z]|b\d+)_branch2a$")


@dataclass(frozen=True)
class CaffeModel:
    """The weighted layers of a .caffemodel: layer name -> its blobs as float32 arrays of their shape."""

    path: Path
    name: str
    layers: dict[str, list[np.ndarray]]


def _blob_array(blob, path: Path, layer: str, index: int) -> np.ndarray:
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:  # the deprecated 4-D (num, channels, height, width) of old files
        shape = tuple(int(d) for d in (blob.num, blob.channels, blob.height, blob.width))
    if any(d < 0 for d in shape):  # numpy would take one -1 as "infer it", and refuse two with a traceback
        raise StreamsError(f"{shown(path)}: layer {layer!r} blob {index} declares shape {list(shape)}: "
                           "a dimension is negative")
    data = blob.data if len(blob.data) else blob.double_data
    values = np.asarray(data, dtype=np.float32)
    size = math.prod(shape)  # Python's integers: an int64 product of huge dimensions could wrap to the count
    if values.size != size:
        raise StreamsError(f"{shown(path)}: layer {layer!r} blob {index} declares shape {list(shape)} "
                           f"({size} values) but holds {values.size} values")
    return values.reshape(shape)


def read_caffemodel(path: Path | str) -> CaffeModel:
    """Parse a .caffemodel (layers in `layer`, or the old V1 `layers`); StreamsError naming the file if
    it is missing, truncated, or not a Caffe net with weights."""
    path = Path(path)
    if problem := file_problem(path):
        raise StreamsError(f"{shown(path)}: {problem}")
    raw = path.read_bytes()
    try:
        net = NetParameter.FromString(raw)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise StreamsError(f"{shown(path)}: not a readable .caffemodel (truncated or another format): {e}") from None
    layers: dict[str, list[np.ndarray]] = {}
    for layer in list(net.layer) + list(net.layers):
        if not layer.blobs:
            continue
        if layer.name in layers:
            raise StreamsError(f"{shown(path)}: layer {layer.name!r} appears twice with weights")
        layers[layer.name] = [_blob_array(b, path, layer.name, i) for i, b in enumerate(layer.blobs)]
    if not layers:
        raise StreamsError(f"{shown(path)}: no layer with weights: not a trained .caffemodel (a deploy "
                           ".prototxt, or another format?)")
    return CaffeModel(path, net.name, layers)


def block_depths(names: set[str] | Mapping[str, object]) -> tuple[int, int, int, int]:
    """Blocks per stage res2..res5 found among Caffe layer names (by their `_branch2a` conv)."""
    counts = [0, 0, 0, 0]
    for name in names:
        m = _CAFFE_BLOCK.match(name)
        if m:
            counts[int(m.group(1)) - 2] += 1
    return tuple(counts)  # type: ignore[return-value]


def detect_arch(model: CaffeModel) -> str:
    """Our builder whose block depths match the file's (p3d63 / p3d131 / p3d199, or a small test net)."""
    depths = block_depths(model.layers)
    for arch, spec in ARCHS.items():
        if spec.depths == depths:
            return arch
    known = ", ".join(f"{a} {list(s.depths)}" for a, s in ARCHS.items())
    raise StreamsError(f"{shown(model.path)}: blocks per stage res2..res5 are {list(depths)}, which match no "
                       f"known net ({known})")


def block_name(stage: int, index: int, numbered: bool) -> str:
    """Caffe's ResNet block suffix: `a`, then `b`, `c`, ... or `b1`, `b2`, ... (ResNet-101/152)."""
    if index == 0:
        return "a"
    return f"b{index}" if numbered else chr(ord("a") + index)


def _numbered_stages(names: set[str] | Mapping[str, object]) -> set[int]:
    """Stages (2..5) whose blocks are named a, b1, b2, ... in the file."""
    return {stage for stage in range(2, 6) if f"res{stage}b1_branch2a" in names}


def caffe_layer_of(module_name: str, numbered: set[int], fc_layer: str) -> str:
    """The Caffe layer holding the weights of our module `module_name` (`layer3.4.conv_t` -> `res4b4_branch2b_t`
    when res4 is numbered)."""
    if module_name == "conv1":
        return "conv1"
    if module_name == "bn1":
        return "bn_conv1"
    if module_name == "fc":
        return fc_layer
    m = _OUR_BLOCK.match(module_name)
    if m:
        stage = int(m.group(1)) + 1
        block = block_name(stage, int(m.group(2)), stage in numbered)
        prefix = "res" if m.group(3) == "conv" else "bn"
        return f"{prefix}{stage}{block}_{_BRANCH[m.group(4)]}"
    m = _OUR_SHORTCUT.match(module_name)
    if m:
        stage = int(m.group(1)) + 1
        block = block_name(stage, int(m.group(2)), stage in numbered)
        return f"{'res' if m.group(3) == '0' else 'bn'}{stage}{block}_branch1"
    raise ValueError(f"no Caffe name for module {module_name!r}")


def caffe_mapping(model: P3D, numbered: set[int], fc_layer: str = "fc") -> dict[str, tuple[str, int]]:
    """Our state-dict key -> (Caffe layer, blob index), for every parameter and buffer the file must
    provide (all but BN's num_batches_tracked). Works on a model on the meta device."""
    mapping: dict[str, tuple[str, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
            mapping[f"{name}.weight"] = (caffe_layer_of(name, numbered, fc_layer), 0)
        elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            layer = caffe_layer_of(name, numbered, fc_layer)
            for i, field in enumerate(BN_BLOBS):
                mapping[f"{name}.{field}"] = (layer, i)
        elif isinstance(module, torch.nn.Linear):
            mapping[f"{name}.weight"] = (fc_layer, 0)
            mapping[f"{name}.bias"] = (fc_layer, 1)
    return mapping


def find_fc_layer(model: CaffeModel, fc_layer: str | None = None) -> str:
    """The classifier layer: `fc_layer` if given, else the one weighted layer whose name starts with `fc`."""
    if fc_layer is not None:
        if fc_layer not in model.layers:
            raise StreamsError(f"{shown(model.path)}: no layer {fc_layer!r} with weights")
        return fc_layer
    candidates = sorted(n for n in model.layers if n.startswith("fc"))
    if len(candidates) != 1:
        found = ", ".join(candidates) if candidates else "none"
        raise StreamsError(f"{shown(model.path)}: expected one classifier layer named fc*, found {shown(found)}; "
                           "name it with --fc-layer")
    return candidates[0]


def _fits(blob: np.ndarray, shape: torch.Size) -> bool:
    """Same shape; for BN vectors and the classifier also the same once singleton dimensions are
    dropped (BN blobs are [1, C], or [1, C, 1, 1] in older files; old fc blobs are 4-D [1, 1, N, D]).
    Convolution kernels must match exactly: a 3x1x1 kernel is not a 1x3x1 one."""
    if tuple(blob.shape) == tuple(shape):
        return True
    return len(shape) <= 2 and _squeeze(blob.shape) == _squeeze(tuple(shape))


def _squeeze(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1) or (1,)


def caffe_state_dict(caffe: CaffeModel, model: P3D, fc_layer: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict for `model` (its architecture already matching the file) from the file's blobs.

    Checks every shape and that every weighted layer of the file is used.
    """
    fc = find_fc_layer(caffe, fc_layer)
    mapping = caffe_mapping(model, _numbered_stages(caffe.layers), fc)
    target = model.state_dict()
    wanted: dict[str, int] = {}
    for layer, index in mapping.values():
        wanted[layer] = max(wanted.get(layer, 0), index + 1)
    for layer, count in wanted.items():
        blobs = caffe.layers.get(layer)
        if blobs is None:
            raise StreamsError(f"{shown(caffe.path)}: layer {layer!r} is missing")
        if len(blobs) != count:
            what = ("4 (scale, shift, moving mean, moving variance of P3D's BN layer)" if count == 4
                    else f"{count} (a convolution without bias)" if count == 1 else f"{count} (weight, bias)")
            raise StreamsError(f"{shown(caffe.path)}: layer {layer!r} has {len(blobs)} blob(s), expected {what}")
    state: dict[str, torch.Tensor] = {}
    for key, (layer, index) in mapping.items():
        blob = caffe.layers[layer][index]
        shape = target[key].shape
        if not _fits(blob, shape):
            raise StreamsError(f"{shown(caffe.path)}: layer {layer!r} blob {index} has shape {list(blob.shape)}, "
                               f"{key} needs {list(shape)}")
        state[key] = torch.from_numpy(blob.copy()).reshape(shape).to(target[key].dtype)
    used = {layer for layer, _ in mapping.values()}
    unused = sorted(set(caffe.layers) - used)
    if unused:
        raise StreamsError(f"{shown(caffe.path)}: layer(s) with weights that the net does not have: "
                           f"{shown(', '.join(unused[:8]))}{' ...' if len(unused) > 8 else ''}")
    for key, value in target.items():  # BN's num_batches_tracked: not in Caffe, keep the model's
        state.setdefault(key, value)
    return state


def conv1_channels(caffe: CaffeModel) -> int:
    """Input channels of the file's conv1 (3 for RGB, 2 for flow)."""
    conv1 = caffe.layers.get("conv1")
    if not conv1 or conv1[0].ndim < 2:
        raise StreamsError(f"{shown(caffe.path)}: no conv1 weights: not a P3D caffemodel")
    return int(conv1[0].shape[1])


def num_outputs(caffe: CaffeModel, fc_layer: str | None = None) -> int:
    """Classes of the file's classifier (rows of its weight)."""
    fc = find_fc_layer(caffe, fc_layer)
    weight = caffe.layers[fc][0]
    return int(weight.shape[0]) if weight.ndim == 2 else int(_squeeze(weight.shape)[0])


def load_caffe(path: Path | str, arch: str | None = None, fc_layer: str | None = None) -> tuple[str, P3D]:
    """(arch, our P3D in eval mode) with the weights of an official P3D .caffemodel; the arch, the input
    channels (3 RGB, 2 flow) and the number of classes are read from the file."""
    caffe = read_caffemodel(path)
    arch = arch or detect_arch(caffe)
    in_channels = conv1_channels(caffe)
    if in_channels not in (2, 3):
        raise StreamsError(f"{shown(caffe.path)}: conv1 takes {in_channels} channels; expected 3 (RGB) or 2 (flow)")
    if arch not in ARCHS:
        raise StreamsError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    num_classes = num_outputs(caffe, fc_layer)
    if num_classes == 0:  # every reader refuses a checkpoint of no classes: refused here, before writing one
        fc = find_fc_layer(caffe, fc_layer)
        raise StreamsError(f"{shown(caffe.path)}: classifier layer {fc!r} has weight shape "
                           f"{list(caffe.layers[fc][0].shape)}: a classifier of no classes")
    model = build_model(arch, num_classes, in_channels)
    model.load_state_dict(caffe_state_dict(caffe, model, fc_layer))
    return arch, model.eval()
