"""Stream checkpoints: one self-describing file per training state, read with weights_only=True.

A checkpoint is a dict of plain values and tensors: the format tag, the model's state dict, the
model and train configs (`dataclasses.asdict`), arch, classes, modality, input convention, step,
epoch, metrics, and for resuming the optimizer, scheduler, GradScaler and every process's RNG
states. Files are written to a temporary name and renamed, so a file under a checkpoint name is
always complete; each holds the SHA-256 of its contents, checked on reading, and only finite weights.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from flow.video import same_size
from p3dbase.atomic import atomic_write
from p3dbase.errors import NOT_REGULAR, excerpt, file_problem, shown, text_problem
from p3dbase.lock import holder_of
from p3dbase.overrides import check_value
from streams.config import MAX_CLIP_LEN, MAX_SIDE
from streams.errors import StreamsError
from streams.p3d import ARCHS, P3D, build_model
from streams.transforms import CHANNELS, MODALITIES

FORMAT = "p3d-two-stream streams checkpoint"
VERSION = 1
LAST = "last.pt"  # the model at the end of the schedule, what evaluation uses
CHECKSUM = "checksum"  # {"sha256": payload_sha256(payload)}, stored in the file it checks
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
    # The flow settings of the store it was trained on (flow.stage.flow_settings: bound, size, TV-L1
    # parameters, backend, source); {} when unknown (imported weights, older checkpoints).
    flow: dict[str, Any] = field(default_factory=dict)

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
    """Write `payload` (from `make_payload`) atomically (p3dbase.atomic), with the SHA-256 of its contents
    stored inside it (`checksum`); StreamsError, and no file, when the weights cannot be used
    (`weights_problem`); p3dbase.atomic.DiskFullError naming the file when the disk is full."""
    if problem := weights_problem(payload.get("model", {})):
        raise StreamsError(f"checkpoint {shown(path)} not written: {problem}")
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(payload)
    payload.pop(CHECKSUM, None)
    payload[CHECKSUM] = {"sha256": payload_sha256(payload)}
    with atomic_write(path) as f:
        sink = _WriteErrors(f)
        try:
            torch.save(payload, sink)
        except RuntimeError:
            if sink.error is not None:  # torch's writer turns a full disk into "unexpected pos ..."
                raise sink.error from None
            raise


class _WriteErrors:
    """A file for torch.save that keeps the OSError of a failed write (ENOSPC), which torch's zip writer
    reports only as a RuntimeError without the cause."""

    def __init__(self, f: Any):
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def nonfinite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors (weights, BatchNorm statistics) holding inf or NaN."""
    # A sum is not finite when an element is not (inf and NaN propagate), and summing is ~15x faster on
    # CPU than torch.isfinite(t).all() (0.5 s against 8 s for P3D-199's 264 MB on a busy 2-core
    # machine); only a finite tensor whose float64 sum overflows is looked at element by element.
    return [name for name, t in state_dict.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point()
            and not bool(torch.isfinite(t.sum(dtype=torch.float64))) and not bool(torch.isfinite(t).all())]


def negative_variances(state_dict: dict[str, Any]) -> list[str]:
    """Names of the BatchNorm running variances holding a negative value."""
    # sqrt(var + eps) of a negative variance is NaN: every output of the model would be NaN. Training
    # cannot make one (a mean of squares); an imported or edited file can.
    return [name for name, t in state_dict.items()
            if name.endswith("running_var") and isinstance(t, torch.Tensor) and t.is_floating_point()
            and bool((t < 0).any())]


def weights_problem(state_dict: dict[str, Any]) -> str:
    """Why a model's weights cannot be written as a checkpoint ("" when they can): a tensor holding inf
    or NaN, or a negative BatchNorm variance; both give a model whose outputs are NaN."""
    if bad := nonfinite_tensors(state_dict):
        return f"the weights are not finite ({len(bad)} tensor(s), e.g. {', '.join(bad[:3])})"
    if bad := negative_variances(state_dict):
        return (f"a BatchNorm running variance is negative ({len(bad)} tensor(s), e.g. {', '.join(bad[:3])}): "
                "the model's outputs would be NaN")
    return ""


