"""Training one stream: `train_stream`, the stage behind `make train-rgb` and `make train-flow`.

SGD with momentum, step or cosine schedule with linear warm-up, AMP and channels_last_3d on CUDA,
optional torch.compile, DDP under torchrun. Checkpoints (every `checkpoint_every` steps and at each
epoch end) hold everything a resumed run needs to continue exactly as if it had never stopped: the
sampler order and every clip's augmentation depend only on (seed, epoch, index), and the model,
optimizer, scheduler, scaler and RNG states are restored. Outputs in `out_dir`: checkpoint_*.pt,
last.pt (the finished model), metrics.jsonl, curves.png, and tb/ with `train.tensorboard`. A stream
starts from random weights, a 2-D ImageNet ResNet (`model.pretrained`, streams.inflate) or a P3D
checkpoint (`model.init_from`, streams.finetune). Checkpoints carry the flow settings of their store
(flow.stage.flow_settings); a resume on a store made with other settings is refused.

Read it top to bottom: `train_stream` checks the input, `_train` wires one run (find where it
stands, build, restore) and `_fit` is the loop: `train_one_epoch`, `evaluate`, a step checkpoint,
per epoch. Around it: `Checkpointer` (writes, finds and prunes checkpoints, refuses non-finite
weights) and `MetricsLogger` (metrics.jsonl, the console, TensorBoard, curves.png).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from flow.errors import FlowError
from flow.stage import flow_settings
from flow.store import Store, open_store
from flow.video import opencv_single_thread
from p3dbase.atomic import disk_full, is_disk_full, write_text
from p3dbase.progress import progress_bar
from streams import distributed, transforms
from streams.checkpoint import (
    LAST,
    Checkpoint,
    check_flow_settings,
    make_payload,
    nonfinite_tensors,
    read_checkpoint,
    save_checkpoint,
    step_checkpoints,
    step_path,
)
from streams.clips import ClipDataset, EpochSampler
from streams.config import ModelConfig, TrainConfig
from streams.errors import StreamsError
from streams.finetune import init_from_checkpoint
from streams.inflate import load_pretrained
from streams.p3d import P3D, build_model
from streams.plots import plot_curves

METRICS = "metrics.jsonl"
CURVES = "curves.png"
# Settings that change how a run executes but not what it computes: a resumed run may change them.
RUNTIME_FIELDS = {"workers", "threads", "device", "checkpoint_every", "keep_checkpoints", "log_every", "progress",
                  "max_steps", "compile", "tensorboard"}
RUNTIME_MODEL_FIELDS = {"pretrained", "init_from"}  # only read at step 0
TENSORBOARD = "tb"  # out_dir/tb: the event files of train.tensorboard


@dataclass
class TrainResult:
    out_dir: Path
    checkpoint: Path  # last.pt when finished, else the newest step checkpoint
    finished: bool  # the whole schedule has run (False when train.max_steps stopped it)
    step: int
    epoch: int  # completed epochs
    val_acc: float | None  # clip accuracy on val_items after the last completed epoch
    best_val_acc: float | None
    seconds: float  # wall time of this call
    resumed_from: Path | None


def train_stream(store_dir: Path, train_items: list[tuple[str, int]], val_items: list[tuple[str, int]],
                 classes: list[str], modality: str, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 out_dir: Path, on_start: Callable[[], None] | None = None) -> TrainResult:
    """Train (or resume, or find finished) the `modality` stream on the store's clips; see the module doc.
    `on_start` is called once the settings are checked, before training (the pipeline writes config.toml
    then: a refused run leaves the config of the run that made the checkpoints)."""
    if modality not in transforms.MODALITIES:
        raise StreamsError(f"modality must be 'rgb' or 'flow', got {modality!r}")
    for section, cfg in (("model", model_cfg), ("train", train_cfg)):
        try:
            cfg.validate()
        except ValueError as e:
            raise StreamsError(f"[{section}] {e}") from None
    store = _check_store(Path(store_dir), train_items, val_items, classes, modality)
    ctx = distributed.setup(train_cfg.device)
    threads = torch.get_num_threads()
    try:
        try:
            with opencv_single_thread():  # DataLoader workers are forked and use OpenCV
                return _train(store, train_items, val_items, list(classes), modality, model_cfg, train_cfg,
                              Path(out_dir), ctx, on_start)
        finally:
            torch.set_num_threads(threads)
            distributed.teardown(ctx)
    except RuntimeError as e:  # torch's SIGCHLD handler fires anywhere, also after _train has returned
        if not _worker_died(e):
            raise
        raise worker_death_error(modality, Path(out_dir), str(e).splitlines()[0]) from None


@dataclass
class Progress:
    """Where a run stands: what a checkpoint records besides the weights and the optimizer's state."""
    step: int = 0
    epoch: int = 0  # completed epochs
    val_acc: float | None = None
    best_val_acc: float | None = None


