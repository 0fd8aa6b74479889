"""Export a stream for use outside this project: TorchScript (`.pt`) and ONNX (`.onnx`).

The exported graph is the eval-mode network (dropout off, BN on its running statistics) from a
normalised clip batch float32 [B, C, T, H, W] (streams.transforms: BGR 0-255 minus [104, 117, 123]
for RGB, flow u8 minus 128) to the logits [B, classes] or, with `output="features"`, to pool5
[B, 2048]. The batch axis is dynamic in both formats; T, H and W are those of the example clip
(the checkpoint's clip length and crop) because the global pools are exported for that size.
A JSON file beside the exports records what a user needs to feed them: modality, input shape and
convention, classes.
"""
from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from p3dbase.atomic import atomic_path, remove_dead_temps_of, remove_quietly, temp_name, write_text
from p3dbase.errors import shown
from p3dbase.overwrite import output_folder, refuse_overwrite
from streams.checkpoint import load_stream
from streams.errors import StreamsError

FORMATS = ("torchscript", "onnx")
OUTPUTS = ("logits", "features")
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}
ONNX_OPSET = 18


class _Features(nn.Module):
    """pool5 of a P3D as its forward, so that tracing and ONNX export see it as the output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


def exportable(model: nn.Module, output: str = "logits") -> nn.Module:
    """The eval-mode module whose forward is what gets exported."""
    if output not in OUTPUTS:
        raise StreamsError(f"export output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    module = _Features(model) if output == "features" else model
    return module.eval()


def export_torchscript(model: nn.Module, path: Path | str, example: torch.Tensor, output: str = "logits") -> Path:
    """Trace `model` on `example` and save the TorchScript module (torch.jit.load reads it, also from C++)."""
    path = Path(path)
    module = exportable(model, output)
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated upstream in favour of torch.export; it is what C++ (libtorch) and
        # many serving stacks still load, and this export is for them. ONNX is the portable format.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        traced = torch.jit.trace(module, example, check_trace=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        traced.save(str(tmp))
    return path


def export_onnx(model: nn.Module, path: Path | str, example: torch.Tensor, output: str = "logits",
                opset: int = ONNX_OPSET) -> Path:
    """Export to one self-contained ONNX file (input `clips`, output `logits` or `features`, batch dynamic)."""
    path = Path(path)
    module = exportable(model, output)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    # The exporter logs a warning for each torchvision operator it cannot register: noise here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch's own exporter trips its pytree deprecation; nothing a user can act on.
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*LeafSpec")
            program = torch.onnx.export(module, (example,), input_names=["clips"], output_names=[output],
                                        opset_version=opset, dynamo=True, dynamic_shapes=({0: batch},),
                                        external_data=False, verbose=False)
    except ImportError as e:
        raise StreamsError(f"ONNX export needs onnx and onnxscript ({e}): "
                           "pip install 'p3d-two-stream[export]'") from None
    with atomic_path(path) as tmp:
        program.save(str(tmp), external_data=False)
    return path


def _check_geometry(model: nn.Module, example: torch.Tensor, arch: str) -> None:
    """The network must run on the example clip (the export's fixed T, H, W): StreamsError otherwise,
    before anything is written (a crop below the network's total stride pools to nothing)."""
    _, _, t, h, w = example.shape
    try:
        with torch.no_grad():
            model.eval()(example)
    except RuntimeError as e:
        if "allocate" in str(e):  # out of memory, not too small
            raise StreamsError(f"export: a clip of {t} frames x {h}x{w} does not fit in memory through {arch}: "
                               "give a smaller --crop / --clip-len") from None
        raise StreamsError(f"export: a clip of {t} frames x {h}x{w} is too small for {arch} "
                           f"({str(e).splitlines()[0]}): give a larger --crop / --clip-len") from None


def export_name(checkpoint: Path | str, modality: str) -> str:
    """The exports' base name: the checkpoint's file name up to its first dot, with `_<modality>`
    added unless the name already says which stream it is (`rgb.pt` -> rgb, `p3d_flow_kinetics.pt`
    -> p3d_flow_kinetics, `last.pt` -> last_rgb), so the two streams of a run never share a name."""
    stem = Path(checkpoint).name.split(".")[0]
    tokens = re.split(r"[^0-9a-zA-Z]+", stem.lower())
    return stem if modality in tokens else f"{stem}_{modality}"


def export_checkpoint(checkpoint: Path | str, out_dir: Path | str, formats: Sequence[str] = FORMATS,
                      output: str = "logits", clip_len: int | None = None, crop: int | None = None,
                      *, force: bool = False) -> list[Path]:
    """Export the stream of a checkpoint (trained or imported; a training directory stands for its
    last.pt) to `out_dir`/<name>.<output>.{pt,onnx} and a `.json` describing the input, <name> from
    `export_name` (it names the stream); returns the paths written. Existing files are refused
    (p3dbase.overwrite: the one rule for outputs) unless `force`.

    `clip_len` and `crop` default to the checkpoint's training clips (16 x 160 x 160 for the paper's).
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise StreamsError(f"export formats must be among {', '.join(FORMATS)}, got {list(formats)}")
    for name, value in (("--clip-len", clip_len), ("--crop", crop)):
        if value is not None and value < 1:
            raise StreamsError(f"export {name} must be >= 1 (or left out for the checkpoint's), got {value}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise StreamsError(f"export --out {shown(out_dir)} is a file; --out names the folder the exports go to")
    output_folder(out_dir, "export --out")
    model, ckpt = load_stream(checkpoint)
    checkpoint = ckpt.path
    clip_len = clip_len or int(ckpt.train_config.get("clip_len", 16))
    crop = crop or int(ckpt.train_config.get("crop", 160))
    try:
        example = torch.zeros(1, ckpt.in_channels, clip_len, crop, crop)
    except RuntimeError as e:  # torch's "can't allocate memory" for an absurd --crop / --clip-len
        raise StreamsError(f"export: an example clip of {clip_len} frames x {crop}x{crop} does not fit in memory "
                           f"({str(e).splitlines()[0][:120]}): give a smaller --crop / --clip-len") from None
    stem = export_name(checkpoint, ckpt.modality)
    targets = {fmt: out_dir / f"{stem}.{output}{SUFFIX[fmt]}" for fmt in formats}
    meta = out_dir / f"{stem}.{output}.json"
    refuse_overwrite([*targets.values(), meta], force)
    for target in [*targets.values(), meta]:  # what a killed export of these files left (P3D-199: 260 MB each)
        remove_dead_temps_of(target)
    _check_geometry(model, example, ckpt.arch)
    # Every format is made under a hidden temporary name first and all are renamed into place at the
    # end, the .json last: an export killed (Ctrl-C) or failing in its second format leaves no file
    # that a re-run of the same command would refuse to overwrite, nor one without its .json.
    staged: dict[Path, Path] = {}
    written = []
    try:
        for fmt, target in targets.items():
            export = export_torchscript if fmt == "torchscript" else export_onnx
            staged[target] = export(model, temp_name(target, unique=True, keep_suffix=True), example, output)
        for target, tmp in staged.items():
            os.replace(tmp, target)
            written.append(target)
    finally:
        for tmp in staged.values():
            remove_quietly(tmp)
    info = {"checkpoint": str(checkpoint), "arch": ckpt.arch, "modality": ckpt.modality, "output": output,
            "input_name": "clips", "input_shape": ["batch", ckpt.in_channels, clip_len, crop, crop],
            "input_layout": "float32 [batch, channels, frames, height, width]",
            "input_convention": ckpt.input_convention, "classes": ckpt.classes,
            "files": [p.name for p in written]}
    write_text(meta, json.dumps(info, indent=2) + "\n")
    written.append(meta)
    for path in written:
        print(f"export: wrote {path}")
    return written
