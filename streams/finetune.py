"""Start a stream from a P3D checkpoint (`model.init_from`): one of ours, or one made by `import-weights`.

Every weight and BatchNorm statistic is copied, whatever the checkpoint's arch is called, as long as
each tensor has the shape the configured net needs (the first one that does not is named). The
classifier is kept when every class of the dataset is one of the checkpoint's, matched by name: its
rows are taken in the dataset's class order (a Kinetics classifier fine-tuned on a Kinetics subset
starts from what it knows). Otherwise the net keeps its own freshly initialised classifier. The
fine-tuning recipe (fc x10 / bias x20, flow conv1 x5, partial BN) is the training config's, as for any
start (streams.schedule.param_groups, ModelConfig.partial_bn).
"""
from __future__ import annotations

from pathlib import Path

import torch

from streams.checkpoint import read_checkpoint, stream_path, weights_problem
from streams.errors import StreamsError
from streams.p3d import P3D

CLASSIFIER = ("fc.weight", "fc.bias")


def init_from_checkpoint(model: P3D, arch: str, path: str | Path, modality: str, classes: list[str]) -> str:
    """Copy the checkpoint at `path` (a file, or a training run folder: its last.pt) into `model` (an
    `arch` net, the `modality` stream of `classes`), as the module doc says; returns one line saying
    what was taken. StreamsError naming the file and what does not fit."""
    try:
        ckpt = read_checkpoint(stream_path(path))  # a file, or a run folder's last.pt; weights_only, checksum
    except StreamsError as e:
        raise StreamsError(f"model.init_from: {e}") from None
    where = f"model.init_from: {ckpt.path}"
    if ckpt.modality != modality:
        raise StreamsError(f"{where} is a {ckpt.modality} stream and cannot start the {modality} stream: "
                           f"give a {modality} checkpoint")
    source = ckpt.state["model"]
    if problem := weights_problem(source):  # inf/NaN, or a negative BN variance: a NaN start
        raise StreamsError(f"{where}: {problem}")
    target = model.state_dict()
    arch = f"{arch} (model.arch)"
    for key, value in target.items():
        if key in CLASSIFIER:
            continue
        if key not in source:
            raise StreamsError(f"{where} ({ckpt.arch}) has no {key!r}, which {arch} needs: "
                               "its layers differ (a deeper or different net)")
        if source[key].shape != value.shape:
            raise StreamsError(f"{where} ({ckpt.arch}): {key!r} has shape {list(source[key].shape)}, "
                               f"{arch} needs {list(value.shape)}")
    extra = [k for k in source if k not in target and k not in CLASSIFIER]
    if extra:
        raise StreamsError(f"{where} ({ckpt.arch}) has {extra[0]!r}, which {arch} has no place for "
                           f"({len(extra)} such tensor(s)): a deeper or different net")

    state = {k: source[k] for k in target if k not in CLASSIFIER}
    known = {name: i for i, name in enumerate(ckpt.classes)}
    unknown = [c for c in classes if c not in known]
    fc_fits = all(k in source and source[k].shape[1:] == target[k].shape[1:] for k in CLASSIFIER)
    if not unknown and fc_fits:
        rows = torch.tensor([known[c] for c in classes])
        state.update({k: source[k][rows] for k in CLASSIFIER})
        how = f"its classifier kept ({len(classes)} of its {len(ckpt.classes)} classes, by name)"
    else:
        state.update({k: target[k] for k in CLASSIFIER})
        how = (f"a new classifier ({len(unknown)} of the {len(classes)} classes unknown to it, e.g. "
               f"{', '.join(unknown[:3])})" if unknown else "a new classifier (its own does not fit)")
    model.load_state_dict(state)
    return f"{modality} stream: starting from {ckpt.path} ({ckpt.arch}, step {ckpt.step}), {how}"