@dataclass
class Run:
    """What a run trains with, built once by `_train` and handed to the loop's functions."""
    modality: str
    classes: list[str]
    model_cfg: ModelConfig
    cfg: TrainConfig
    ctx: distributed.DistContext
    batch: int  # clips per step in this process
    steps_per_epoch: int
    total_steps: int
    model: P3D
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None  # autocast dtype on CUDA, None = float32
    channels_last: bool
    training_set: dict[str, Any]  # training_set_record of the training list
    flow: dict[str, Any]  # the store's flow settings (flow.stage.flow_settings), recorded in checkpoints
    checkpoints: Checkpointer
    metrics: MetricsLogger
    net: nn.Module | None = None  # the model, or its DDP / compiled wrapper (set once the states are restored)
    meter: StepMeter = field(default_factory=lambda: StepMeter())

    @property
    def title(self) -> str:
        return f"{self.modality} stream ({self.model_cfg.arch})"


def _train(store: Store, train_items, val_items, classes: list[str], modality: str, model_cfg: ModelConfig,
           cfg: TrainConfig, out_dir: Path, ctx: distributed.DistContext,
           on_start: Callable[[], None] | None) -> TrainResult:
    """One run: find where it stands, build the model, optimizer and loaders, restore, then `_fit`."""
    started = time.perf_counter()
    if cfg.batch_size % ctx.world_size:
        raise StreamsError(f"train.batch_size = {cfg.batch_size} is not divisible by the "
                           f"{ctx.world_size} processes")
    batch = cfg.batch_size // ctx.world_size
    steps_per_epoch = (len(train_items) // ctx.world_size) // batch
    if steps_per_epoch == 0:
        raise StreamsError(f"{len(train_items)} training videos make no batch of train.batch_size = "
                           f"{cfg.batch_size}")
    cuda = ctx.device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # train_stream restores the caller's setting

    # 1. Where the run stands: finished (last.pt), resumable (a step checkpoint) or new.
    training_set = training_set_record(train_items)
    flow = flow_settings(store.bound, store.params)
    checkpoints = Checkpointer(out_dir, modality, cfg, ctx)
    finished, resume = checkpoints.find(
        lambda ckpt: check_resumable(ckpt, modality, classes, model_cfg, cfg, training_set,
                                     flow, f"the store at {store.root}", ctx.is_main))
    if finished is not None:
        if ctx.is_main:
            print(f"{modality} stream: already trained, {finished.path}")
        return TrainResult(out_dir=out_dir, checkpoint=finished.path, finished=True, step=finished.step,
                           epoch=finished.epoch, val_acc=finished.metrics.get("val_acc"),
                           best_val_acc=finished.metrics.get("best_val_acc"),
                           seconds=time.perf_counter() - started, resumed_from=None)

    # 2. The model, optimizer, schedule, data.
    channels_last = cfg.channels_last and cuda
    model = _build_model(model_cfg, cfg, modality, classes, ctx, fresh=resume is None, channels_last=channels_last)
    optimizer = torch.optim.SGD(param_groups(model, cfg, modality), lr=cfg.lr, momentum=cfg.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch, cfg))
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp) if cuda else None
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp_dtype == torch.float16)
    torch.manual_seed(cfg.seed * 1000 + ctx.rank + 1)  # dropout: a different stream per process
    run = Run(modality, classes, model_cfg, cfg, ctx, batch, steps_per_epoch, cfg.epochs * steps_per_epoch, model,
              optimizer, scheduler, scaler, amp_dtype, channels_last, training_set, flow, checkpoints,
              MetricsLogger(out_dir, ctx, modality, cfg.tensorboard))
    train_loader, sampler, val_loader = _loaders(run, store, train_items, val_items)

    # 3. Resume: states, RNG and the metrics logged up to the checkpoint.
    if resume is not None:
        _restore(run, resume)
    else:
        run.metrics.start_fresh()  # drop what a run killed before its first checkpoint logged

    run.net = model
    if ctx.distributed:
        run.net = DistributedDataParallel(model, device_ids=[ctx.device.index] if cuda else None)
    if cfg.compile:
        run.net = torch.compile(run.net)
    state = Progress(resume.step, resume.epoch, resume.metrics.get("val_acc"),
                     resume.metrics.get("best_val_acc")) if resume is not None else Progress()
    loaders = [train_loader, val_loader]
    try:
        if on_start is not None:
            on_start()
        return _fit(run, state, train_loader, sampler, val_loader, resume.path if resume is not None else None)
    except Exception as e:
        # A dead worker shows as torch's RuntimeError, or as whatever the half-sent batch broke
        # (ConnectionResetError when it died passing a tensor's file descriptor).
        died = str(e).splitlines()[0] if _worker_died(e) else _dead_worker(
            loaders, wait=2.0 if isinstance(e, (OSError, EOFError)) else 0.0)
        if died is None:
            raise
        _stop_workers(loaders)  # else every later SIGCHLD raises torch's error again, anywhere
        raise worker_death_error(modality, out_dir, died) from None
    finally:
        run.metrics.close()


