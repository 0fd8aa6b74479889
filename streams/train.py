"""Training one stream: `train_stream`, the stage behind `make train-rgb` and `make train-flow`.

SGD with momentum, step or cosine schedule with linear warm-up, AMP and channels_last_3d on CUDA,
optional torch.compile, DDP under torchrun. Checkpoints (every `checkpoint_every` steps and at each
epoch end) hold everything a resumed run needs to continue exactly as if it had never stopped: the
sampler order and every clip's augmentation depend only on (seed, epoch, index), and the model,
optimizer, scheduler, scaler and RNG states are restored. Outputs in `out_dir`: checkpoint_*.pt,
last.pt (the finished model), metrics.jsonl, curves.png.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from flow.atomic import write_text
from flow.errors import FlowError
from flow.store import Store, open_store
from streams import distributed, transforms
from streams.checkpoint import (LAST, make_payload, nonfinite_tensors, read_checkpoint, save_checkpoint,
                                step_checkpoints, step_path)
from streams.clips import ClipDataset, EpochSampler
from streams.config import ModelConfig, TrainConfig
from streams.errors import StreamsError
from streams.inflate import load_pretrained
from streams.p3d import P3D, build_model
from streams.plots import plot_curves

METRICS = "metrics.jsonl"
CURVES = "curves.png"
# Settings that change how a run executes but not what it computes: a resumed run may change them.
RUNTIME_FIELDS = {"workers", "threads", "device", "checkpoint_every", "keep_checkpoints", "log_every", "progress",
                  "max_steps", "compile"}
RUNTIME_MODEL_FIELDS = {"pretrained"}  # only read at step 0


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
            return _Run(store, train_items, val_items, classes, modality, model_cfg, train_cfg,
                        Path(out_dir), ctx).run(on_start)
        finally:
            torch.set_num_threads(threads)
            distributed.teardown(ctx)
    except RuntimeError as e:  # torch's SIGCHLD handler fires anywhere, also after _Run.run has returned
        if not _worker_died(e):
            raise
        raise worker_death_error(modality, Path(out_dir), str(e).splitlines()[0]) from None


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
    cv2.setNumThreads(1)  # workers are processes already; cv2's own threads would oversubscribe
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


def config_differences(old: dict[str, Any], new: dict[str, Any], section: str, ignore: set[str]) -> list[str]:
    return [f"{section}.{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} now"
            for k in sorted(set(old) | set(new)) if k not in ignore and old.get(k) != new.get(k)]


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


class _Run:
    def __init__(self, store: Store, train_items, val_items, classes, modality: str, model_cfg: ModelConfig,
                 cfg: TrainConfig, out_dir: Path, ctx: distributed.DistContext):
        self.store, self.classes, self.modality = store, list(classes), modality
        self.training_set = training_set_record(train_items)
        self.model_cfg, self.cfg, self.out_dir, self.ctx = model_cfg, cfg, out_dir, ctx
        self.device = ctx.device
        self.cuda = self.device.type == "cuda"
        if cfg.batch_size % ctx.world_size:
            raise StreamsError(f"train.batch_size = {cfg.batch_size} is not divisible by the "
                               f"{ctx.world_size} processes")
        self.batch = cfg.batch_size // ctx.world_size
        self.steps_per_epoch = (len(train_items) // ctx.world_size) // self.batch
        if self.steps_per_epoch == 0:
            raise StreamsError(f"{len(train_items)} training videos make no batch of train.batch_size = "
                               f"{cfg.batch_size}")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp) if self.cuda else None
        self.channels_last = cfg.channels_last and self.cuda
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        if cfg.threads:
            torch.set_num_threads(cfg.threads)  # train_stream restores the caller's setting

        self.step = 0
        self.epoch = 0
        self.best_val_acc: float | None = None
        self.val_acc: float | None = None
        self.history: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = None
        self.resumed_from: Path | None = None
        self.finished: Path | None = None
        resume = self._find_checkpoint()

        torch.manual_seed(cfg.seed)  # the same initial weights in every process
        channels = transforms.CHANNELS[modality]
        self.model = build_model(model_cfg.arch, len(classes), channels, model_cfg.dropout(modality))
        if model_cfg.pretrained and resume is None and self.finished is None:
            load_pretrained(self.model, model_cfg.pretrained, model_cfg.pretrained_input)
        self.model.set_partial_bn(model_cfg.partial_bn)
        if ctx.distributed and cfg.sync_bn:
            distributed.sync_batchnorm(self.model, self.device)
        self.model.to(self.device)
        if self.channels_last:
            to_channels_last(self.model)
        self.optimizer = torch.optim.SGD(param_groups(self.model, cfg, modality), lr=cfg.lr, momentum=cfg.momentum)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.steps_per_epoch, cfg))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        torch.manual_seed(cfg.seed * 1000 + ctx.rank + 1)  # dropout: a different stream per process

        self.train_set = ClipDataset(store, train_items, modality, cfg.clip_len, train=True, resize=cfg.resize,
                                     crop=cfg.crop, scale_jitter=cfg.scale_jitter, flip=cfg.flip, seed=cfg.seed)
        self.sampler = EpochSampler(len(self.train_set), ctx.rank, ctx.world_size, cfg.seed)
        self.train_loader = self._loader(self.train_set, sampler=self.sampler, drop_last=True)
        self.val_loader = None
        if val_items:
            val_set = ClipDataset(store, val_items, modality, cfg.clip_len, train=False, resize=cfg.resize,
                                  crop=cfg.crop, scale_jitter=cfg.scale_jitter, clips_per_video=cfg.val_clips)
            # Whole videos per process, so that a video's clips are scored together.
            mine = [i for v in range(ctx.rank, len(val_items), ctx.world_size)
                    for i in range(v * cfg.val_clips, (v + 1) * cfg.val_clips)]
            self.val_loader = self._loader(Subset(val_set, mine), shuffle=False)

        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._interval_start = time.perf_counter()
        self._interval_data = 0.0
        if resume is not None:
            self._restore(resume)
        elif self.finished is None and self.ctx.is_main and (self.out_dir / METRICS).exists():
            (self.out_dir / METRICS).unlink()  # logged by a run killed before its first checkpoint

        self.net: nn.Module = self.model
        if ctx.distributed:
            self.net = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.cuda else None)
        if cfg.compile:
            self.net = torch.compile(self.net)

    def _loader(self, dataset, *, sampler=None, shuffle=False, drop_last=False) -> DataLoader:
        workers = self.cfg.workers
        return DataLoader(dataset, batch_size=self.batch, sampler=sampler, shuffle=shuffle, drop_last=drop_last,
                          num_workers=workers, pin_memory=self.cuda, persistent_workers=workers > 0,
                          prefetch_factor=4 if workers > 0 else None, worker_init_fn=_worker_init,
                          # its own generator: making an iterator must not draw from the global RNG
                          generator=torch.Generator().manual_seed(self.cfg.seed))

    # ---- resuming -------------------------------------------------------------------------------
    def _configs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return dataclasses.asdict(self.model_cfg), dataclasses.asdict(self.cfg)

    def _check_compatible(self, ckpt) -> None:
        model_cfg, train_cfg = self._configs()
        diffs = (config_differences(ckpt.model_config, model_cfg, "model", RUNTIME_MODEL_FIELDS)
                 + config_differences(ckpt.train_config, train_cfg, "train", RUNTIME_FIELDS))
        if ckpt.modality != self.modality:
            diffs.append(f"modality: {ckpt.modality} in the checkpoint, {self.modality} now")
        if ckpt.classes != self.classes:
            diffs.append("the classes differ")
        stored = ckpt.state.get("training_set")  # absent in checkpoints written before it was stored
        change = training_set_change(stored, self.training_set) if isinstance(stored, dict) else None
        if change:
            diffs.append(f"the training list changed: {change}")
        if diffs:
            raise StreamsError(f"{ckpt.path} was trained with other settings ({'; '.join(diffs)}): use another "
                               f"output directory, or the same settings to continue it")

    def _find_checkpoint(self):
        """The newest readable step checkpoint to resume from, or None (also when finished: see self.finished)."""
        last = self.out_dir / LAST
        if last.is_file():  # finished already: nothing to restore but the summary
            ckpt = read_checkpoint(last)
            self._check_compatible(ckpt)
            self.step, self.epoch = ckpt.step, ckpt.epoch
            self.val_acc, self.best_val_acc = ckpt.metrics.get("val_acc"), ckpt.metrics.get("best_val_acc")
            self.finished = last
            return None
        for _, path in reversed(step_checkpoints(self.out_dir)):
            try:
                ckpt = read_checkpoint(path)
            except StreamsError as e:
                if self.ctx.is_main:
                    print(f"warning: {e}; trying an older checkpoint")
                continue
            self._check_compatible(ckpt)
            return ckpt
        return None

    def _restore(self, ckpt) -> None:
        state = ckpt.state
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state.get("rng", [])
        if len(rng) == self.ctx.world_size:
            torch.set_rng_state(rng[self.ctx.rank]["torch"])
            if self.cuda and rng[self.ctx.rank].get("cuda") is not None:
                torch.cuda.set_rng_state(rng[self.ctx.rank]["cuda"], self.device)
        else:
            torch.manual_seed(self.cfg.seed * 1000 + self.ctx.rank + 1 + ckpt.step)
            if self.ctx.is_main:
                print(f"note: {ckpt.path} was written by {len(rng)} process(es), this run has "
                      f"{self.ctx.world_size}: dropout draws differ from an uninterrupted run")
        self.step, self.epoch = ckpt.step, ckpt.epoch
        self.best_val_acc = ckpt.metrics.get("best_val_acc")
        self.val_acc = ckpt.metrics.get("val_acc")
        self.last_checkpoint = self.resumed_from = ckpt.path
        self.history = self._read_history()
        if self.ctx.is_main:
            self._write_history()  # drop what was logged after the checkpoint
            print(f"resuming {self.modality} stream from {ckpt.path} (step {ckpt.step}/{self.total_steps})")

    def _read_history(self) -> list[dict[str, Any]]:
        path = self.out_dir / METRICS
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if isinstance(record, dict) and record.get("step", math.inf) <= self.step:
                records.append(record)
        return records

    def _write_history(self) -> None:
        path = self.out_dir / METRICS
        write_text(path, "".join(json.dumps(r) + "\n" for r in self.history))

    # ---- the loop -------------------------------------------------------------------------------
    def run(self, on_start: Callable[[], None] | None = None) -> TrainResult:
        try:
            if on_start is not None and self.finished is None:
                on_start()
            return self._run()
        except Exception as e:
            # A dead worker shows as torch's RuntimeError, or as whatever the half-sent batch broke
            # (ConnectionResetError when it died passing a tensor's file descriptor).
            died = str(e).splitlines()[0] if _worker_died(e) else self._dead_worker(
                wait=2.0 if isinstance(e, (OSError, EOFError)) else 0.0)
            if died is None:
                raise
            self._stop_workers()  # else every later SIGCHLD raises torch's error again, anywhere
            raise worker_death_error(self.modality, self.out_dir, died) from None

    def _iterators(self) -> list[Any]:
        # a persistent-workers loader keeps its iterator (and its worker processes) in `_iterator`
        return [it for loader in (self.train_loader, self.val_loader)
                if (it := getattr(loader, "_iterator", None)) is not None and hasattr(it, "_workers")]

    def _dead_worker(self, wait: float = 0.0) -> str | None:
        """What ended a worker that exited with an error, or None. `wait`: seconds to give a worker
        whose pipe broke (the error reached us before the exit status)."""
        deadline = time.monotonic() + wait
        while True:
            for iterator in self._iterators():
                for w in iterator._workers:
                    if w.exitcode:  # None while alive, 0 after a clean exit
                        how = (f"is killed by signal: {signal.Signals(-w.exitcode).name}" if w.exitcode < 0
                               else f"exited with code {w.exitcode}")
                        return f"DataLoader worker (pid {w.pid}) {how}"
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def _stop_workers(self) -> None:
        for iterator in self._iterators():
            try:
                iterator._shutdown_workers()
            except RuntimeError as e:  # the SIGCHLD handler firing during the shutdown itself
                if not _worker_died(e):
                    raise

    def _run(self) -> TrainResult:
        started = time.perf_counter()
        last = self.out_dir / LAST
        if self.finished is not None:
            if self.ctx.is_main:
                print(f"{self.modality} stream: already trained, {last}")
            return self._result(last, True, started)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        limit = self.total_steps if not self.cfg.max_steps else min(self.total_steps, self.cfg.max_steps)
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.modality}", unit="step",
                   disable=not (self.cfg.progress and self.ctx.is_main), dynamic_ncols=True)
        try:
            while self.step < limit:
                self._train_epoch(limit, bar)
        finally:
            bar.close()
        if self.step < self.total_steps:  # stopped by max_steps
            if self.last_checkpoint is None or self.last_checkpoint != step_path(self.out_dir, self.step):
                self._checkpoint()
            return self._result(self.last_checkpoint, False, started)
        self._check_weights()
        if self.ctx.is_main:
            payload = self._payload(training_state=False)
            save_checkpoint(last, payload)
            plot_curves(self.history, self.out_dir / CURVES, f"{self.modality} stream ({self.model_cfg.arch})")
            acc = "n/a" if self.val_acc is None else f"{100 * self.val_acc:.1f}%"
            print(f"{self.modality} stream: {self.epoch} epochs ({self.step} steps) in "
                  f"{time.perf_counter() - started:.0f} s, val clip accuracy {acc}; model in {last}")
        distributed.barrier(self.ctx)
        return self._result(last, True, started)

    def _train_epoch(self, limit: int, bar: tqdm) -> None:
        epoch, position = divmod(self.step, self.steps_per_epoch)
        self.sampler.set_epoch(epoch, skip=position * self.batch)
        self.net.train()
        self._interval_start, self._interval_data = time.perf_counter(), 0.0
        waited = time.perf_counter()
        for clips, labels in self.train_loader:
            self._interval_data += time.perf_counter() - waited
            self._train_step(clips, labels)
            self.step += 1
            bar.update(1)
            if self.step % self.cfg.log_every == 0:
                self._flush(bar)
            end_of_epoch = self.step % self.steps_per_epoch == 0
            if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0 and not end_of_epoch:
                self._checkpoint()
            if self.step >= limit and not end_of_epoch:
                self._flush(bar)
                return
            waited = time.perf_counter()
        self._flush(bar)
        self.epoch = epoch + 1
        self._validate()
        self._checkpoint()
        if self.ctx.is_main:
            plot_curves(self.history, self.out_dir / CURVES, f"{self.modality} stream ({self.model_cfg.arch})")

    def _train_step(self, clips: torch.Tensor, labels: torch.Tensor) -> None:
        self._pending.append(train_step(self.net, self.optimizer, self.scaler, clips, labels, self.modality,
                                        self.device, self.amp_dtype, self.channels_last))
        self.scheduler.step()

    def _flush(self, bar: tqdm) -> None:
        """Check and log the losses since the last flush (one device sync per `log_every` steps)."""
        if not self._pending:
            return
        losses = torch.stack([loss for loss, _ in self._pending]).double().cpu()
        correct = float(torch.stack([c for _, c in self._pending]).sum().cpu())
        n = len(self._pending)
        self._pending = []
        bad = [i for i, v in enumerate(losses.tolist()) if not math.isfinite(v)]
        first_bad_step = self.step - n + bad[0] if bad else math.inf
        first_bad_step = distributed.all_reduce_min(first_bad_step, self.ctx)
        if math.isfinite(first_bad_step):
            raise StreamsError(f"{self.modality} stream: the training loss is not finite at step "
                               f"{int(first_bad_step) + 1} (epoch {int(first_bad_step) // self.steps_per_epoch + 1}); "
                               f"stopped and {self._kept()}. Lower train.lr (now {self.cfg.lr}) or check the data, "
                               f"and train again in a fresh output directory")
        totals = distributed.all_reduce_sum([float(losses.sum()), correct], self.ctx)
        seconds = time.perf_counter() - self._interval_start
        clips = n * self.cfg.batch_size
        record = {"kind": "train", "step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
                  "loss": totals[0] / (n * self.ctx.world_size), "acc": totals[1] / clips,
                  "lr": self.optimizer.param_groups[0]["lr"], "clips_per_s": clips / max(seconds, 1e-9),
                  "data_wait": self._interval_data / max(seconds, 1e-9)}
        self._interval_start, self._interval_data = time.perf_counter(), 0.0
        bar.set_postfix(loss=f"{record['loss']:.3f}", clips_s=f"{record['clips_per_s']:.1f}")
        self._log(record)

    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    @torch.no_grad()
    def _validate(self) -> None:
        if self.val_loader is None:
            return
        self.model.eval()
        clip_correct = clip_count = video_correct = video_count = loss_sum = 0.0
        k = self.cfg.val_clips
        scores, video_labels = [], []
        for clips, labels in self.val_loader:
            x = transforms.normalize(clips.to(self.device, non_blocking=True), self.modality)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            labels = labels.to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                logits = self.model(x).float()
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            clip_correct += float((logits.argmax(1) == labels).sum())
            clip_count += len(labels)
            scores.append(logits.softmax(1).cpu())
            video_labels.append(labels.cpu())
        if scores:  # a process's subset holds whole videos, k consecutive clips each
            probs = torch.cat(scores).view(-1, k, len(self.classes)).mean(1)
            truth = torch.cat(video_labels).view(-1, k)[:, 0]
            video_correct, video_count = float((probs.argmax(1) == truth).sum()), float(len(truth))
        clip_correct, clip_count, video_correct, video_count, loss_sum = distributed.all_reduce_sum(
            [clip_correct, clip_count, video_correct, video_count, loss_sum], self.ctx)
        self.val_acc = clip_correct / clip_count
        self.best_val_acc = max(self.best_val_acc or 0.0, self.val_acc)
        self._log({"kind": "val", "step": self.step, "epoch": self.epoch, "val_acc": self.val_acc,
                   "val_video_acc": video_correct / video_count, "val_loss": loss_sum / clip_count})
        self.net.train()

    # ---- checkpoints ----------------------------------------------------------------------------
    def _payload(self, training_state: bool) -> dict[str, Any]:
        model_cfg, train_cfg = self._configs()
        metrics = {"val_acc": self.val_acc, "best_val_acc": self.best_val_acc}
        extra: dict[str, Any] = {}
        if training_state:
            rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(self.device) if self.cuda else None}
            extra = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict(), "rng": distributed.all_gather_object(rng, self.ctx),
                     "world_size": self.ctx.world_size}
        return make_payload(self.model, arch=self.model_cfg.arch, modality=self.modality, classes=self.classes,
                            input_convention=transforms.INPUT_CONVENTION[self.modality], model_config=model_cfg,
                            train_config=train_cfg, step=self.step, epoch=self.epoch, metrics=metrics,
                            training_set=self.training_set, **extra)

    def _kept(self) -> str:
        if self.last_checkpoint and self.last_checkpoint.name != LAST:
            return f"kept checkpoint {self.last_checkpoint} (step {int(self.last_checkpoint.stem.split('_')[-1])})"
        return "no checkpoint had been written"

    def _check_weights(self) -> None:
        """Before a checkpoint is written: weights and BatchNorm statistics must be finite (a loss can
        stay finite in train mode while the running statistics are already inf)."""
        bad = nonfinite_tensors(self.model.state_dict())
        if bad:
            raise StreamsError(f"{self.modality} stream: the weights are not finite at step {self.step} "
                               f"({len(bad)} tensor(s) with inf/NaN, e.g. {', '.join(bad[:3])}); stopped and "
                               f"{self._kept()}. Lower train.lr (now {self.cfg.lr}) and train again in a "
                               f"fresh output directory")

    def _checkpoint(self) -> None:
        self._flush_quietly()
        self._check_weights()
        payload = self._payload(training_state=True)  # every process takes part (RNG states)
        path = step_path(self.out_dir, self.step)
        if self.ctx.is_main:
            save_checkpoint(path, payload)
            for _, old in step_checkpoints(self.out_dir)[:-self.cfg.keep_checkpoints]:
                old.unlink(missing_ok=True)
        self.last_checkpoint = path
        distributed.barrier(self.ctx)

    def _flush_quietly(self) -> None:
        if self._pending:
            self._flush(_NullBar())

    def _result(self, checkpoint: Path, finished: bool, started: float) -> TrainResult:
        return TrainResult(out_dir=self.out_dir, checkpoint=checkpoint, finished=finished, step=self.step,
                           epoch=self.epoch, val_acc=self.val_acc, best_val_acc=self.best_val_acc,
                           seconds=time.perf_counter() - started, resumed_from=self.resumed_from)


class _NullBar:
    def set_postfix(self, **_: Any) -> None:
        pass