def payload_sha256(payload: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's contents without its `checksum` entry: every tensor's dtype, shape and
    bytes and every plain value, in key order. Computed on the objects, not the file, so that it can
    live inside the file it checks."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in payload.items() if k != CHECKSUM})
    return digest.hexdigest()


def _feed(digest: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}:".encode())
        for key in sorted(obj, key=repr):
            _feed(digest, key)
            _feed(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"L{len(obj)}:".encode())
        for item in obj:
            _feed(digest, item)
    else:
        digest.update(f"V{obj!r};".encode())


def safe_load(path: Path | str, what: str = "checkpoint", map_location: str | torch.device = "cpu") -> Any:
    """The one torch.load of the project: weights_only=True, and one StreamsError naming the file when
    it is absent, truncated, foreign or holds code. `what` starts the message ("checkpoint", ...)."""
    path = Path(path)
    if not path.is_file():
        raise StreamsError(f"{what} {path} is a folder, not a file" if path.is_dir() else
                           f"{what} {path} is {NOT_REGULAR}" if path.exists() else f"{what} {path} does not exist")
    if not os.access(path, os.R_OK):  # torch.load's PermissionError would read as a damaged file below
        raise StreamsError(f"{what} {path} cannot be read: no permission")
    try:
        with warnings.catch_warnings():
            # A plain pickle (not torch's format) made torch print two lines of warning before the one
            # error below says what the file is.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            AttributeError, ImportError, IndexError, KeyError, TypeError) as e:
        # torch.load raises any of these on truncated, foreign or unsafe files
        text = str(e)
        code = re.search(r"GLOBAL ([\w.]+)", text) if "Weights only load failed" in text else None
        if code:
            raise StreamsError(f"{what} {path} holds code (the pickled Python object {code.group(1)}), not only "
                               "tensors, and was not loaded: refused by the safe loader (torch.load "
                               "weights_only=True). Only if you trust the file, re-save its state dict alone") from None
        text = text.rsplit("WeightsUnpickler error:", 1)[-1]
        first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
        # An unpickler's KeyError(101) or "Unsupported operand 95" says nothing to a user: a byte of text.
        said = "" if isinstance(e, (KeyError, IndexError)) or not first_line or "operand" in first_line else \
            f": {first_line[:120]}{'...' if len(first_line) > 120 else ''}"
        raise StreamsError(f"{what} {path} cannot be read (truncated or not a PyTorch file?){said}") from None


def make_payload(model: P3D, *, arch: str, modality: str, classes: list[str], input_convention: str,
                 model_config: dict[str, Any], train_config: dict[str, Any], step: int, epoch: int,
                 metrics: dict[str, Any], flow: dict[str, Any] | None = None, **training_state: Any) -> dict[str, Any]:
    """A checkpoint's contents; `flow`: the flow settings of the store trained on (flow.stage.flow_settings),
    None when unknown (imported weights)."""
    return {"format": FORMAT, "version": VERSION, "model": model.state_dict(), "arch": arch,
            "modality": modality, "classes": list(classes), "input_convention": input_convention,
            "model_config": model_config, "train_config": train_config, "step": step, "epoch": epoch,
            "metrics": metrics, "flow": dict(flow or {}), **training_state}


def read_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> Checkpoint:
    """The checkpoint at `path` without building its model; StreamsError naming the file if unusable."""
    path = Path(path)
    state = safe_load(path, "checkpoint", map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise StreamsError(f"checkpoint {path} is not a streams checkpoint (no format tag {FORMAT!r})")
    if state.get("version") != VERSION:
        raise StreamsError(f"checkpoint {path} has version {state.get('version')}, this code reads {VERSION}")
    missing = [k for k in ("model", "arch", "modality", "classes", "model_config", "train_config", "step")
               if k not in state]
    if missing or state["arch"] not in ARCHS or state["modality"] not in MODALITIES:
        raise StreamsError(f"checkpoint {path} is incomplete or unknown "
                           f"(missing {missing}, arch {state.get('arch')!r}, modality {state.get('modality')!r})")
    stored = state.get(CHECKSUM)  # absent in checkpoints written before checksums
    if stored is not None and not isinstance(stored, dict):  # an edit, another tool: it was skipped in silence
        raise StreamsError(f"checkpoint {path}: its checksum is {excerpt(str(stored), 40)}, not a table of its "
                           "SHA-256 (edited, or written by another tool): use another checkpoint or train again")
    if isinstance(stored, dict) and stored.get("sha256") != payload_sha256(state):
        raise StreamsError(f"checkpoint {path} is corrupt: its contents do not match the SHA-256 stored in it "
                           "(damaged bytes); use an older checkpoint or train again")
    problem = _payload_problem(state)
    if problem:
        raise StreamsError(f"checkpoint {path}: {problem} (edited, or written by another tool): use another "
                           "checkpoint or train again")
    return Checkpoint(path=path, arch=state["arch"], modality=state["modality"], classes=list(state["classes"]),
                      input_convention=state.get("input_convention", ""), model_config=state["model_config"],
                      train_config=state["train_config"], step=int(state["step"]),
                      epoch=int(state.get("epoch", 0)), metrics=dict(state.get("metrics", {})), state=state,
                      flow=dict(state.get("flow") or {}))


# What the readers of a checkpoint use besides the weights, with its type and range: a checksum proves
# only that the file is as written, and one without a checksum (older, or edited and the checksum
# dropped) would otherwise fail deep in scoring or export with a traceback.
_GEOMETRY = {"clip_len": (int, 1, MAX_CLIP_LEN), "crop": (int, 1, MAX_SIDE), "resize": (list[int], 1, MAX_SIDE),
             "scale_jitter": (list[int], 1, MAX_SIDE)}
_DROPOUT = {"dropout_rgb": (float, 0.0, 1.0), "dropout_flow": (float, 0.0, 1.0), "partial_bn": (bool, None, None)}


def _payload_problem(state: dict[str, Any]) -> str:
    """What is wrong with the values of a checkpoint that has every key ("" if nothing)."""
    classes = state["classes"]
    if not isinstance(classes, (list, tuple)) or not classes or not all(isinstance(c, str) for c in classes):
        return f"classes must be a non-empty list of names, got {str(classes)[:60]}"
    for i, name in enumerate(classes):  # printed by predict, written to reports and CSVs
        problem = text_problem(name) or ("is empty" if not name.strip() else "")
        if problem:
            return f"class {i} {excerpt(name)} {problem}"
    if len(set(classes)) != len(classes):
        twice = next(c for c in classes if classes.count(c) > 1)
        return f"class {excerpt(twice)} is named twice: scores of two outputs would be reported as one class"
    convention = state.get("input_convention", "")  # copied into every export's .json and report
    if not isinstance(convention, str) or text_problem(convention):
        return f"input_convention must be a line of text, got {excerpt(str(convention), 60)}"
    for key in ("step", "epoch"):
        value = state.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"{key} must be a whole number >= 0, got {str(value)[:60]}"
    for key in ("model", "model_config", "train_config", "metrics", "flow"):
        optional = key in ("metrics", "flow")  # older checkpoints: absent, or flow None (unknown)
        value = state.get(key) if not optional else state.get(key) or {}
        if not isinstance(value, dict):
            return f"{key} must be a table, got {type(value).__name__}"
    for section, rules, required in (("train_config", _GEOMETRY, ("clip_len", "crop", "resize")),
                                     ("model_config", _DROPOUT, ())):
        config = state[section]
        for key in required:
            if key not in config:
                return f"{section} has no {key}"
        for key, (hint, low, top) in rules.items():
            if key not in config:
                continue
            try:
                value = check_value(config[key], hint, f"{section}.{key}")
            except ValueError as e:
                return str(e)
            numbers = value if isinstance(value, list) else [value]
            if low is not None and not all(low <= v <= top for v in numbers):
                return f"{section}.{key} must be {low} to {top}, got {value}"
    if state["train_config"]["crop"] > min(state["train_config"]["resize"] or [0]):
        return f"train_config.crop {state['train_config']['crop']} is larger than its resize"
    return ""


# Flow settings that change what a stream is fed: another value stops eval, predict and features.
# The others (TV-L1's solver: tolerances, iteration counts, pyramid, time step, backend; where the
# flow came from) give about the same flow and only warn. RGB frames depend only on the size.
FLOW_DECISIVE = {"rgb": ("size",), "flow": ("bound", "size", "lambda_", "theta", "gamma")}


def _same(key: str, a: Any, b: Any) -> bool:
    if key == "size":  # "340X256", as checkpoints trained before flow.video.size_text may hold it
        return same_size(a, b)
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def check_flow_settings(ckpt: Checkpoint, given: dict[str, Any], where: str) -> list[str]:
    """Compare the flow settings `ckpt` was trained on with those of the input it is given (`where`
    says which: "the store at ...", "the [flow] settings"). StreamsError in one line naming the
    differing keys when one of FLOW_DECISIVE differs; else the warnings for the other differing keys
    (none for an RGB stream). Keys only one side records, and checkpoints that record none, are not
    compared."""
    trained = ckpt.flow
    keys = FLOW_DECISIVE["rgb"] if ckpt.modality == "rgb" else sorted(set(trained) | set(given))
    differ = [k for k in keys if k in trained and k in given and not _same(k, trained[k], given[k])]
    stop = [k for k in differ if k in FLOW_DECISIVE[ckpt.modality]]
    if stop:
        then = ", ".join(f"{k} = {trained[k]!r}" for k in stop)
        now = ", ".join(f"{k} = {given[k]!r}" for k in stop)
        fix = " ".join(f"flow.{k}={trained[k]}" for k in stop)
        raise StreamsError(f"{ckpt.modality} stream {ckpt.path} was trained on input made with {then}, but {where} "
                           f"has {now} ({', '.join(stop)} differ): give it input made with the checkpoint's "
                           f"settings (--set {fix}) or a checkpoint trained on this input")
    return [f"{ckpt.modality} stream {ckpt.path}: flow {k} was {trained[k]!r} in training, {given[k]!r} in {where} "
            "(TV-L1's solver or the flow's origin: expect slightly other scores)" for k in differ]


def model_from_checkpoint(ckpt: Checkpoint) -> P3D:
    cfg = ckpt.model_config
    dropout = cfg.get("dropout_flow" if ckpt.modality == "flow" else "dropout_rgb", 0.0)
    bad = nonfinite_tensors(ckpt.state["model"])
    if bad:  # written before checkpoints were checked, or by another tool: scores would be NaN
        raise StreamsError(f"checkpoint {ckpt.path} holds non-finite weights ({len(bad)} tensor(s) with inf/NaN, "
                           f"e.g. {', '.join(bad[:3])}) and was not used; train again with a lower train.lr")
    if bad := negative_variances(ckpt.state["model"]):  # an edited or foreign file: every output NaN too
        raise StreamsError(f"checkpoint {shown(ckpt.path)} holds a negative BatchNorm running variance "
                           f"({len(bad)} tensor(s), e.g. {', '.join(bad[:3])}) and was not used: its outputs "
                           "would be NaN")
    model = build_model(ckpt.arch, ckpt.num_classes, ckpt.in_channels, dropout, bool(cfg.get("partial_bn", False)))
    try:
        model.load_state_dict(ckpt.state["model"])
    except RuntimeError as e:
        # torch's first line only says "Error(s) in loading state_dict for P3D:"; the next say which tensors.
        details = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        raise StreamsError(f"checkpoint {ckpt.path}: weights do not fit a {ckpt.modality} {ckpt.arch} of "
                           f"{ckpt.num_classes} classes: {(details or [str(e)])[0][:200]}{more}") from None
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
    path = stream_path(path)
    model, ckpt = load_checkpoint(path, map_location)
    if modality is not None and ckpt.modality != modality:
        raise StreamsError(f"checkpoint {path} is a {ckpt.modality} stream but was given as the {modality} stream")
    return model, ckpt


def stream_path(path: Path | str) -> Path:
    """The checkpoint file a stream argument names: the file itself, or a run folder's `last.pt`."""
    path = Path(path)
    return final_checkpoint(path) if path.is_dir() else path


def run_lock(train_dir: Path | str) -> Path:
    """The lock a training run holds on its folder while it runs (one run per folder)."""
    train_dir = Path(train_dir)
    return train_dir.parent / f".{train_dir.name}.lock"


def final_checkpoint(train_dir: Path | str) -> Path:
    """The finished model of a training run directory (`last.pt`); StreamsError if it has not finished."""
    path = Path(train_dir) / LAST
    if not path.is_file() and (path.exists() or path.is_symlink()):  # "does not exist" of what is there
        raise StreamsError(f"{path} is {file_problem(path, 'checkpoint file')}, where the finished model belongs: "
                           "move it away, and run the train stage again to write it")
    if not path.is_file():
        steps = step_checkpoints(Path(train_dir))
        state = f"its newest checkpoint is {steps[-1][1].name}" if steps else "it holds no checkpoint"
        running = holder_of(run_lock(train_dir))
        if running:
            raise StreamsError(f"{path} does not exist yet: training in {train_dir} is running now (pid {running}; "
                               f"{state}): wait for it to finish")
        traces = (Path(train_dir) / "metrics.jsonl", Path(train_dir) / "config.toml", run_lock(train_dir))
        if not steps and not any(p.exists() for p in traces):  # /tmp, a folder of videos: no run was ever here
            raise StreamsError(f"{train_dir} is a folder but no training run (no {LAST}, no checkpoint): give a "
                               "checkpoint file or a run folder")
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