def _build_model(model_cfg: ModelConfig, cfg: TrainConfig, modality: str, classes: list[str],
                 ctx: distributed.DistContext, fresh: bool, channels_last: bool) -> P3D:
    """The stream's net on the device, the same initial weights in every process: random, or (`fresh`:
    not about to be resumed) from `model.pretrained` (2-D ImageNet) or `model.init_from` (P3D)."""
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg.arch, len(classes), transforms.CHANNELS[modality], model_cfg.dropout(modality))
    if model_cfg.pretrained and fresh:
        load_pretrained(model, model_cfg.pretrained, model_cfg.pretrained_input)
    if model_cfg.init_from and fresh:
        started_from = init_from_checkpoint(model, model_cfg.arch, model_cfg.init_from, modality, classes)
        if ctx.is_main:
            print(started_from)
    model.set_partial_bn(model_cfg.partial_bn)
    if ctx.distributed and cfg.sync_bn:
        distributed.sync_batchnorm(model, ctx.device)
    model.to(ctx.device)
    if channels_last:
        to_channels_last(model)
    return model


def _fit(run: Run, state: Progress, train_loader: DataLoader, sampler: EpochSampler,
         val_loader: DataLoader | None, resumed_from: Path | None) -> TrainResult:
    """The loop: epochs of `train_one_epoch`, each followed by `evaluate` and a checkpoint; last.pt at the end."""
    started = time.perf_counter()
    cfg, ctx, out_dir = run.cfg, run.ctx, run.checkpoints.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    limit = run.total_steps if not cfg.max_steps else min(run.total_steps, cfg.max_steps)
    bar = progress_bar(total=run.total_steps, initial=state.step, desc=f"train {run.modality}", unit="step",
                       disable=not (cfg.progress and ctx.is_main))
    try:
        while state.step < limit:
            if not train_one_epoch(run, state, train_loader, sampler, limit, bar):
                break  # max_steps reached inside the epoch
            state.epoch = state.step // run.steps_per_epoch
            if val_loader is not None:
                scores = evaluate(run, val_loader)
                state.val_acc = scores["val_acc"]
                state.best_val_acc = max(state.best_val_acc or 0.0, state.val_acc)
                run.metrics.log({"kind": "val", "step": state.step, "epoch": state.epoch, **scores})
            save_step_checkpoint(run, state)
            if ctx.is_main:
                run.metrics.plot(run.title)
    finally:
        bar.close()

    def result(checkpoint: Path, finished: bool) -> TrainResult:
        return TrainResult(out_dir=out_dir, checkpoint=checkpoint, finished=finished, step=state.step,
                           epoch=state.epoch, val_acc=state.val_acc, best_val_acc=state.best_val_acc,
                           seconds=time.perf_counter() - started, resumed_from=resumed_from)

    if state.step < run.total_steps:  # stopped by max_steps
        if run.checkpoints.last != step_path(out_dir, state.step):
            save_step_checkpoint(run, state)
        return result(run.checkpoints.last, False)
    last = out_dir / LAST
    run.checkpoints.check_weights(run.model, state.step)
    if ctx.is_main:
        save_checkpoint(last, _payload(run, state, training_state=False))
        run.metrics.plot(run.title)
        acc = "n/a" if state.val_acc is None else f"{100 * state.val_acc:.1f}%"
        print(f"{run.modality} stream: {state.epoch} epochs ({state.step} steps) in "
              f"{time.perf_counter() - started:.0f} s, val clip accuracy {acc}; model in {last}")
    distributed.barrier(ctx)
    return result(last, True)


