"""What a stream trains on (`StreamData`), the training run's DataLoaders, and what happens when
their workers fail.

Workers are forked processes with one thread each that die with the trainer (Linux: the kernel sends
them SIGKILL when it dies, kill -9 included, instead of torch's watchdog noticing seconds later).

A worker that dies (the OOM killer's SIGKILL) stops the run with one line naming the checkpoint to
resume from, rather than a rebuilt loader: torch reports a dead worker from its SIGCHLD handler, which
may interrupt an optimizer step half-way, and resuming is exact (the data order depends only on seed,
epoch and index). A worker that fails on a video (a damaged pack) stops it with one line too: torch
re-raises the worker's error with its whole traceback in the message, which `read_batches` cuts back
to the error's own line, naming the video, and the checkpoint to resume from once the store is repaired.
"""
from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from flow.store import Store
from p3dbase.cluster import die_with, local_processes, open_files_for, requested_stop
from p3dbase.errors import P3DError, shown
from streams import gpu_decode, losses
from streams.clips import ClipDataset, EpochSampler
from streams.distributed import DistContext
from streams.errors import StreamsError
from streams.resume import resume_hint


@dataclass
class StreamData:
    """What a stream trains on: the store (opened once by the caller), the (video_id, label) lists of
    training and validation videos, and the class names the labels index."""
    store: Store
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    classes: list[str]

    def check(self) -> None:
        """StreamsError naming a video the store lacks or a label outside the classes."""
        if not self.train:
            raise StreamsError("no training videos")
        for what, items in (("training", self.train), ("validation", self.val)):
            missing = [v for v, _ in items if not self.store.has(v)]
            if missing:
                raise StreamsError(f"{len(missing)} {what} video(s) are not in the store at {self.store.root}, "
                                   f"e.g. {', '.join(missing[:3])}")
            labels = losses.labels_outside([label for _, label in items], len(self.classes))
            if labels:
                raise StreamsError(f"{what} label {labels[0]} is outside the {len(self.classes)} classes")


# Seconds the trainer waits for a batch from its workers before it says so: a batch takes well under a
# second, but one a stuck worker never sends (its queue thread failed on EMFILE, a hung disk) was waited
# for for ever.
BATCH_TIMEOUT_S = 600.0


def make_loader(dataset: Dataset, *, batch: int, workers: int, seed: int, pin_memory: bool, sampler: Any = None,
                drop_last: bool = False) -> DataLoader:
    """A loader of `batch` items with `workers` persistent workers (0: in this process)."""
    return DataLoader(dataset, batch_size=batch, sampler=sampler, shuffle=False, drop_last=drop_last,
                      collate_fn=gpu_decode.collate,  # torch's, or JPEG / coefficient batches (train.decode)
                      num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None, timeout=BATCH_TIMEOUT_S if workers > 0 else 0,
                      worker_init_fn=functools.partial(worker_init, parent=os.getpid()),
                      # its own generator: making an iterator must not draw from the global RNG
                      generator=torch.Generator().manual_seed(seed))


