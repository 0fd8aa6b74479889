"""Training one stream: `train_stream`, the stage behind `make train-rgb` and `make train-flow`.

SGD with momentum and a warm-up, step or cosine schedule (streams.schedule), AMP and channels_last_3d
on CUDA, optional torch.compile, DDP under torchrun (streams.distributed); the net starts from random
weights, an ImageNet ResNet or a P3D checkpoint (streams.builder). A resumed run continues exactly as
if it had never stopped (streams.resume: states, and a refusal of other settings, videos or flow).
Outputs in `out_dir`: checkpoint_*.pt, last.pt (the finished model), config.toml, metrics.jsonl,
curves.png, tb/ (streams.metrics); one run at a time writes there (a lock beside it).

Read it top to bottom: `train_stream` checks the input and holds the folder, `_train` wires one run
(where it stands, build, restore), `fit` runs epochs of `train_one_epoch` and `evaluate`, each ending
in a checkpoint. What a stream trains on (`StreamData`), its DataLoaders and their workers: streams.loaders.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from flow.store import Store
from flow.video import opencv_single_thread
from p3dbase.atomic import remove_dead_temps, write_text
from p3dbase.cluster import local_threads
from p3dbase.errors import brief
from p3dbase.lock import try_lock
from p3dbase.progress import progress_bar
from streams import distributed, loaders, losses, schedule, transforms
from streams.builder import build_stream, started_from
from streams.checkpoint import LAST, make_payload, run_lock, save_checkpoint, step_path
from streams.clips import ClipDataset, EpochSampler
from streams.config import ModelConfig, TrainConfig
from streams.errors import StreamsError
from streams.loaders import StreamData
from streams.metrics import MetricsLogger, StepMeter
from streams.p3d import P3D, build_model
from streams.resume import Checkpointer, check_resumable, restore_states, training_set_record, training_state

CONFIG = "config.toml"  # the resolved settings of the run that made the checkpoints


@dataclass
class TrainResult:
    out_dir: Path
    checkpoint: Path  # last.pt when finished, else the newest step checkpoint
    finished: bool  # the whole schedule has run (False when train.max_steps stopped it)
    step: int
    epoch: int  # completed epochs
    val_acc: float | None  # clip accuracy on the validation videos after the last completed epoch
    best_val_acc: float | None
    seconds: float  # wall time of this call
    resumed_from: Path | None


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
    out_dir: Path
    batch: int  # clips per step in this process
    steps_per_epoch: int
    model: P3D
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None  # autocast dtype, None = float32
    channels_last: bool
    record: dict[str, Any]  # what every checkpoint carries: the training list and the store's flow settings
    checkpoints: Checkpointer
    metrics: MetricsLogger
    net: nn.Module | None = None  # the model, or its DDP / compiled wrapper (set once the states are restored)
    meter: StepMeter = field(default_factory=StepMeter)

    @property
    def total_steps(self) -> int:
        return total_steps(self.cfg, self.steps_per_epoch)


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The schedule's length: `iterations` when given, else `epochs` of `steps_per_epoch`."""
    return cfg.iterations or cfg.epochs * steps_per_epoch


def train_stream(data: StreamData, modality: str, model_cfg: ModelConfig, train_cfg: TrainConfig, out_dir: Path,
                 *, config_toml: str = "") -> TrainResult:
    """Train (or resume, or find finished) the `modality` stream on `data`; see the module doc.
    `config_toml`: the caller's resolved settings, written as out_dir/config.toml once the run is
    accepted (a refused run leaves the config of the run that made the checkpoints)."""
    # 1. The input: settings, and every video in the store.
    if modality not in transforms.MODALITIES:
        raise StreamsError(f"modality must be 'rgb' or 'flow', got {modality!r}")
    for section, cfg in (("model", model_cfg), ("train", train_cfg)):
        try:
            cfg.validate()
        except ValueError as e:
            raise StreamsError(f"[{section}] {e}") from None
    data.check()
    out_dir = Path(out_dir)
    # 2. This process's device (and its place under torchrun); the main process holds the folder.
    ctx = distributed.setup(train_cfg.device)
    threads = torch.get_num_threads()
    try:
        with ExitStack() as held:
            try:
                holder = held.enter_context(try_lock(run_lock(out_dir))) if ctx.is_main else None
                unwritable = None
            except OSError as e:  # a folder this user cannot write (a shared or read-only disk): fine when finished
                if run_lock(out_dir).is_dir():  # not the folder: what stands where its lock file belongs
                    raise StreamsError(f"{run_lock(out_dir)} is a folder where the run's lock file belongs: move "
                                       "it away and re-run") from None
                holder, unwritable = None, e
            if holder:
                raise StreamsError(f"{out_dir} is being written by another training run (pid {holder}): wait for "
                                   "it to finish, or train into another output folder (--run NAME)")
            if ctx.is_main and unwritable is None and out_dir.is_dir():
                # The half-written checkpoints of a run killed mid-write (hundreds of MB each for P3D-199):
                # the folder is ours now, so no live writer is among them.
                remove_dead_temps(out_dir)
            with opencv_single_thread():  # DataLoader workers are forked and use OpenCV
                return _train(data, modality, model_cfg, train_cfg, out_dir, ctx=ctx, config_toml=config_toml,
                              unwritable=unwritable)
    except RuntimeError as e:  # torch's SIGCHLD handler fires anywhere, also after _train has returned
        if not loaders.worker_died(e):
            raise
        raise loaders.worker_death_error(modality, out_dir, str(e).splitlines()[0]) from None
    finally:
        torch.set_num_threads(threads)
        distributed.teardown(ctx)