def train_one_epoch(run: Run, state: Progress, loader: DataLoader, sampler: EpochSampler, limit: int,
                    bar: tqdm) -> bool:
    """Train from `state.step` to the end of its epoch, or to step `limit`; True when the epoch is complete.
    A log line every `log_every` steps, a step checkpoint every `checkpoint_every` steps."""
    cfg = run.cfg
    epoch, position = divmod(state.step, run.steps_per_epoch)
    sampler.set_epoch(epoch, skip=position * run.batch)  # a resumed epoch skips the clips it has trained on
    run.net.train()
    run.meter.restart()
    waited = time.perf_counter()
    for clips, labels in loader:
        run.meter.data_wait += time.perf_counter() - waited
        run.meter.pending.append(train_step(run.net, run.optimizer, run.scaler, clips, labels, run.modality,
                                            run.ctx.device, run.amp_dtype, run.channels_last))
        run.scheduler.step()
        state.step += 1
        bar.update(1)
        if state.step % cfg.log_every == 0:
            log_training(run, state, bar)
        end_of_epoch = state.step % run.steps_per_epoch == 0
        if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and not end_of_epoch:
            save_step_checkpoint(run, state)
        if state.step >= limit and not end_of_epoch:
            log_training(run, state, bar)
            return False
        waited = time.perf_counter()
    log_training(run, state, bar)
    return True


@torch.no_grad()
def evaluate(run: Run, loader: DataLoader) -> dict[str, float]:
    """Clip accuracy, video accuracy (the softmax of a video's `val_clips` clips averaged) and mean loss
    on the validation clips, summed over the processes."""
    run.model.eval()
    clip_correct = clip_count = video_correct = video_count = loss_sum = 0.0
    k = run.cfg.val_clips
    scores, video_labels = [], []
    bar = progress_bar(loader, desc=f"val {run.modality}", unit="batch", leave=False,
                       disable=not (run.cfg.progress and run.ctx.is_main))
    for clips, labels in bar:
        x = transforms.normalize(clips.to(run.ctx.device, non_blocking=True), run.modality)
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        labels = labels.to(run.ctx.device)
        with torch.autocast(run.ctx.device.type, dtype=run.amp_dtype or torch.float32,
                            enabled=run.amp_dtype is not None):
            logits = run.model(x).float()
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        clip_correct += float((logits.argmax(1) == labels).sum())
        clip_count += len(labels)
        scores.append(logits.softmax(1).cpu())
        video_labels.append(labels.cpu())
    if scores:  # a process's subset holds whole videos, k consecutive clips each
        probs = torch.cat(scores).view(-1, k, len(run.classes)).mean(1)
        truth = torch.cat(video_labels).view(-1, k)[:, 0]
        video_correct, video_count = float((probs.argmax(1) == truth).sum()), float(len(truth))
    clip_correct, clip_count, video_correct, video_count, loss_sum = distributed.all_reduce_sum(
        [clip_correct, clip_count, video_correct, video_count, loss_sum], run.ctx)
    run.net.train()
    return {"val_acc": clip_correct / clip_count, "val_video_acc": video_correct / video_count,
            "val_loss": loss_sum / clip_count}


class StepMeter:
    """The (loss, correct) of the steps since the last log line, kept on the device (one sync per
    `log_every` steps), and the seconds since then, of which spent waiting for data."""

    def __init__(self) -> None:
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.restart()

    def restart(self) -> None:
        self.started, self.data_wait = time.perf_counter(), 0.0