def worker_init(_: int, parent: int | None = None) -> None:
    """In each worker: one thread (workers are processes already), and death with the `parent` process.
    (OpenCV's single thread is inherited from train_stream: cv2.setNumThreads after the fork can
    deadlock, see flow.video.opencv_single_thread.)"""
    torch.set_num_threads(1)
    if parent is not None:
        die_with(parent)
    keep_freed_memory()


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def keep_freed_memory() -> None:
    """glibc only: keep freed memory for the next allocation instead of handing it back to the kernel.
    A worker allocates a batch of clips (16 x 1.2 MB at 16x160x160 RGB) and frees it after the collate;
    glibc gave those pages back and faulted them in again for the next batch, ~100 faults and ~0.4 ms
    per clip (bench/loader.py). The cost: a worker keeps what it freed, up to 128 MB (a batch: 20 MB here)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # musl and others have other allocators
        return
    libc.mallopt(M_TRIM_THRESHOLD, 128 << 20)
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest: blocks up to 32 MB come from the kept heap


def read_batches(loader: Iterable[Any], out_dir: Path) -> Iterator[Any]:
    """The loader's batches; an error of ours raised while reading one (in a worker or here) goes on
    as one line (torch's worker traceback cut off) that says how to resume (see the module doc)."""
    if (stop := requested_stop()) is not None:  # its exception lost in a finalizer: the next epoch's
        raise stop  # iter() waited 10 minutes on workers the same signal had killed
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except P3DError as e:
            e.args = (f"{worker_message(str(e))}; once the store is repaired, {resume_hint(out_dir)}",)
            raise e.with_traceback(None) from None
        yield batch


def worker_message(text: str) -> str:
    """The error's own line out of torch's "Caught X in DataLoader worker process N. Original Traceback
    ..." message (the last line, "package.module.X: message"); other messages unchanged."""
    if "in DataLoader worker process" not in text:
        return text
    last = next((line for line in reversed(text.splitlines()) if line.strip()), text)
    name, sep, message = last.partition(": ")
    return message if sep and " " not in name else last


def stop_on_dead_worker(err: BaseException, loaders: list[DataLoader | None], modality: str,
                        out_dir: Path) -> StreamsError | None:
    """The one-line error for a worker that died, if that is what `err` is (torch's RuntimeError, or
    whatever the half-sent batch broke: ConnectionResetError when it died passing a tensor's file
    descriptor); the remaining workers are stopped. None when no worker died."""
    if isinstance(err, RuntimeError) and "DataLoader timed out" in str(err):
        stop_workers(loaders)
        return StreamsError(f"{modality} stream: no batch from the data loader workers in {BATCH_TIMEOUT_S:g} s (a "
                            "worker is stuck: too few open files (`ulimit -n`) or too little memory, or the store's "
                            f"disk hangs); {resume_hint(out_dir)}")
    died = str(err).splitlines()[0] if worker_died(err) else _dead_worker(
        loaders, wait=2.0 if isinstance(err, (OSError, EOFError)) else 0.0)
    if died is None:
        return None
    stop_workers(loaders)  # else every later SIGCHLD raises torch's error again, anywhere
    if died.rstrip(". ").endswith(USER_STOPS):
        # SIGTERM or SIGINT to the whole process group (scancel, docker stop, Ctrl-C): the worker's death
        # was seen first. This process's own signal has come (noted: its exception may have been lost on
        # the way) or is on its way (its handler raises during the wait): the run stops as a stop, not
        # as an out-of-memory kill.
        deadline = time.monotonic() + SIGNAL_WAIT_S
        while (stop := requested_stop()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if stop is not None:
            raise stop from None
        return StreamsError(f"{modality} stream: a data loader worker was stopped by a signal sent to it "
                            f"({died.rstrip('. ')}); {resume_hint(out_dir)}")
    return worker_death_error(modality, out_dir, died)


USER_STOPS = ("signal: Terminated", "signal: Interrupt", "signal: SIGTERM", "signal: SIGINT")  # torch's, ours
SIGNAL_WAIT_S = 1.0  # the process group's signal reaches this process within it


def worker_died(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and "DataLoader worker" in str(err)  # "... (pid N) is killed by signal"


def worker_death_error(modality: str, out_dir: Path, what: str) -> StreamsError:
    return StreamsError(f"{modality} stream: a data loader worker died ({what.rstrip('. ')}; the system kills "
                        f"workers that run out of memory: lower train.workers or train.batch_size); "
                        f"{resume_hint(out_dir)}")


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


def stop_workers(loaders: list[DataLoader | None]) -> None:
    """Shut the loaders' workers down (what torch's iterator does when it is collected, there raising
    again for each worker already dead)."""
    for iterator in _loader_iterators(loaders):
        try:
            iterator._shutdown_workers()
        except RuntimeError as e:  # the SIGCHLD handler firing during the shutdown itself
            if not worker_died(e):
                raise


def training_loaders(train_set: ClipDataset, val_set: ClipDataset | None, *, ctx: DistContext, batch: int,
                     workers: int, seed: int) -> tuple[DataLoader, EpochSampler, DataLoader | None]:
    """(training loader, its sampler, validation loader or None) of this process: `batch` clips a step,
    `workers` processes each, the training order from `seed`."""
    if workers:  # 0: in this process
        # a thousand DataLoader workers: the OOM killer, not an error
        local_processes(workers, "train.workers", zero="none (loading in the trainer's process)")
        # one worker is a process too (local_processes counts 1 as the calling process): short of open
        # files its queue thread fails on EMFILE and training waits for its batch for ever
        open_files_for(workers, f"train.workers = {workers}")
    common = dict(batch=batch, workers=workers, seed=seed, pin_memory=ctx.device.type == "cuda")
    store, modality = train_set.store, train_set.modality
    codec = "jpeg" if store.layout == "mmaction" else store.codec if modality == "rgb" else store.flow_codec
    if train_set.decode != "cpu" and codec != "jpeg":
        raise StreamsError(f'train.decode = "{train_set.decode}" decodes JPEGs, but {shown(store.root)} stores '
                           f'{modality} as {codec}: use train.decode = "cpu", or a store made with codec/flow_codec '
                           '= "jpeg"')
    sampler = EpochSampler(len(train_set), ctx.rank, ctx.world_size, seed)
    val_loader = None
    if val_set is not None:
        # Whole videos per process, so that a video's clips are scored together.
        k = val_set.clips_per_video
        mine = [i for v in range(ctx.rank, len(val_set) // k, ctx.world_size) for i in range(v * k, (v + 1) * k)]
        val_loader = make_loader(Subset(val_set, mine), **common)
    return make_loader(train_set, sampler=sampler, drop_last=True, **common), sampler, val_loader
