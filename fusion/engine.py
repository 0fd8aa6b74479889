"""The one inference path: every network output (eval, transfer, `features`, `predict`) comes from here.

Given streams (checkpoints), a video with the VideoFrames reading interface (a store video, or a
video file decoded with TV-L1 on the fly, fusion.decoded / fusion.snippets) and view plans
(fusion.views.ViewPlan: which clips, crops, mirrors), `Engine.run` returns each view's logits and
pool5 feature, and with `layers` the transfer protocol's res4 / res5c rows (`LayerTap`, taken by
forward hooks in the same pass). The views of all plans asked of one video go through the network in
one `StreamRunner.run`, so a view two plans share is computed once.

Pieces, one of each:
- `Stream`: a checked checkpoint as every caller and worker process sees it (picklable, no weights);
- `OutputCache`: `<root>/<stream>-<key>/<video_id>.npz`, the per-view outputs of one plan; the key
  hashes what determines them (the checkpoint's SHA-256, the clip geometry, the view plan and the
  frame source: the store's or the on-the-fly flow settings), and each entry holds the signature of
  the files it was computed from (size and mtime of the video and of its store entry), so a new
  checkpoint, plan, flow setting or a swapped video is computed afresh and nothing else is; an
  entry that is not what its stream gives on its plan (cut or altered bytes, rows of another shape,
  NaN) is damage and computed afresh too, never used;
- `map_videos`: the worker pool. On a CPU the videos are shared among processes of one thread each:
  tiny clips give a network too little work per operation for several threads, and on a busy machine
  threads that wait for each other lose far more (measured: a p3d_tiny batch took 21 ms with one
  thread, 283 ms with two, on two cores shared with other jobs). On a GPU one process does everything.
"""
from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import os
import signal
import threading
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISDIR
from typing import Any

import numpy as np
import torch

from flow.errors import FlowError
from flow.store import Store, open_store
from flow.video import opencv_single_thread
from fusion.errors import FusionError
from fusion.report import save_npz
from fusion.scoring import ClipGeometry, StreamRunner, num_positions
from fusion.views import CROP_POSITIONS, View, ViewPlan
from p3dbase.cluster import dask_unordered, die_with, local_processes
from p3dbase.digest import settings_key
from p3dbase.progress import progress_bar
from streams.checkpoint import Checkpoint, file_sha256, load_stream, stream_path
from streams.p3d import ARCHS, P3D

LAYERS = ("res4", "res5c")  # the extra rows a LayerTap gives
_CROPS = ("center", "start", "end")  # how a view's crop is stored in the cache (its index)
assert set(_CROPS) == {c for cs in CROP_POSITIONS.values() for c in cs}


@dataclass(frozen=True)
class Stream:
    """A checked stream checkpoint: what every caller and worker process needs to rebuild it."""
    name: str  # "rgb" or "flow"
    checkpoint: Path  # the checkpoint file (a training folder's last.pt resolved)
    sha256: str  # of the checkpoint file: the output cache's key
    geometry: ClipGeometry  # how its clips are shaped
    info: Checkpoint  # its metadata (classes, flow settings); the weights left out: small, picklable

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def clip_len(self) -> int:
        return self.geometry.clip_len

    def widths(self) -> dict[str, int]:
        """The width of each output row: logits (its classes), pool5 and the LayerTap's res4 / res5c."""
        spec = ARCHS[self.info.arch]
        return {"logits": len(self.classes), "pool5": spec.widths[3] * spec.expansion,
                "res4": spec.widths[2] * spec.expansion, "res5c": spec.widths[3] * spec.expansion}


def stream_of(name: str, ckpt: Checkpoint, geometry: ClipGeometry | None = None, sha256: str = "") -> Stream:
    """The Stream of a loaded checkpoint; its training clip geometry unless `geometry` is given."""
    geometry = geometry or ClipGeometry.from_train_config(ckpt.train_config)
    return Stream(name, ckpt.path, sha256 or file_sha256(ckpt.path), geometry, dataclasses.replace(ckpt, state={}))