def log_training(run: Run, state: Progress, bar: tqdm | None = None) -> None:
    """Check and log the steps since the last log line: StreamsError when a loss is not finite."""
    meter = run.meter
    if not meter.pending:
        return
    losses = torch.stack([loss for loss, _ in meter.pending]).double().cpu()
    correct = float(torch.stack([c for _, c in meter.pending]).sum().cpu())
    n = len(meter.pending)
    meter.pending = []
    bad = [i for i, v in enumerate(losses.tolist()) if not math.isfinite(v)]
    first_bad_step = state.step - n + bad[0] if bad else math.inf
    first_bad_step = distributed.all_reduce_min(first_bad_step, run.ctx)
    if math.isfinite(first_bad_step):
        raise StreamsError(f"{run.modality} stream: the training loss is not finite at step "
                           f"{int(first_bad_step) + 1} (epoch {int(first_bad_step) // run.steps_per_epoch + 1}); "
                           f"stopped and {run.checkpoints.kept()}. Lower train.lr (now {run.cfg.lr}) or check the "
                           f"data, and train again in a fresh output directory")
    totals = distributed.all_reduce_sum([float(losses.sum()), correct], run.ctx)
    seconds = time.perf_counter() - meter.started
    clips = n * run.cfg.batch_size
    record = {"kind": "train", "step": state.step, "epoch": round(state.step / run.steps_per_epoch, 4),
              "loss": totals[0] / (n * run.ctx.world_size), "acc": totals[1] / clips,
              "lr": run.optimizer.param_groups[0]["lr"], "clips_per_s": clips / max(seconds, 1e-9),
              "data_wait": meter.data_wait / max(seconds, 1e-9)}
    meter.restart()
    if bar is not None:
        bar.set_postfix(loss=f"{record['loss']:.3f}", clips_s=f"{record['clips_per_s']:.1f}")
    run.metrics.log(record)


def save_step_checkpoint(run: Run, state: Progress) -> None:
    """checkpoint_<step>.pt with everything a resume needs; the steps logged so far go first."""
    log_training(run, state)
    run.checkpoints.save_step(state.step, run.model, lambda: _payload(run, state, training_state=True))


def _payload(run: Run, state: Progress, training_state: bool) -> dict[str, Any]:
    metrics = {"val_acc": state.val_acc, "best_val_acc": state.best_val_acc}
    extra: dict[str, Any] = {}
    if training_state:  # every process takes part (its RNG states)
        device = run.ctx.device
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        extra = {"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                 "scaler": run.scaler.state_dict(), "rng": distributed.all_gather_object(rng, run.ctx),
                 "world_size": run.ctx.world_size}
    return make_payload(run.model, arch=run.model_cfg.arch, modality=run.modality, classes=run.classes,
                        input_convention=transforms.INPUT_CONVENTION[run.modality],
                        model_config=dataclasses.asdict(run.model_cfg), train_config=dataclasses.asdict(run.cfg),
                        step=state.step, epoch=state.epoch, metrics=metrics, flow=run.flow,
                        training_set=run.training_set, **extra)


def _restore(run: Run, ckpt: Checkpoint) -> None:
    """Continue from `ckpt`: model, optimizer, scheduler, scaler and this process's RNG states."""
    state, ctx = ckpt.state, run.ctx
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    rng = state.get("rng", [])
    if len(rng) == ctx.world_size:
        torch.set_rng_state(rng[ctx.rank]["torch"])
        if ctx.device.type == "cuda" and rng[ctx.rank].get("cuda") is not None:
            torch.cuda.set_rng_state(rng[ctx.rank]["cuda"], ctx.device)
    else:
        torch.manual_seed(run.cfg.seed * 1000 + ctx.rank + 1 + ckpt.step)
        if ctx.is_main:
            print(f"note: {ckpt.path} was written by {len(rng)} process(es), this run has "
                  f"{ctx.world_size}: dropout draws differ from an uninterrupted run")
    run.checkpoints.last = ckpt.path
    run.metrics.resume_at(ckpt.step)
    if ctx.is_main:
        print(f"resuming {run.modality} stream from {ckpt.path} (step {ckpt.step}/{run.total_steps})")


