"""Where a training run stands and how it continues: its checkpoints in the output folder, the check
that a checkpoint was trained with the same settings, classes, videos and flow, and the states a
resumed run restores so that it continues exactly as if it had never stopped.

`Checkpointer` finds the checkpoint to continue from (last.pt: finished; else the newest readable
step checkpoint), writes step checkpoints (only finite weights) and keeps the newest
`train.keep_checkpoints`. Settings in RUNTIME_FIELDS change how a run executes, not what it
computes: a resumed run may change them; any other difference is refused, naming the keys.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import torch

from streams import distributed
from streams.checkpoint import (
    LAST,
    Checkpoint,
    check_flow_settings,
    nonfinite_tensors,
    read_checkpoint,
    save_checkpoint,
    step_checkpoints,
    step_path,
)
from streams.config import ModelConfig, TrainConfig
from streams.errors import StreamsError
from streams.p3d import P3D

# Settings that change how a run executes but not what it computes: a resumed run may change them.
# `run` names the folder only: a run folder renamed (runs/a -> runs/b) resumes under its new name.
RUNTIME_FIELDS = {"workers", "threads", "device", "checkpoint_every", "keep_checkpoints", "log_every", "progress",
                  "max_steps", "compile", "tensorboard", "run"}
RUNTIME_MODEL_FIELDS = {"pretrained", "init_from"}  # only read at step 0


class Checkpointer:
    """A run's checkpoints in `out_dir` (see the module doc); `last` is the newest written or resumed."""

    def __init__(self, out_dir: Path, modality: str, ctx: distributed.DistContext, *, keep: int, lr: float):
        # keep: train.keep_checkpoints; lr: train.lr, which the message on non-finite weights names
        self.out_dir, self.modality, self.ctx, self.keep, self.lr = out_dir, modality, ctx, keep, lr
        self.last: Path | None = None

    def find(self) -> tuple[Checkpoint | None, Checkpoint | None]:
        """(last.pt if the run has finished, the newest readable step checkpoint to resume from): at most
        one of them, for `check_resumable` to accept or refuse."""
        last = self.out_dir / LAST
        if last.exists() and not last.is_file():  # it resumed, trained, and died renaming onto it
            raise StreamsError(f"{last} is a folder (or another non-file) where the finished model belongs: move it "
                               "out of the run folder and re-run")
        if last.is_file():  # finished already: nothing to restore but the summary
            try:
                ckpt = read_checkpoint(last)
            except StreamsError as e:
                # Not redone silently: a finished model is an output someone may have evaluated.
                raise StreamsError(f"{e}; this run's finished model is damaged: delete {last} and re-run to rebuild "
                                   f"it from the newest step checkpoint in {self.out_dir} (from scratch if "
                                   "there is none)") from None
            return ckpt, None
        for _, path in reversed(step_checkpoints(self.out_dir)):
            try:
                if not path.is_file():
                    raise StreamsError(f"{path} is a folder (or another non-file), not a checkpoint")
                ckpt = read_checkpoint(path)
            except StreamsError as e:
                if self.ctx.is_main:
                    print(f"warning: {e}; trying an older checkpoint")
                    self._set_aside(path)
                continue
            return None, ckpt
        return None, None

    def _set_aside(self, path: Path) -> None:
        """An unreadable step checkpoint, renamed out of the checkpoint names (<name>.damaged): left among
        them, it outranked every checkpoint the resumed run wrote, and pruning (the newest `keep` by step)
        deleted those, and the one resumed from, as they came: the next re-run started from step 0."""
        aside = path.with_name(path.name + ".damaged")
        try:
            path.replace(aside)
        except OSError as e:  # a folder onto a file, no permission: say so; pruning then skips nothing
            print(f"warning: could not move {path} aside ({e.strerror}): remove it")
        else:
            print(f"warning: moved it to {aside}")

    def save_step(self, step: int, contents: dict[str, Any]) -> None:
        """checkpoint_<step>.pt (the main process writes the `contents` every process built, after
        `check_weights`), then prune the old ones."""
        path = step_path(self.out_dir, step)
        if self.ctx.is_main:
            save_checkpoint(path, contents)
            for _, old in step_checkpoints(self.out_dir)[:-self.keep]:
                old.unlink(missing_ok=True)
        self.last = path
        distributed.barrier(self.ctx)

    def check_weights(self, model: P3D, step: int) -> None:
        """Before a checkpoint is written: weights and BatchNorm statistics must be finite (a loss can
        stay finite in train mode while the running statistics are already inf)."""
        bad = nonfinite_tensors(model.state_dict())
        if bad:
            raise StreamsError(f"{self.modality} stream: the weights are not finite at step {step} "
                               f"({len(bad)} tensor(s) with inf/NaN, e.g. {', '.join(bad[:3])}); stopped and "
                               f"{self.kept()}. Lower train.lr (now {self.lr}) and train again in a "
                               f"fresh output directory")

    def kept(self) -> str:
        if self.last and self.last.name != LAST:
            return f"kept checkpoint {self.last} (step {int(self.last.stem.split('_')[-1])})"
        return "no checkpoint had been written"


def resume_hint(out_dir: Path) -> str:
    """What re-running does after a stop: resume from the newest step checkpoint, or start again."""
    steps = step_checkpoints(out_dir)
    if steps:
        return f"re-run the same command to resume from {steps[-1][1]}"
    return "re-run the same command to start again (no checkpoint had been written)"