def open_stream(name: str, path: Path | str,
                geometry: Callable[[dict], ClipGeometry] | None = None) -> Stream:
    """Check a checkpoint (a file, or a training folder standing for its last.pt) as the `name`
    stream: its weights must fit its architecture (StreamsError naming the file). `geometry` maps the
    checkpoint's train config to the clip geometry (default: the one it was validated with)."""
    _, ckpt = load_stream(stream_path(path), modality=name)
    return stream_of(name, ckpt, geometry(ckpt.train_config) if geometry else None)


@dataclass
class ViewOutputs:
    """A stream's outputs on the views of one plan of one video, one row per view in plan order."""
    views: list[View]
    logits: np.ndarray  # float32 [V, C]
    pool5: np.ndarray  # float32 [V, D]
    layers: dict[str, np.ndarray] = field(default_factory=dict)  # "res4", "res5c": float32 [V, *]

    def distinct(self) -> tuple[list[View], np.ndarray, np.ndarray]:
        """(the distinct views sorted, how often each is listed, the row of each's first listing)."""
        first: dict[View, int] = {}
        counts: dict[View, int] = {}
        for i, v in enumerate(self.views):
            first.setdefault(v, i)
            counts[v] = counts.get(v, 0) + 1
        views = sorted(first)
        return views, np.array([counts[v] for v in views]), np.array([first[v] for v in views])


class LayerTap:
    """Forward hooks on a P3D that keep, per forward pass, the last res4 block's output averaged over
    time and space and the last res5 block's output maxed over them: float32 [B, C] each."""

    def __init__(self, model: P3D):
        self.res4: list[torch.Tensor] = []
        self.res5c: list[torch.Tensor] = []
        self._batch = 0
        self.handles = [model.layer3[-1].register_forward_hook(self._on_res4),
                        model.layer4[-1].register_forward_hook(self._on_res5c)]

    def _on_res4(self, module, inputs, output: torch.Tensor) -> None:  # [B, C, T, H, W]
        self._batch = output.shape[0]
        self.res4.append(output.float().mean(dim=(2, 3, 4)).cpu())

    def _on_res5c(self, module, inputs, output: torch.Tensor) -> None:  # [B * T, C, H, W] (res5 is 2-D)
        per_frame = output.float().amax(dim=(2, 3))
        self.res5c.append(per_frame.reshape(self._batch, -1, per_frame.shape[1]).amax(dim=1).cpu())

    def take(self) -> dict[str, np.ndarray]:
        """The rows kept since the last take (or reset), in forward order."""
        out = {"res4": torch.cat(self.res4).numpy(), "res5c": torch.cat(self.res5c).numpy()}
        self.reset()
        return out

    def reset(self) -> None:
        self.res4.clear()
        self.res5c.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class Engine:
    """This process's loaded streams (each a StreamRunner, and a LayerTap with `layers`)."""

    def __init__(self, streams: Sequence[Stream], batch_views: int, device: torch.device, layers: bool = False):
        self.streams = list(streams)
        self.runners: dict[str, StreamRunner] = {}
        self.taps: dict[str, LayerTap] = {}
        for s in self.streams:
            model, _ = load_stream(s.checkpoint)
            self.runners[s.name] = StreamRunner(model, s.name, s.geometry, batch_views, device)
            if layers:
                self.taps[s.name] = LayerTap(self.runners[s.name].model)

    def stream(self, name: str) -> Stream:
        return next(s for s in self.streams if s.name == name)

    def run(self, name: str, video, plans: Sequence[ViewPlan], length: int | None = None,
            on_batch: Callable[[int], None] | None = None, views: Sequence[Sequence[View]] | None = None,
            ) -> list[ViewOutputs]:
        """Stream `name`'s outputs on `video` for each plan (in one pass over the network). `length`:
        the positions the plans are laid on (default: all the video offers the stream); `views`: the
        views already laid out, one list per plan (fusion.decoded places them before decoding)."""
        runner = self.runners[name]
        if views is None:
            length = num_positions(video, name) if length is None else length
            if length < 1:
                raise FlowError(f"{getattr(video, 'path', 'video')}: has no {name} images "
                                "(a single frame has no flow)")
            video_id = getattr(video, "video_id", "")  # seeds a random plan's clips (store videos)
            views = [plan.views(length, runner.geometry.clip_len, video_id) for plan in plans]
        union = [v for vs in views for v in vs]
        tap = self.taps.get(name)
        if tap:
            tap.reset()  # drop anything a failed earlier video left
        logits, pool5 = runner.run(video, union, on_batch)
        extra = {}
        if tap:
            rows = tap.take()  # in StreamRunner's order: the distinct views, sorted
            at = {v: i for i, v in enumerate(sorted(set(union)))}
            order = [at[v] for v in union]
            extra = {k: rows[k][order] for k in LAYERS}
        out, first = [], 0
        for vs in views:
            last = first + len(vs)
            out.append(ViewOutputs(list(vs), logits[first:last], pool5[first:last],
                                   {k: a[first:last] for k, a in extra.items()}))
            first = last
        return out