def _loaders(run: Run, store: Store, train_items, val_items) -> tuple[DataLoader, EpochSampler, DataLoader | None]:
    """(training loader, its sampler, validation loader or None)."""
    cfg, ctx = run.cfg, run.ctx

    def loader(dataset, *, sampler=None, drop_last=False) -> DataLoader:
        return DataLoader(dataset, batch_size=run.batch, sampler=sampler, shuffle=False, drop_last=drop_last,
                          num_workers=cfg.workers, pin_memory=ctx.device.type == "cuda",
                          persistent_workers=cfg.workers > 0, prefetch_factor=4 if cfg.workers > 0 else None,
                          worker_init_fn=_worker_init,
                          # its own generator: making an iterator must not draw from the global RNG
                          generator=torch.Generator().manual_seed(cfg.seed))

    train_set = ClipDataset(store, train_items, run.modality, cfg.clip_len, train=True, resize=cfg.resize,
                            crop=cfg.crop, scale_jitter=cfg.scale_jitter, flip=cfg.flip, seed=cfg.seed)
    sampler = EpochSampler(len(train_set), ctx.rank, ctx.world_size, cfg.seed)
    val_loader = None
    if val_items:
        val_set = ClipDataset(store, val_items, run.modality, cfg.clip_len, train=False, resize=cfg.resize,
                              crop=cfg.crop, scale_jitter=cfg.scale_jitter, clips_per_video=cfg.val_clips)
        # Whole videos per process, so that a video's clips are scored together.
        mine = [i for v in range(ctx.rank, len(val_items), ctx.world_size)
                for i in range(v * cfg.val_clips, (v + 1) * cfg.val_clips)]
        val_loader = loader(Subset(val_set, mine))
    return loader(train_set, sampler=sampler, drop_last=True), sampler, val_loader


class Checkpointer:
    """A run's checkpoints in `out_dir`: finds the one to continue from, writes step checkpoints (only
    finite weights) and keeps the newest `keep_checkpoints`; `last` is the newest written or resumed."""

    def __init__(self, out_dir: Path, modality: str, cfg: TrainConfig, ctx: distributed.DistContext):
        self.out_dir, self.modality, self.cfg, self.ctx = out_dir, modality, cfg, ctx
        self.last: Path | None = None

    def find(self, check: Callable[[Checkpoint], None]) -> tuple[Checkpoint | None, Checkpoint | None]:
        """(last.pt if the run has finished, the newest readable step checkpoint to resume from): at most
        one of them; `check` refuses a checkpoint trained with other settings."""
        last = self.out_dir / LAST
        if last.is_file():  # finished already: nothing to restore but the summary
            ckpt = read_checkpoint(last)
            check(ckpt)
            return ckpt, None
        for _, path in reversed(step_checkpoints(self.out_dir)):
            try:
                ckpt = read_checkpoint(path)
            except StreamsError as e:
                if self.ctx.is_main:
                    print(f"warning: {e}; trying an older checkpoint")
                continue
            check(ckpt)
            return None, ckpt
        return None, None

    def save_step(self, step: int, model: P3D, payload: Callable[[], dict[str, Any]]) -> None:
        """checkpoint_<step>.pt from `payload()` (built in every process), then prune the old ones."""
        self.check_weights(model, step)
        contents = payload()
        path = step_path(self.out_dir, step)
        if self.ctx.is_main:
            save_checkpoint(path, contents)
            for _, old in step_checkpoints(self.out_dir)[:-self.cfg.keep_checkpoints]:
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
                               f"{self.kept()}. Lower train.lr (now {self.cfg.lr}) and train again in a "
                               f"fresh output directory")

    def kept(self) -> str:
        if self.last and self.last.name != LAST:
            return f"kept checkpoint {self.last} (step {int(self.last.stem.split('_')[-1])})"
        return "no checkpoint had been written"


class MetricsLogger:
    """metrics.jsonl (one JSON record a line), validation on the console, the same scalars in
    TensorBoard (`tensorboard`: out_dir/tb) and curves.png, written by the main process; every process
    keeps the records in `history`."""

    def __init__(self, out_dir: Path, ctx: distributed.DistContext, modality: str, tensorboard: bool = False):
        self.out_dir, self.path, self.ctx, self.modality = out_dir, out_dir / METRICS, ctx, modality
        self.history: list[dict[str, Any]] = []
        self.writer_class = _summary_writer() if tensorboard else None  # checked before training starts
        self.writer: Any = None

    def start_fresh(self) -> None:
        if self.ctx.is_main:
            self.path.unlink(missing_ok=True)
        self._open_writer(purge_step=0)

    def resume_at(self, step: int) -> None:
        """Keep the records up to `step` (a killed run may have logged past its last checkpoint)."""
        self.history = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if isinstance(record, dict) and record.get("step", math.inf) <= step:
                    self.history.append(record)
        if self.ctx.is_main:
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.history))
        self._open_writer(purge_step=step + 1)

    def _open_writer(self, purge_step: int) -> None:
        """TensorBoard hides the events of earlier attempts from `purge_step` on, as metrics.jsonl drops them."""
        if self.writer_class is not None and self.ctx.is_main:
            self.writer = self.writer_class(str(self.out_dir / TENSORBOARD), purge_step=purge_step)

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.ctx.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.path, "a") as f:  # appended; a resume drops the lines after its checkpoint
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            if is_disk_full(e):
                raise disk_full(self.path, e) from e
            raise
        if record["kind"] == "val":
            tqdm.write(f"{self.modality} epoch {record['epoch']}: val clip accuracy {100 * record['val_acc']:.1f}%, "
                       f"video {100 * record['val_video_acc']:.1f}%, loss {record['val_loss']:.3f}")
        if self.writer is not None:
            for key, value in record.items():
                if key in TENSORBOARD_SCALARS[record["kind"]]:
                    self.writer.add_scalar(f"{record['kind']}/{key.removeprefix('val_')}", value, record["step"])

    def plot(self, title: str) -> None:
        plot_curves(self.history, self.out_dir / CURVES, title)
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# metrics.jsonl's numbers that TensorBoard shows, as "<kind>/<name>" ("val/acc", "train/clips_per_s").
TENSORBOARD_SCALARS = {"train": ("loss", "acc", "lr", "clips_per_s", "data_wait"),
                       "val": ("val_acc", "val_video_acc", "val_loss")}


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch raises it when the tensorboard package is absent
        raise StreamsError(f"train.tensorboard = true needs the tensorboard package ({e}): pip install "
                           "'p3d-two-stream[tb]' (or pip install tensorboard), or set train.tensorboard = "
                           "false") from None
    return SummaryWriter