def check_resumable(ckpt: Checkpoint, *, modality: str, classes: list[str], model_config: dict[str, Any],
                    train_config: dict[str, Any], training_set: dict[str, Any], flow: dict[str, Any], store: str,
                    verbose: bool = True) -> None:
    """StreamsError listing what differs when `ckpt` was trained with other settings ([model] and
    [train] as dicts, as a checkpoint stores them), classes or videos;
    or on a store (`store` names it) whose `flow` settings differ from the checkpoint's in a key that
    changes the input (streams.checkpoint.check_flow_settings; the others are printed as warnings
    when `verbose`)."""
    try:
        warnings = check_flow_settings(ckpt, flow, store)
    except StreamsError as e:  # the same error, told that a resume is what was refused
        raise StreamsError(f"cannot resume: {e}; or train on this store in another output directory") from None
    for warning in warnings if verbose else []:
        print(f"warning: {warning}")
    diffs = (config_differences(ckpt.model_config, model_config, "model", RUNTIME_MODEL_FIELDS,
                                dataclasses.asdict(ModelConfig()))
             + config_differences(ckpt.train_config, train_config, "train", RUNTIME_FIELDS,
                                  dataclasses.asdict(TrainConfig())))
    if ckpt.modality != modality:
        diffs.append(f"modality: {ckpt.modality} in the checkpoint, {modality} now")
    if ckpt.classes != classes:
        diffs.append("the classes differ")
    stored = ckpt.state.get("training_set")  # absent in checkpoints written before it was stored
    change = training_set_change(stored, training_set) if isinstance(stored, dict) else None
    if change:
        diffs.append(f"the training list changed: {change}")
    if diffs:
        raise StreamsError(f"{ckpt.path} was trained with other settings ({'; '.join(diffs)}): use another "
                           f"output directory, or the same settings to continue it")


def config_differences(old: dict[str, Any], new: dict[str, Any], section: str, ignore: set[str],
                       defaults: dict[str, Any]) -> list[str]:
    """The settings of `section` that differ; a key the checkpoint lacks (a field added after it was
    written) counts as that field's default, so older checkpoints still resume."""
    def before(k: str) -> Any:
        return old.get(k, defaults.get(k))
    return [f"{section}.{k}: {before(k)!r} in the checkpoint, {new.get(k)!r} now"
            for k in sorted(set(old) | set(new)) if k not in ignore and before(k) != new.get(k)]


def training_set_record(train_items: list[tuple[str, int]]) -> dict[str, Any]:
    """What a checkpoint stores of its training list: a resume on another list would follow another
    schedule (steps per epoch, sampler order), so it is refused; eval refuses to score test videos in
    it. The ids are kept to say what changed."""
    text = "".join(f"{video}\t{label}\n" for video, label in train_items)
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "videos": [video for video, _ in train_items]}


def training_set_change(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """None when the lists are the same, else what changed, e.g. '1 video(s) removed, e.g. a/b'."""
    if old.get("sha256") == new["sha256"]:
        return None
    before, after = set(old.get("videos", [])), set(new["videos"])
    added, removed = sorted(after - before), sorted(before - after)
    parts = [f"{len(added)} video(s) added" + (f", e.g. {', '.join(added[:3])}" if added else ""),
             f"{len(removed)} video(s) removed" + (f", e.g. {', '.join(removed[:3])}" if removed else "")]
    if not added and not removed:
        parts = ["the same videos in another order or with other labels"]
    return f"{'; '.join(parts)} ({len(before)} videos then, {len(after)} now)"


def training_state(optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler,
                   ctx: distributed.DistContext) -> dict[str, Any]:
    """What a step checkpoint holds besides the model: optimizer, schedule, GradScaler and every
    process's RNG states (every process takes part)."""
    device = ctx.device
    rng = {"torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": distributed.all_gather_object(rng, ctx), "world_size": ctx.world_size}


def restore_states(ckpt: Checkpoint, model: P3D, optimizer: torch.optim.Optimizer, scheduler: Any,
                   scaler: torch.amp.GradScaler, *, ctx: distributed.DistContext, seed: int) -> None:
    """Continue from `ckpt`: model, optimizer, scheduler, scaler and this process's RNG states. A run
    with another process count than the checkpoint's reseeds (its dropout draws differ, and it says so)."""
    state = ckpt.state
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        rng = state.get("rng", [])
        if len(rng) == ctx.world_size:
            torch.set_rng_state(rng[ctx.rank]["torch"])
            if ctx.device.type == "cuda" and rng[ctx.rank].get("cuda") is not None:
                torch.cuda.set_rng_state(rng[ctx.rank]["cuda"], ctx.device)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        # The checksum says the file is as written; this says another tool or an edit wrote it.
        what = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise StreamsError(f"checkpoint {ckpt.path}: its training state (optimizer, schedule, scaler or random "
                           f"states) cannot be restored ({what}): delete it to resume from an older checkpoint "
                           "(from scratch if there is none)") from None
    if len(rng) != ctx.world_size:
        torch.manual_seed(seed * 1000 + ctx.rank + 1 + ckpt.step)
        if ctx.is_main:
            print(f"note: {ckpt.path} was written by {len(rng)} process(es), this run has "
                  f"{ctx.world_size}: dropout draws differ from an uninterrupted run")