def file_signature(path: Path) -> str:
    """What ties an output to the file it was computed from: its size and modification time; for a
    folder (a frame folder, a video of the mmaction layout), its files' count, total size and newest
    modification time, sub-folders included: an image rewritten in place changes its own mtime, not
    the folder's."""
    stat = os.stat(path)  # one call for the common case, a packed video's file
    if not S_ISDIR(stat.st_mode):
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    stats = list(_file_stats(path))
    return f"{len(stats)}:{sum(s.st_size for s in stats)}:{max((s.st_mtime_ns for s in stats), default=0)}"


def _file_stats(folder: Path | str) -> Iterator[os.stat_result]:
    """The stat of every file under `folder` (symbolic links to folders not followed: no loop)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from _file_stats(entry.path)
            elif entry.is_file():
                yield entry.stat()


def store_source(store: Store) -> dict:
    """The frame source of a store's videos, for the cache key."""
    return {"frames": "store", "layout": store.layout, "codec": store.codec, "bound": store.bound,
            "params": store.params}


class OutputCache:
    """Per-view outputs of one plan, per stream and video: `<root>/<stream>-<key>/<video_id>.npz`.

    `sources` gives each stream's frame source (store_source, or the flow settings a video is
    decoded and its flow computed with): with the checkpoint's SHA-256, the clip geometry and the
    plan it makes the key. An entry is used only when its signature matches the caller's (the
    files it came from are unchanged), it holds the layers asked for and its rows are what the stream
    gives on the plan (`outputs_fit`); anything else is computed again."""

    def __init__(self, root: Path | str, sources: dict[str, dict]):
        self.root = Path(root)
        self.sources = sources

    def key(self, stream: Stream, plan: ViewPlan) -> str:
        settings = {"checkpoint": stream.sha256, "geometry": dataclasses.asdict(stream.geometry),
                    "plan": plan.key(), "source": self.sources[stream.name]}
        return settings_key(settings)

    def path(self, stream: Stream, plan: ViewPlan, video_id: str) -> Path:
        return self.root / f"{stream.name}-{self.key(stream, plan)}" / f"{video_id}.npz"

    def read(self, stream: Stream, plan: ViewPlan, video_id: str, signature: str,
             layers: bool = False) -> ViewOutputs | None:
        path = self.path(stream, plan, video_id)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["signature"]) != signature:
                    return None
                rows = data["views"]
                if (rows.ndim != 2 or rows.shape[1:] != (3,) or rows.dtype.kind not in "iu" or (rows < 0).any()
                        or (rows[:, 1] >= len(_CROPS)).any() or (rows[:, 2] > 1).any()):
                    return None  # views of no plan: damaged
                views = [View(int(s), _CROPS[int(c)], bool(f)) for s, c, f in rows]
                extra = {k: data[k] for k in LAYERS if k in data.files}
                if layers and len(extra) != len(LAYERS):
                    return None
                out = ViewOutputs(views, data["logits"], data["pool5"], extra)
        except (OSError, ValueError, KeyError, EOFError, IndexError, TypeError, zipfile.BadZipFile):
            return None  # damaged (a disk error, cut or altered bytes, an old format): computed again
        return out if outputs_fit(stream, plan, out) else None  # rows of another shape, NaN: damaged too

    def write(self, stream: Stream, plan: ViewPlan, video_id: str, signature: str, out: ViewOutputs) -> None:
        if not all(np.isfinite(a).all() for a in (out.logits, out.pool5, *out.layers.values())):
            # `read` takes NaN for damage: written, it would be computed again on every run
            raise FusionError(f"checkpoint {stream.checkpoint}: the {stream.name} stream's outputs on video "
                              f"{video_id} are not finite (NaN or inf): its weights overflow on this input")
        path = self.path(stream, plan, video_id)
        if path.is_dir():  # the rename would fail with "Is a directory", naming no remedy
            raise FusionError(f"{path}: a folder where a cache entry belongs: remove it (everything under "
                              f"{self.root} is a cache, safe to delete) and re-run")
        views = np.array([(v.start, _CROPS.index(v.crop), int(v.flip)) for v in out.views], dtype=np.int64)
        save_npz(path, {"signature": np.array(signature), "views": views.reshape(-1, 3),
                                                     "logits": out.logits, "pool5": out.pool5, **out.layers})