def check_resumable(ckpt: Checkpoint, modality: str, classes: list[str], model_cfg: ModelConfig, cfg: TrainConfig,
                    training_set: dict[str, Any], flow: dict[str, Any], store: str, verbose: bool = True) -> None:
    """StreamsError listing what differs when `ckpt` was trained with other settings, classes or videos;
    or on a store (`store` names it) whose `flow` settings differ from the checkpoint's in a key that
    changes the input (streams.checkpoint.check_flow_settings; the others are printed as warnings
    when `verbose`)."""
    try:
        warnings = check_flow_settings(ckpt, flow, store)
    except StreamsError as e:
        raise StreamsError(f"cannot resume: {e}; or train on this store in another output directory") from None
    for warning in warnings if verbose else []:
        print(f"warning: {warning}")
    model_dict, train_dict = dataclasses.asdict(model_cfg), dataclasses.asdict(cfg)
    diffs = (config_differences(ckpt.model_config, model_dict, "model", RUNTIME_MODEL_FIELDS,
                                dataclasses.asdict(ModelConfig()))
             + config_differences(ckpt.train_config, train_dict, "train", RUNTIME_FIELDS,
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


def _loader_iterators(loaders: list[DataLoader | None]) -> list[Any]:
    # a persistent-workers loader keeps its iterator (and its worker processes) in `_iterator`
    return [it for loader in loaders
            if (it := getattr(loader, "_iterator", None)) is not None and hasattr(it, "_workers")]


def _dead_worker(loaders: list[DataLoader | None], wait: float = 0.0) -> str | None:
    """What ended a worker that exited with an error, or None. `wait`: seconds to give a worker
    whose pipe broke (the error reached us before the exit status)."""
    deadline = time.monotonic() + wait
    while True:
        for iterator in _loader_iterators(loaders):
            for w in iterator._workers:
                if w.exitcode:  # None while alive, 0 after a clean exit
                    how = (f"is killed by signal: {signal.Signals(-w.exitcode).name}" if w.exitcode < 0
                           else f"exited with code {w.exitcode}")
                    return f"DataLoader worker (pid {w.pid}) {how}"
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _stop_workers(loaders: list[DataLoader | None]) -> None:
    for iterator in _loader_iterators(loaders):
        try:
            iterator._shutdown_workers()
        except RuntimeError as e:  # the SIGCHLD handler firing during the shutdown itself
            if not _worker_died(e):
                raise


def _worker_died(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and "DataLoader worker" in str(err)  # "... (pid N) is killed by signal"


def worker_death_error(modality: str, out_dir: Path, what: str) -> StreamsError:
    """Stop rather than rebuild the loader and go on: torch reports a dead worker from its SIGCHLD
    handler, which may interrupt an optimizer step half-way; resuming from the newest checkpoint is
    exact (the data order depends only on seed, epoch and index)."""
    steps = step_checkpoints(out_dir)
    resume = (f"re-run the same command to resume from {steps[-1][1]}" if steps
              else "no checkpoint had been written: re-run the same command to start again")
    return StreamsError(f"{modality} stream: a data loader worker died ({what.rstrip('. ')}; the system kills "
                        f"workers that run out of memory: lower train.workers or train.batch_size); {resume}")


def _check_store(store_dir: Path, train_items, val_items, classes, modality) -> Store:
    try:
        store = open_store(store_dir)
    except FlowError as e:
        raise StreamsError(f"{e}; run `make flow` first") from None
    stored = set(store.video_ids())
    for what, items in (("training", train_items), ("validation", val_items)):
        missing = [v for v, _ in items if v not in stored]
        if missing:
            raise StreamsError(f"{len(missing)} {what} video(s) are not in the store at {store_dir}, "
                               f"e.g. {', '.join(missing[:3])}")
        labels = [label for _, label in items if not 0 <= label < len(classes)]
        if labels:
            raise StreamsError(f"{what} label {labels[0]} is outside the {len(classes)} classes")
    if not train_items:
        raise StreamsError("no training videos")
    return store


def training_set_record(train_items: list[tuple[str, int]]) -> dict[str, Any]:
    """What a checkpoint stores of its training list: a resume on another list would follow another
    schedule (steps per epoch, sampler order), so it is refused. The ids are kept to say what changed."""
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


def _worker_init(_: int) -> None:
    # Workers are processes already: one thread each. (OpenCV's single thread is inherited from
    # train_stream: cv2.setNumThreads after the fork can deadlock, see flow.video.opencv_single_thread.)
    torch.set_num_threads(1)


def lr_factor(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rates for 0-based `step`: warm-up, then step or cosine decay."""
    epoch = step / steps_per_epoch
    if cfg.schedule == "step":
        factor = cfg.lr_gamma ** sum(epoch >= m for m in cfg.lr_steps)
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * min(epoch / cfg.epochs, 1.0)))
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        factor *= (step + 1) / warmup_steps
    return factor


def param_groups(model: P3D, cfg: TrainConfig, modality: str) -> list[dict[str, Any]]:
    """Caffe-style multipliers: fc weights x fc_lr_mult, fc bias x 2 fc_lr_mult, flow conv1 x
    flow_conv1_lr_mult; weight decay on conv and fc weights only. Frozen parameters are left out."""
    groups: dict[str, list[nn.Parameter]] = {"weights": [], "bn": [], "fc.weight": [], "fc.bias": [], "conv1": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in ("fc.weight", "fc.bias"):
            groups[name].append(p)
        elif name == "conv1.weight" and modality == "flow":
            groups["conv1"].append(p)
        else:
            groups["weights" if p.dim() > 1 else "bn"].append(p)
    settings = {"weights": (1.0, cfg.weight_decay), "bn": (1.0, 0.0), "fc.weight": (cfg.fc_lr_mult, cfg.weight_decay),
                "fc.bias": (2.0 * cfg.fc_lr_mult, 0.0), "conv1": (cfg.flow_conv1_lr_mult, cfg.weight_decay)}
    return [{"params": params, "lr": cfg.lr * settings[name][0], "weight_decay": settings[name][1], "name": name}
            for name, params in groups.items() if params]


def to_channels_last(model: nn.Module) -> nn.Module:
    """channels_last_3d for the 3-D convs, channels_last for res5's 2-D convs."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            m.to(memory_format=torch.channels_last_3d)
        elif isinstance(m, nn.Conv2d):
            m.to(memory_format=torch.channels_last)
    return model


def config_differences(old: dict[str, Any], new: dict[str, Any], section: str, ignore: set[str],
                       defaults: dict[str, Any]) -> list[str]:
    """The settings of `section` that differ; a key the checkpoint lacks (a field added after it was
    written) counts as that field's default, so older checkpoints still resume."""
    def before(k: str) -> Any:
        return old.get(k, defaults.get(k))
    return [f"{section}.{k}: {before(k)!r} in the checkpoint, {new.get(k)!r} now"
            for k in sorted(set(old) | set(new)) if k not in ignore and before(k) != new.get(k)]


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               clips: torch.Tensor, labels: torch.Tensor, modality: str, device: torch.device,
               amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch of uint8 clips [B, C, T, H, W]; returns (loss, correct) without a device sync."""
    x = transforms.normalize(clips.to(device, non_blocking=True), modality)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    labels = labels.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = net(x)
    loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), (logits.argmax(1) == labels).sum()