def _train(data: StreamData, modality: str, model_cfg: ModelConfig, cfg: TrainConfig, out_dir: Path, *,
           ctx: distributed.DistContext, config_toml: str, unwritable: OSError | None = None) -> TrainResult:
    """One run: find where it stands, build the model, optimizer and loaders, restore, then `fit`.
    `unwritable`: why the run's lock could not be made; a finished run is still reported, any other refused."""
    if cfg.batch_size % ctx.world_size:
        raise StreamsError(f"train.batch_size = {cfg.batch_size} is not divisible by the "
                           f"{ctx.world_size} processes")
    batch = cfg.batch_size // ctx.world_size
    steps_per_epoch = (len(data.train) // ctx.world_size) // batch
    if steps_per_epoch == 0:
        raise StreamsError(f"{len(data.train)} training videos make no batch of train.batch_size = "
                           f"{cfg.batch_size}")
    cuda = ctx.device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    if cfg.threads:  # checked here, not in the config: one written on a larger machine still loads
        torch.set_num_threads(local_threads(cfg.threads, "train.threads"))  # train_stream restores the caller's

    # 1. Where the run stands: finished (last.pt), resumable (a step checkpoint) or new.
    record = {"training_set": training_set_record(data.train), "flow": data.store.flow_settings}
    checkpoints = Checkpointer(out_dir, modality, ctx, keep=cfg.keep_checkpoints, lr=cfg.lr)
    finished, resume = checkpoints.find()
    if (found := finished or resume) is not None:
        check_resumable(found, modality=modality, classes=data.classes,
                        model_config=dataclasses.asdict(model_cfg), train_config=dataclasses.asdict(cfg),
                        training_set=record["training_set"], flow=record["flow"],
                        store=f"the store at {data.store.root}", verbose=ctx.is_main)
    if finished is not None:
        total = total_steps(cfg, steps_per_epoch)
        if finished.step != total:  # a step checkpoint copied onto last.pt was taken for the finished model
            raise StreamsError(f"{finished.path} holds step {finished.step} of {total}: not the finished model of "
                               f"this run (a step checkpoint copied onto it?): move it out of {out_dir} and re-run "
                               "to resume from the newest step checkpoint")
        if ctx.is_main:
            print(f"{modality} stream: already trained, {finished.path}")
        return TrainResult(out_dir, finished.path, True, finished.step, finished.epoch, finished.metrics.get("val_acc"),
                           finished.metrics.get("best_val_acc"), seconds=0.0, resumed_from=None)
    if unwritable is not None:
        raise StreamsError(f"{brief(out_dir)}: cannot write the run's folder ({unwritable.strerror or unwritable}): "
                           "train into a folder this user can write (work_dir, --run NAME)")

    # 2. The model, optimizer, schedule, scaler, record and data. What the weights started from is
    # kept in every checkpoint: taken once, at the start (the file was just read), carried over by a resume.
    # SyncBatchNorm's statistics pool every process's clips: the whole step's batch is what a BN sees
    seen = batch * ctx.world_size if cfg.sync_bn and ctx.world_size > 1 else batch
    check_clips_fit(model_cfg.arch, modality, seen, cfg.clip_len, cfg.crop, partial_bn=model_cfg.partial_bn)
    if cfg.decode == "cuda" and not cuda:  # it said "needs torchvision", which would not have helped
        raise StreamsError(f'train.decode = "cuda" decodes the training JPEGs with nvJPEG on a CUDA device, but '
                           f'this run trains on {ctx.device}: leave train.decode = "cpu" here')
    channels_last = cfg.channels_last and cuda
    model = build_stream(model_cfg, modality, data.classes, ctx, seed=cfg.seed, fresh=resume is None,
                         sync_bn=cfg.sync_bn, channels_last=channels_last)
    record["started_from"] = resume.state.get("started_from", {}) if resume is not None else started_from(model_cfg)
    optimizer = torch.optim.SGD(schedule.param_groups(model, modality, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                      fc_lr_mult=cfg.fc_lr_mult,
                                                      flow_conv1_lr_mult=cfg.flow_conv1_lr_mult),
                                lr=cfg.lr, momentum=cfg.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg, steps_per_epoch))
    amp_dtype = autocast_dtype(cfg.amp, ctx.device)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp_dtype == torch.float16)
    torch.manual_seed(cfg.seed * 1000 + ctx.rank + 1)  # dropout: a different stream per process
    run = Run(modality, list(data.classes), model_cfg, cfg, ctx, out_dir, batch, steps_per_epoch, model, optimizer,
              scheduler, scaler, amp_dtype, channels_last, record, checkpoints,
              MetricsLogger(out_dir, ctx.is_main, modality, model_cfg.arch, cfg.tensorboard))
    train_loader, sampler, val_loader = loaders.training_loaders(
        *clip_datasets(data.store, data.train, data.val, modality, cfg), ctx=ctx, batch=batch, workers=cfg.workers,
        seed=cfg.seed)

    # 3. Resume (states, RNG, the metrics logged up to the checkpoint) or start fresh.
    state = Progress()
    if resume is not None:
        restore_states(resume, model, optimizer, scheduler, scaler, ctx=ctx, seed=cfg.seed)
        run.checkpoints.last = resume.path
        run.metrics.resume_at(resume.step)
        state = Progress(resume.step, resume.epoch, resume.metrics.get("val_acc"), resume.metrics.get("best_val_acc"))
        if ctx.is_main:
            print(f"resuming {modality} stream from {resume.path} (step {resume.step}/{run.total_steps})")
    else:
        run.metrics.start_fresh()  # drop what a run killed before its first checkpoint logged
    run.net = DistributedDataParallel(model, device_ids=[ctx.device.index] if cuda else None) if ctx.distributed \
        else model
    if cfg.compile and cuda:  # on a CPU: minutes of compiling for a slower step (the config says CUDA only)
        run.net = torch.compile(run.net)

    # 4. Accepted: the run's config beside its checkpoints, then the loop.
    if config_toml and ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / CONFIG, config_toml)
    try:
        return fit(run, state, train_loader, sampler, val_loader, resume.path if resume is not None else None)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the workers stopped now, or their deaths (the same
        loaders.stop_workers([train_loader, val_loader])  # signal reached them) raised again in __del__
        raise
    except Exception as e:
        died = loaders.stop_on_dead_worker(e, [train_loader, val_loader], modality, out_dir)
        if died is None:
            raise
        raise died from None
    finally:
        run.metrics.close()


def check_clips_fit(arch: str, modality: str, batch: int, clip_len: int, crop: int, *,
                    partial_bn: bool = False) -> None:
    """StreamsError naming the settings when a training batch [batch, C, clip_len, crop, crop] cannot go
    through `arch`: a crop the stem's pooling shrinks to nothing (crop 1 or 2), or one BatchNorm value a
    channel (batch 1 of a small crop; with `partial_bn` only bn1 learns its statistics, and it sees
    many). Found on the meta device (shapes, no arithmetic, no random numbers drawn) before any work: it
    was a traceback from the first step."""
    channels = transforms.CHANNELS[modality]
    with torch.device("meta"):
        net = build_model(arch, 2, channels, partial_bn=partial_bn)
    try:
        net.train()(torch.empty(batch, channels, clip_len, crop, crop, device="meta"))
    except (RuntimeError, ValueError) as e:
        said = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StreamsError(f"train.crop = {crop} with {batch} clip(s) of {clip_len} frames a step (train.batch_size) "
                           f"is too small for {arch} ({brief(said, 120)}): raise train.crop (and train.resize) or "
                           "train.batch_size") from None


def fit(run: Run, state: Progress, train_loader: DataLoader, sampler: EpochSampler,
        val_loader: DataLoader | None, resumed_from: Path | None) -> TrainResult:
    """The loop: epochs of `train_one_epoch`, each followed by `evaluate` and a checkpoint; last.pt at the end."""
    started = time.perf_counter()
    cfg, ctx, out_dir = run.cfg, run.ctx, run.out_dir
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
                if not math.isfinite(scores["val_loss"]):  # weights finite but ~1e34: the run diverged
                    raise StreamsError(f"{run.modality} stream: the validation loss is not finite after epoch "
                                       f"{state.epoch} (step {state.step}): the run diverged; stopped and "
                                       f"{run.checkpoints.kept()}. Lower train.lr (now {cfg.lr}) and train again "
                                       "in a fresh output directory")
            save_step_checkpoint(run, state)
            if ctx.is_main:
                run.metrics.plot()
    finally:
        bar.close()

    finished = state.step >= run.total_steps
    checkpoint = out_dir / LAST
    if not finished:  # stopped by max_steps
        if run.checkpoints.last != step_path(out_dir, state.step):
            save_step_checkpoint(run, state)
        checkpoint = run.checkpoints.last
        if ctx.is_main:  # it stopped in silence: where, and how to go on
            print(f"{run.modality} stream: stopped at step {state.step} of {run.total_steps} (train.max_steps = "
                  f"{cfg.max_steps}); checkpoint {checkpoint}: re-run without max_steps (or a larger one) to "
                  "continue")
    else:
        run.checkpoints.check_weights(run.model, state.step)
        if ctx.is_main:
            save_checkpoint(checkpoint, _payload(run, state, training=False))
            run.metrics.plot()
            acc = "n/a" if state.val_acc is None else f"{100 * state.val_acc:.1f}%"
            print(f"{run.modality} stream: {state.epoch} epochs ({state.step} steps) in "
                  f"{time.perf_counter() - started:.0f} s, val clip accuracy {acc}; model in {checkpoint}")
        distributed.barrier(ctx)
    return TrainResult(out_dir=out_dir, checkpoint=checkpoint, finished=finished, step=state.step,
                       epoch=state.epoch, val_acc=state.val_acc, best_val_acc=state.best_val_acc,
                       seconds=time.perf_counter() - started, resumed_from=resumed_from)


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
    for clips, labels in loaders.read_batches(loader, run.out_dir):
        run.meter.data_wait += time.perf_counter() - waited
        run.meter.pending.append(train_step(run.net, run.optimizer, run.scaler, clips, labels, run.modality,
                                            device=run.ctx.device, amp_dtype=run.amp_dtype,
                                            channels_last=run.channels_last))
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
    scores, video_labels = [], []
    bar = progress_bar(loaders.read_batches(loader, run.out_dir), total=len(loader), desc=f"val {run.modality}",
                       unit="batch", leave=False, disable=not (run.cfg.progress and run.ctx.is_main))
    for clips, labels in bar:
        x = _inputs(clips, run.modality, run.ctx.device, run.channels_last)
        labels = labels.to(run.ctx.device)
        with torch.autocast(run.ctx.device.type, dtype=run.amp_dtype or torch.float32,
                            enabled=run.amp_dtype is not None):
            logits = run.model(x).float()
        loss_sum += float(losses.clip_loss(logits, labels, reduction="sum"))
        clip_correct += float(losses.clip_hits(logits, labels).sum())
        clip_count += len(labels)
        scores.append(logits.softmax(1).cpu())
        video_labels.append(labels.cpu())
    if scores:  # a process's subset holds whole videos, k consecutive clips each
        probs = torch.cat(scores).view(-1, run.cfg.val_clips, len(run.classes)).mean(1)
        truth = torch.cat(video_labels)[::run.cfg.val_clips]  # each video's first clip: [V] or [V, L]
        video_correct, video_count = float(losses.clip_hits(probs, truth).sum()), float(len(truth))
    clip_correct, clip_count, video_correct, video_count, loss_sum = distributed.all_reduce_sum(
        [clip_correct, clip_count, video_correct, video_count, loss_sum], run.ctx)
    run.net.train()
    return {"val_acc": clip_correct / clip_count, "val_video_acc": video_correct / video_count,
            "val_loss": loss_sum / clip_count}


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               clips: torch.Tensor, labels: torch.Tensor, modality: str, *, device: torch.device,
               amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch of uint8 clips [B, C, T, H, W]; returns (loss, correct) without a device sync."""
    x = _inputs(clips, modality, device, channels_last)
    labels = labels.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = net(x)
    loss = losses.clip_loss(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), losses.clip_hits(logits, labels).sum()


def _inputs(clips: torch.Tensor, modality: str, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A uint8 batch as the net's input on `device`: normalised, in the memory format the net uses."""
    x = transforms.normalize(clips.to(device, non_blocking=True), modality)
    return x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x


def log_training(run: Run, state: Progress, bar: tqdm | None = None) -> None:
    """Check and log the steps since the last log line: StreamsError when a loss is not finite."""
    if not run.meter.pending:
        return
    first_bad, record = run.meter.take(state.step, run.ctx, steps_per_epoch=run.steps_per_epoch,
                                       batch_size=run.cfg.batch_size, lr=run.optimizer.param_groups[0]["lr"])
    if math.isfinite(first_bad):
        raise StreamsError(f"{run.modality} stream: the training loss is not finite at step {int(first_bad) + 1} "
                           f"(epoch {int(first_bad) // run.steps_per_epoch + 1}); stopped and "
                           f"{run.checkpoints.kept()}. Lower train.lr (now {run.cfg.lr}) or check the data, and "
                           "train again in a fresh output directory")
    if bar is not None:
        bar.set_postfix(loss=f"{record['loss']:.3f}", clips_s=f"{record['clips_per_s']:.1f}")
    run.metrics.log(record)


def save_step_checkpoint(run: Run, state: Progress) -> None:
    """checkpoint_<step>.pt with everything a resume needs; the steps logged so far go first."""
    log_training(run, state)
    run.checkpoints.check_weights(run.model, state.step)
    run.checkpoints.save_step(state.step, _payload(run, state, training=True))


def _payload(run: Run, state: Progress, training: bool) -> dict[str, Any]:
    """A checkpoint's contents; `training`: with the states a resume needs (every process takes part)."""
    extra = training_state(run.optimizer, run.scheduler, run.scaler, run.ctx) if training else {}
    return make_payload(run.model, arch=run.model_cfg.arch, modality=run.modality, classes=run.classes,
                        input_convention=transforms.INPUT_CONVENTION[run.modality],
                        model_config=dataclasses.asdict(run.model_cfg), train_config=dataclasses.asdict(run.cfg),
                        step=state.step, epoch=state.epoch,
                        metrics={"val_acc": state.val_acc, "best_val_acc": state.best_val_acc}, **run.record, **extra)


def clip_datasets(store: Store, train: list[tuple[str, int]], val: list[tuple[str, int]], modality: str,
                  cfg: TrainConfig) -> tuple[ClipDataset, ClipDataset | None]:
    """The training clips (random, augmented) and the validation clips (`val_clips` centre crops a video)."""
    clip = dict(clip_len=cfg.clip_len, resize=cfg.resize, crop=cfg.crop, scale_jitter=cfg.scale_jitter)
    train_set = ClipDataset(store, train, modality, train=True, flip=cfg.flip, seed=cfg.seed,
                            fast_decode=cfg.fast_decode, decode=cfg.decode, **clip)
    return train_set, ClipDataset(store, val, modality, train=False, clips_per_video=cfg.val_clips, **clip) if val \
        else None


def lr_schedule(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The multiplier of the base rates at each step (streams.schedule.lr_factor), counted in epochs, or
    in steps under train.iterations (then lr_steps are steps)."""
    unit, length = (1, cfg.iterations) if cfg.iterations else (steps_per_epoch, cfg.epochs)
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    if cfg.iterations and warmup_steps > cfg.iterations:  # TrainConfig checks it against epochs; steps need the data
        raise StreamsError(f"train.warmup_epochs = {cfg.warmup_epochs:g} is {warmup_steps} steps here, more than "
                           f"train.iterations = {cfg.iterations}: the run would end in its warm-up, never at train.lr")
    return lambda step: schedule.lr_factor(step, steps_per_unit=unit, length=length, schedule=cfg.schedule,
                                           milestones=cfg.lr_steps, gamma=cfg.lr_gamma, warmup_steps=warmup_steps)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `train.amp` on `device`: AMP on CUDA only, None (float32) elsewhere."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if device.type == "cuda" else None