def outputs_fit(stream: Stream, plan: ViewPlan, out: ViewOutputs) -> bool:
    """Whether `out` is what `stream` gives on `plan`'s views: one row per view (as many views as the plan
    takes, where that does not depend on the video's length), rows as wide as the stream's classes and
    features, finite floats. The cache takes anything else for damage."""
    rows = len(out.views)
    if plan.mode != "snippets" and rows != plan.clips * len(CROP_POSITIONS[plan.crops]) * (2 if plan.mirror else 1):
        return False
    widths = stream.widths()
    arrays = {"logits": out.logits, "pool5": out.pool5, **out.layers}
    return all(isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.shape == (rows, widths[k])
               and bool(np.isfinite(a).all()) for k, a in arrays.items())


# --- the worker pool ---------------------------------------------------------------------------------

@dataclass
class PoolSpec:
    """What each worker process builds once (picklable): the engine's streams, and what `work` needs."""
    streams: list[Stream]
    batch_views: int
    device: torch.device
    work: Callable[[Worker, Any], Any]  # a module-level function: (this process's Worker, task) -> result
    context: Any = None  # handed to `work` (settings, the cache)
    layers: bool = False
    store_root: Path | None = None


@dataclass
class Worker:
    engine: Engine
    store: Store | None
    context: Any


def map_videos(spec: PoolSpec, tasks: Sequence[Any], jobs: int = 0, desc: str = "network", unit: str = "video",
               leave: bool = True, *, scheduler: str = "", jobs_key: str = "eval.jobs",
               bar: bool = True) -> Iterator[Any]:
    """`spec.work(worker, task)` for every task, in `jobs` processes on a CPU (0: one per core;
    p3dbase.cluster.local_processes, which names `jobs_key` when there are too many), one on a GPU,
    or on the Dask cluster at `scheduler` ("tcp://host:8786", as `[flow] scheduler` runs the flow
    stage), yielding the results as they finish, with a progress bar (unless not `bar`). An exception a
    worker raises (a full disk) stops the run and is raised here."""
    local = not (scheduler and tasks)  # on a cluster the workers are the cluster's: jobs starts nothing here
    workers = min(1 if spec.device.type != "cpu" or not local else local_processes(jobs, jobs_key), len(tasks))
    with progress_bar(total=len(tasks), desc=desc, unit=unit, leave=leave, disable=not bar) as shown_bar:
        # A task in this process (workers <= 1, or a Dask cluster started in-process) sets torch to one
        # thread: process-wide where torch's pool is its own (not OpenMP's per-thread count), so the
        # caller gets its thread count back.
        threads = torch.get_num_threads()
        if scheduler and tasks:
            try:
                for result in _dask_map(spec, tasks, scheduler):
                    yield result
                    shown_bar.update()
            finally:
                torch.set_num_threads(threads)
            return
        if workers <= 1:
            try:
                _init_worker(spec)
                for task in tasks:
                    yield _call(task)
                    shown_bar.update()
            finally:
                _WORKER.clear()
                torch.set_num_threads(threads)
            return
        with opencv_single_thread():
            for result in _pool_map(spec, tasks, workers, jobs_key):
                yield result
                shown_bar.update()


