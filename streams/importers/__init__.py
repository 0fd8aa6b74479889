"""Published P3D weights -> our checkpoints: the official Caffe `.caffemodel` files and the
pseudo-3d-pytorch conversions (`p3d_*_199.checkpoint.pth.tar`).

`import_weights` writes a normal streams checkpoint (streams.checkpoint), so an imported model is
used like a trained one by evaluation, `predict`, `features` and `export`. Its config records the
official input convention: RGB frames 0-255 in BGR order minus [104, 117, 123]; flow images minus 128.
"""
from __future__ import annotations

import dataclasses
import re
import sys
import warnings
from pathlib import Path

from p3dbase.atomic import remove_dead_temps_of
from p3dbase.errors import excerpt, file_problem, shown, text_problem
from p3dbase.overwrite import output_folder, refuse_overwrite
from streams.checkpoint import file_sha256, make_payload, save_checkpoint
from streams.config import ModelConfig, TrainConfig
from streams.errors import StreamsError
from streams.p3d import P3D
from streams.transforms import INPUT_CONVENTION

SOURCES = ("caffe", "pseudo3d")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_PICKLE_MAGIC = b"\x80"  # the legacy torch.save format starts with a pickle protocol byte
_INDEXED = re.compile(r"^([0-9]+)[ \t]+(\S.*)$")  # UCF101's classInd.txt: "1 ApplyEyeMakeup"


def detect_source(path: Path) -> str:
    """"caffe" or "pseudo3d", from the file name, else from the first bytes."""
    name = path.name.lower()
    if name.endswith(".caffemodel"):
        return "caffe"
    if name.endswith((".pth", ".pth.tar", ".pt", ".tar")):
        return "pseudo3d"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise StreamsError(f"{shown(path)}: cannot read: {e}") from None
    return "pseudo3d" if head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)) else "caffe"


def read_classes(path: Path | str, num_classes: int) -> list[str]:
    """Class names, one per line in the model's output order. A list whose first name starts with an
    index ("<index> <name>", UCF101's classInd.txt) gives one on every line, running 1..N (or 0..N-1)
    in file order; the index is dropped. Must hold exactly `num_classes` distinct names."""
    path = Path(path)
    if problem := file_problem(path):  # a FIFO would block the read for ever
        raise StreamsError(f"{shown(path)}: cannot read the class list: {problem}")
    try:
        # utf-8-sig: a BOM (Windows' Notepad writes one) is no part of the first name. Lines end at "\n"
        # only, as a text editor counts them: str.splitlines also splits at \x0c, \x1c, \x85, \u2028...,
        # which made two classes of one name holding a control character and shifted the line numbers.
        lines = path.read_text(encoding="utf-8-sig").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise StreamsError(f"{shown(path)}: cannot read the class list: {e}") from None
    names: list[str] = []
    seen: dict[str, int] = {}
    first_index: int | None = None
    for number, raw in enumerate(lines, 1):
        line = raw.removesuffix("\r").strip(" \t")  # not str.strip(): it would eat control characters too
        if not line:
            continue
        indexed = _INDEXED.match(line)
        if not names and indexed:
            first_index = int(indexed[1]) if int(indexed[1]) in (0, 1) else 1
        if first_index is not None:  # a classInd list: each index must be where its name lands
            expected = first_index + len(names)
            if not indexed or int(indexed[1]) != expected:
                found = f"index {indexed[1]}" if indexed else "no index"
                raise StreamsError(f"{shown(path)}, line {number}: {found}, expected {expected}: the indices of an "
                                   "indexed class list must run 1..N (or 0..N-1) in file order")
            line = indexed[2].strip(" \t")
        # refused here, not by every reader of the checkpoint written (streams.checkpoint checks the same)
        if problem := text_problem(line):
            raise StreamsError(f"{shown(path)}, line {number}: class name {excerpt(line)} {problem}")
        if line in seen:
            raise StreamsError(f"{shown(path)}, line {number}: class name {excerpt(line)} is already on line "
                               f"{seen[line]}: class names must be unique")
        seen[line] = number
        names.append(line)
    if len(names) != num_classes:
        raise StreamsError(f"{shown(path)}: {len(names)} class names, but the model has {num_classes} outputs")
    return names


def load_published(src: Path | str, *, source: str = "auto", arch: str | None = None,
                   fc_layer: str | None = None) -> tuple[str, str, P3D]:
    """(source, arch, model in eval mode) for a published weight file."""
    src = Path(src)
    if problem := file_problem(src):
        raise StreamsError(f"{shown(src)}: {problem}")
    source = detect_source(src) if source == "auto" else source
    if source == "caffe":
        try:
            from streams.importers.caffe import load_caffe
        except ImportError as e:
            raise StreamsError(f"reading {shown(src.name)} needs protobuf ({e}): pip install protobuf") from None

        return (source, *load_caffe(src, arch, fc_layer))
    if source == "pseudo3d":
        if fc_layer is not None:
            raise StreamsError("--fc-layer names a Caffe layer; it does not apply to a pseudo-3d-pytorch checkpoint")
        from streams.importers.pseudo3d_pytorch import load_pseudo3d

        return (source, *load_pseudo3d(src, arch))
    raise StreamsError(f"source must be 'auto', 'caffe' or 'pseudo3d', got {source!r}")


def import_weights(src: Path | str, out: Path | str, *, source: str = "auto", arch: str | None = None,
                   classes: Path | str | None = None, fc_layer: str | None = None, force: bool = False) -> Path:
    """Import published weights `src` into a streams checkpoint at `out` (written atomically).

    `classes`: a file of class names in the model's output order; without it the classes are named
    class_000, class_001, ... The model config is the paper's (arch from the file, its dropout, partial
    BN) and the train config the paper's clip recipe (16 frames, 182x242, 160 crop), which is what
    `predict`, `features` and `export` read for the clip size. An existing `out` (a trained
    checkpoint, say) is refused unless `force` (p3dbase.overwrite: the one rule for outputs).
    """
    src, out = Path(src), Path(out)
    refuse_overwrite([out], force)
    output_folder(out.parent, "import-weights --out's folder")
    remove_dead_temps_of(out)  # a killed import's temporary (a P3D-199's 260 MB)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source, arch, model = load_published(src, source=source, arch=arch, fc_layer=fc_layer)
    for warning in caught:  # one line each, as the stages print theirs, not the warnings module's file:line + code
        print(f"import-weights: warning: {shown(warning.message)}", file=sys.stderr, flush=True)
    modality = "rgb" if model.in_channels == 3 else "flow"
    num_classes = model.fc.out_features
    names = (read_classes(classes, num_classes) if classes is not None
             else [f"class_{i:03d}" for i in range(num_classes)])
    model_config = dataclasses.asdict(ModelConfig(arch=arch))
    payload = make_payload(model, arch=arch, modality=modality, classes=names,
                           input_convention=INPUT_CONVENTION[modality], model_config=model_config,
                           train_config=dataclasses.asdict(TrainConfig()), step=0, epoch=0, metrics={},
                           imported_from={"source": source, "file": src.name, "sha256": file_sha256(src)})
    save_checkpoint(out, payload)
    print(f"import-weights: {source} {shown(src.name)} -> {shown(out)} ({arch}, {modality}, {num_classes} classes)")
    return out
