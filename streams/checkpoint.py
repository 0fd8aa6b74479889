"""Stream checkpoints: one self-describing file per training state, read with weights_only=True.

A checkpoint is a dict of plain values and tensors: the format tag, the model's state dict, the
model and train configs (`dataclasses.asdict`), arch, classes, modality, input convention, step,
epoch, metrics, and for resuming the optimizer, scheduler, GradScaler and every process's RNG
states. Files are written to a temporary name and renamed, so a file under a checkpoint name is
always complete.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from streams.errors import StreamsError
from streams.p3d import ARCHS, P3D, build_model
from streams.transforms import CHANNELS, MODALITIES

FORMAT = "p3d-two-stream streams checkpoint"
VERSION = 1
LAST = "last.pt"  # the model at the end of the schedule, what evaluation uses
_STEP_FILE = re.compile(r"^checkpoint_(\d+)\.pt$")


@dataclass
class Checkpoint:
    path: Path
    arch: str
    modality: str
    classes: list[str]
    input_convention: str  # e.g. "BGR 0-255 minus [104, 117, 123]" (see streams.transforms)
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    step: int
    epoch: int  # completed epochs
    metrics: dict[str, Any]
    state: dict[str, Any] = field(repr=False)  # the whole file, for resuming

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return CHANNELS[self.modality]


def step_path(out_dir: Path, step: int) -> Path:
    return out_dir / f"checkpoint_{step:08d}.pt"


def step_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of out_dir's step checkpoints, oldest first."""
    if not out_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out_dir.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(found)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` (from `make_payload`) atomically: a temporary file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def make_payload(model: P3D, *, arch: str, modality: str, classes: list[str], input_convention: str,
                 model_config: dict[str, Any], train_config: dict[str, Any], step: int, epoch: int,
                 metrics: dict[str, Any], **training_state: Any) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "model": model.state_dict(), "arch": arch,
            "modality": modality, "classes": list(classes), "input_convention": input_convention,
            "model_config": model_config, "train_config": train_config, "step": step, "epoch": epoch,
            "metrics": metrics, **training_state}


def read_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> Checkpoint:
    """The checkpoint at `path` without building its model; StreamsError naming the file if unusable."""
    path = Path(path)
    if not path.is_file():
        raise StreamsError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            AttributeError, ImportError, IndexError, KeyError, TypeError) as e:
        # torch.load raises any of these on truncated, foreign or unsafe files
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StreamsError(f"checkpoint {path} cannot be read (truncated or not a PyTorch file?): "
                           f"{first_line}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise StreamsError(f"checkpoint {path} is not a streams checkpoint (no format tag {FORMAT!r})")
    if state.get("version") != VERSION:
        raise StreamsError(f"checkpoint {path} has version {state.get('version')}, this code reads {VERSION}")
    missing = [k for k in ("model", "arch", "modality", "classes", "model_config", "train_config", "step")
               if k not in state]
    if missing or state["arch"] not in ARCHS or state["modality"] not in MODALITIES:
        raise StreamsError(f"checkpoint {path} is incomplete or unknown "
                           f"(missing {missing}, arch {state.get('arch')!r}, modality {state.get('modality')!r})")
    return Checkpoint(path=path, arch=state["arch"], modality=state["modality"], classes=list(state["classes"]),
                      input_convention=state.get("input_convention", ""), model_config=state["model_config"],
                      train_config=state["train_config"], step=int(state["step"]),
                      epoch=int(state.get("epoch", 0)), metrics=dict(state.get("metrics", {})), state=state)


def model_from_checkpoint(ckpt: Checkpoint) -> P3D:
    cfg = ckpt.model_config
    dropout = cfg.get("dropout_flow" if ckpt.modality == "flow" else "dropout_rgb", 0.0)
    model = build_model(ckpt.arch, ckpt.num_classes, ckpt.in_channels, dropout, bool(cfg.get("partial_bn", False)))
    try:
        model.load_state_dict(ckpt.state["model"])
    except RuntimeError as e:
        raise StreamsError(f"checkpoint {ckpt.path}: weights do not fit {ckpt.arch}: "
                           f"{str(e).splitlines()[0]}") from None
    return model


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> tuple[P3D, Checkpoint]:
    """(model in eval mode on `map_location`, its Checkpoint). Always torch.load(weights_only=True)."""
    ckpt = read_checkpoint(path, map_location)
    model = model_from_checkpoint(ckpt).to(map_location).eval()
    return model, ckpt


def load_stream(path: Path | str, modality: str | None = None,
                map_location: str | torch.device = "cpu") -> tuple[P3D, Checkpoint]:
    """The one way to open a stream for use (eval, predict, features, export): `path` is a checkpoint
    file or a training run folder, which stands for its finished model (`last.pt`). With `modality`,
    a checkpoint of the other stream is refused. StreamsError naming the file otherwise."""
    path = Path(path)
    if path.is_dir():
        path = final_checkpoint(path)
    model, ckpt = load_checkpoint(path, map_location)
    if modality is not None and ckpt.modality != modality:
        raise StreamsError(f"checkpoint {path} is a {ckpt.modality} stream but was given as the {modality} stream")
    return model, ckpt


def final_checkpoint(train_dir: Path | str) -> Path:
    """The finished model of a training run directory (`last.pt`); StreamsError if it has not finished."""
    path = Path(train_dir) / LAST
    if not path.is_file():
        steps = step_checkpoints(Path(train_dir))
        state = f"its newest checkpoint is {steps[-1][1].name}" if steps else "it holds no checkpoint"
        raise StreamsError(f"{path} does not exist: training in {train_dir} has not finished ({state}); "
                           "run the train stage again to resume it")
    return path


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB pieces (checkpoints and weights can be GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