def _pool_map(spec: PoolSpec, tasks: Sequence[Any], workers: int, jobs_key: str) -> Iterator[Any]:
    """`_call(task)` in `workers` local processes, the results as they finish. A worker that dies (the
    kernel's OOM killer, a crash) is one line naming `jobs_key`: multiprocessing.Pool replaced it and
    waited for its task's result for ever. At most two tasks per worker are handed out ahead, so that
    an interrupted run finishes the few in hand and stops (the workers ignore Ctrl-C: the main
    process has it, and their tracebacks were noise)."""
    # Forked like DataLoader workers (one torch thread each, so a forked OpenMP pool is never
    # used): a spawned worker would first spend seconds importing torch again.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    # The workers die with this process (die_with). The kernel ties that to the thread that forks them,
    # the one that first submits below, which the pool's use here (a generator in that thread) outlives.
    todo = iter(tasks)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                               initializer=_init_pool_worker, initargs=(spec, os.getpid()))
    try:
        running = {pool.submit(_call, task) for task in itertools.islice(todo, 2 * workers)}
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    result = future.result()
                except BrokenProcessPool:
                    raise FusionError(f"a worker process of the {workers} ({jobs_key}) died (killed, e.g. by the "
                                      "kernel for lack of memory, or crashed): re-run the same command to resume; "
                                      f"with less memory, set {jobs_key} lower") from None
                running |= {pool.submit(_call, task) for task in itertools.islice(todo, 1)}
                yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_WORKER: dict = {}  # this process's Worker and work function, set by _init_worker


def _init_pool_worker(spec: PoolSpec, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle (_pool_map)
    die_with(parent)  # a worker outliving a kill -9 of eval or transfer held its report lock for ever
    _init_worker(spec)


def _init_worker(spec: PoolSpec) -> None:
    if spec.device.type == "cpu":
        torch.set_num_threads(1)
    store = open_store(spec.store_root) if spec.store_root is not None else None
    _WORKER.update(worker=Worker(Engine(spec.streams, spec.batch_views, spec.device, spec.layers), store,
                                 spec.context), work=spec.work)


def _call(task: Any) -> Any:
    return _WORKER["work"](_WORKER["worker"], task)


_DASK = threading.local()  # a Dask worker thread's Worker, built on its first task of a spec


def run_one(spec: PoolSpec, task: Any) -> Any:
    """One task on a Dask worker: the models are loaded once per worker thread and spec. On the CPU each
    task runs torch on one thread, as the local pool's processes do: a Dask worker runs as many tasks
    at once as it has threads, and each at torch's default (every core) oversubscribed the machine;
    the features then also match the local run's to the bit, not to ~1e-5."""
    if spec.device.type == "cpu" and torch.get_num_threads() != 1:
        torch.set_num_threads(1)  # process-wide: the Dask worker's process runs only its tasks
    if getattr(_DASK, "spec", None) != spec:
        store = open_store(spec.store_root) if spec.store_root is not None else None
        _DASK.worker = Worker(Engine(spec.streams, spec.batch_views, spec.device, spec.layers), store, spec.context)
        _DASK.spec = spec
    return spec.work(_DASK.worker, task)


def _dask_map(spec: PoolSpec, tasks: Sequence[Any], scheduler: str) -> Iterator[Any]:
    import joblib

    yield from dask_unordered((joblib.delayed(run_one)(spec, task) for task in tasks), scheduler)
