"""The flow stage (`make flow`): videos -> resized RGB frames + TV-L1 flow images in a store.

Every video is decoded in chunks of `batch_pairs` frames (the last frame of a chunk is carried into
the next, so every pair is computed however long the video), its flow computed by the configured
backend, encoded to uint8 and written under a temporary name that is renamed when the video is
complete. Videos run in parallel in local worker processes (loky), or on a Dask cluster with
`[flow] scheduler`, a shard of them per machine with `shard=(i, n)`. Each finished video is recorded
in the store's index with what it was made from (flow.index): a re-run skips it while its source
file and the store's settings are unchanged, without opening it. A broken video is recorded as failed
in the manifest and the rest goes on.

Each video is processed holding its lock in the store (`Store.lock`), so two runs on one store (a
re-launch, a scheduler retry) never clean, write or remove the same video at once: the second waits
and then finds it done. A worker process that dies (killed for memory, a crash) fails only its
video; a worker whose run was killed stops at the next chunk and removes what it was writing. A full
disk stops the run with one DiskFullError (a FlowError).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import itertools
import operator
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import joblib
import numpy as np

from flow.config import FlowConfig
from flow.encoding import encode
from flow.errors import FlowError
from flow.index import IndexEntry, IndexWriter, Origin, entry_stat
from flow.manifest import VideoResult, read_manifest, write_manifest
from flow.rawframes import import_video, survey
from flow.stat_ahead import MISSING, StatsAhead, can_fork, size_mtime
from flow.store import (
    PACK_SUFFIX,
    REDO_DAMAGED,
    STORE_FILE,
    OtherSettingsError,
    Store,
    check_video_id,
    create_store,
    nested_problems,
    open_store,
    store_name_problem,
)
from flow.tvl1 import OpenCVTVL1, to_gray
from flow.video import VideoReader, size_text
from p3dbase.atomic import DiskFullError, disk_full, is_disk_full, write_text
from p3dbase.bulk import no_cycle_collection
from p3dbase.cluster import dask_unordered, local_processes
from p3dbase.errors import P3DError, refusal, shown
from p3dbase.progress import progress_bar

# [flow] fields that do not change what is written: a store made with other values of these is
# still the same store.
RUN_ONLY_FIELDS = ("jobs", "scheduler", "device", "batch_pairs", "missing_frames_tolerance",
                   "store", "codec", "flow_codec", "bound", "jpeg_quality", "max_pixels", "source",
                   "rawframes_root", "rawframes_bound", "rawframes_min_quality")
# What decides imported rawframes (source = "rawframes"): TV-L1's settings are the other tool's, unknown here.
RAWFRAMES_FIELDS = ("size", "rawframes_bound")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "NUMEXPR_NUM_THREADS")
MANIFEST_EVERY_S = 30.0  # rewrite the manifest this often while running, so a killed run shows progress

CONFIG = "config.toml"  # the resolved settings of the run, beside the store (written by run_flow)


@dataclass(frozen=True, slots=True)
class FlowJob:
    """One video to process: its id in the store (`Class/v_Class_g01_c01`) and its file. `error`,
    when set, is why the caller refuses the video (an odd file name, a link out of the dataset
    root): it is recorded as failed with that reason and never opened."""

    video_id: str
    path: Path
    error: str = ""


@dataclass
class FlowSummary:
    """Counts of one run (of one shard); `frames`, `pairs` and `seconds` are this run's work."""

    videos: int
    computed: int
    skipped: int
    failed: int
    frames: int
    pairs: int
    seconds: float
    manifest: Path
    shard: tuple[int, int] = (0, 1)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        i, n = self.shard
        where = f" (shard {i + 1}/{n})" if n > 1 else ""
        lines = [f"flow: {self.videos} videos{where}: {self.computed} computed, {self.skipped} already "
                 f"done, {self.failed} failed",
                 f"flow: {self.frames} frames, {self.pairs} flow pairs in {self.seconds:.1f} s "
                 f"({self.pairs_per_s:.2f} pairs/s)"]
        for video_id, error in self.failures[:10]:
            lines.append(f"flow: failed {video_id}: {error}")
        if len(self.failures) > 10:
            lines.append(f"flow: ... and {len(self.failures) - 10} more failures")
        lines.append(f"flow: manifest {shown(self.manifest)}")
        return "\n".join(lines)


def store_params(cfg: FlowConfig) -> dict[str, Any]:
    """The settings that decide the stored frames and flow, recorded in store.json. Stores computed
    from videos record no `source` (stores made before rawframes could be imported stay valid)."""
    if cfg.source == "rawframes":
        params = {"source": "rawframes", **{k: getattr(cfg, k) for k in RAWFRAMES_FIELDS}}
        if cfg.rawframes_min_quality != FlowConfig.rawframes_min_quality:
            # It decides which JPEGs are kept byte for byte and which re-encoded. Recorded only when not
            # the default, so that stores made at 75 before it was recorded keep their record (one made
            # then at another value is refused at it: which value made it is not known).
            params["rawframes_min_quality"] = cfg.rawframes_min_quality
    else:
        params = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_ONLY_FIELDS}
    return params | {"size": size_text(cfg.size)}


def flow_settings(bound: float, params: dict[str, Any]) -> dict[str, Any]:
    """The flow settings a stream is trained on, as checkpoints record them and `eval`, `predict` and
    `features` compare them: the bound, `source` ("videos" or "rawframes") and the store's params."""
    return {"bound": float(bound), "source": "videos", **params}


def config_flow_settings(cfg: FlowConfig) -> dict[str, Any]:
    """flow_settings of the flow computed on the fly under `cfg` (`predict`, `features`: TV-L1 on
    decoded videos, whatever `cfg.source` says)."""
    return flow_settings(cfg.bound, store_params(dataclasses.replace(cfg, source="videos")))


_TORCH_BACKENDS: dict[tuple[Any, ...], Any] = {}  # one per process and device: building one is costly


def make_backend(cfg: FlowConfig, device: str | None = None) -> Any:
    """The TV-L1 backend named by `cfg.backend`: an object with `compute(frames_gray) -> flow`."""
    if cfg.backend == "opencv":
        return OpenCVTVL1(cfg)
    if cfg.backend == "torch":
        try:
            from flow.tvl1_torch import TorchTVL1
        except ImportError as e:
            raise FlowError(f"flow.backend = 'torch' is not available here ({e}); use 'opencv'") from None
        # batch_pairs too: a run-only setting for the store, but the backend's memory (lowered after an OOM)
        key = (tuple(sorted(store_params(cfg).items())), cfg.batch_pairs, device or cfg.device)
        if key not in _TORCH_BACKENDS:
            _TORCH_BACKENDS[key] = TorchTVL1(cfg, device or cfg.device)
        return _TORCH_BACKENDS[key]
    if cfg.backend == "fast":
        try:
            from flow.tvl1_fast import FastTVL1
        except ImportError as e:
            raise FlowError(f"flow.backend = 'fast' is not available here ({e}); use 'opencv'") from None
        return FastTVL1(cfg)
    raise FlowError(f"flow.backend: must be 'fast', 'opencv' or 'torch', got {cfg.backend!r}")


class _Orphaned(Exception):
    """The run that started this worker process is gone (killed): stop writing into its store."""


def _check_owner(owner: tuple[str, int, bool] | None) -> None:
    """Raise _Orphaned when the run (host, pid, whether it is this process's parent) has died.
    A worker on another machine (Dask) cannot tell and goes on."""
    if owner is None:
        return
    host, pid, parent = owner
    if pid == os.getpid() or host != socket.gethostname():
        return
    if parent and os.getppid() != pid:  # re-parented: the run died (even if not yet reaped)
        raise _Orphaned
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise _Orphaned from None
    except PermissionError:
        pass


LOCK_WAIT_S = 600.0  # how long a video locked by another run is waited for before it is skipped
LOCK_REPORT_S = 10.0  # say what it waits for after this long


def process_video(job: FlowJob, out_dir: Path, cfg: FlowConfig, *, origin: Origin | None = None,
                  threads: int = 0, device: str | None = None, force: bool = False,
                  owner: tuple[str, int] | None = None) -> tuple[VideoResult, bool]:
    """Decode, compute and store one video holding its lock; returns its row and whether this call
    computed it (False: found complete in the store, made from `origin`, e.g. finished meanwhile by
    another run; with `force` it is always computed). Never raises for a broken video; a full disk
    raises DiskFullError after removing what it was writing.

    `origin` (what the video is made from, taken before it is read) is kept with the stored video.
    `threads` > 0 sets OpenCV's thread count first (1 when several videos run at once). `owner` is
    the (host, pid) of the run: a worker process whose run has died stops at the next chunk and
    exits. A video whose lock another process holds for longer than LOCK_WAIT_S is skipped (failed,
    with who holds it).
    """
    start = time.perf_counter()
    if threads > 0:
        cv2.setNumThreads(threads)
    alive = None if owner is None else (*owner, os.getppid() == owner[1])
    store = open_store(out_dir)
    locked = False
    try:
        _check_owner(alive)
        with _locked(store, job) as held:
            locked = True
            if not held:
                return _waited_too_long(store, job), True
            if not force and store.has(job.video_id):
                row = _stored_row(store, job, origin)
                if row is not None:
                    return row, False
            store.remove_temp(job.video_id)  # what a killed writer left
            row = _compute(job, store, cfg, device, alive, origin)
    except _Orphaned:
        os._exit(1)  # a worker of a killed run: its writer has removed the temporary file
    except OSError as e:
        if is_disk_full(e):  # taking the lock (creating its file) can meet a full disk too
            raise e if isinstance(e, DiskFullError) else disk_full(store.lock_path(job.video_id), e) from e
        if locked or e.errno not in _FOLDER_REFUSALS:  # not the video's folder: the run's to stop
            raise
        # The store folder this video's lock (its first file) cannot be made in: no permission, a file
        # where the folder belongs. The video fails, the others go on.
        why = "a file is where a folder should be" if e.errno == errno.EEXIST else refusal(OSError(e.errno, e.strerror))
        folder = store.lock_path(job.video_id).parent
        return VideoResult(job.video_id, shown(job.path), "failed",
                           error=f"cannot write it in the store: {shown(folder)}: {why}"), True
    row.seconds = f"{time.perf_counter() - start:.3f}"
    return row, True


# What making a video's folder and lock file meets when the folder is the problem, not the run.
_FOLDER_REFUSALS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG}


@contextlib.contextmanager
def _locked(store: Store, job: FlowJob) -> Iterator[bool]:
    """The video's lock: at once when free; else waited for, saying after LOCK_REPORT_S what for,
    and given up (False) after LOCK_WAIT_S."""
    waited = 0.0
    reported = False
    while True:
        with store.lock(job.video_id, wait=False) as held:
            if held:
                yield True
                return
        if waited >= LOCK_WAIT_S:
            yield False
            return
        if waited >= LOCK_REPORT_S and not reported:
            print(f"flow: waiting for video {job.video_id}: locked by another run ({_holder(store, job)}); "
                  f"skipped after {LOCK_WAIT_S:g} s", flush=True)
            reported = True
        time.sleep(0.5)
        waited += 0.5


def _holder(store: Store, job: FlowJob) -> str:
    """Who holds a video's lock, in words: `host-pid`, and whether that process is stopped."""
    token = store.lock_holder(job.video_id)
    if not token:
        return "process unknown"
    host, _, pid = token.rpartition("-")
    if host == socket.gethostname() and pid.isdigit():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            state = ""
        if state in ("T", "t"):
            return f"process {pid} on this machine, which is stopped (Ctrl-Z or SIGSTOP): resume or end it"
        return f"process {pid} on this machine"
    return f"process {pid} on {host}"


def _waited_too_long(store: Store, job: FlowJob) -> VideoResult:
    return VideoResult(job.video_id, shown(job.path), "failed",
                       error=f"skipped: locked by another run ({_holder(store, job)}) for over {LOCK_WAIT_S:g} s; "
                             "re-run once that run is done or gone")


def _stored_row(store: Store, job: FlowJob, origin: Origin | None) -> VideoResult | None:
    """The row of a video complete in the store and made from `origin`; None when it is damaged or
    was made from something else (another source file, other settings)."""
    try:
        with store.open(job.video_id) as frames:
            if origin is None or Origin.from_dict(frames.origin) != origin:
                return None
            return VideoResult(job.video_id, shown(job.path), "done", frames.num_frames, frames.num_flows,
                               _declared(frames.origin))
    except FlowError:
        return None


def _compute(job: FlowJob, store: Store, cfg: FlowConfig, device: str | None,
             owner: tuple[str, int, bool] | None, origin: Origin | None) -> VideoResult:
    row = VideoResult(job.video_id, shown(job.path), "failed")
    # The video's id too: a pack copied over another's (sources of one size and mtime) is then refused.
    made_from = None if origin is None else {**origin.as_dict(), "video_id": job.video_id}
    try:
        if cfg.source == "rawframes":  # an existing frame folder: copied, nothing computed
            with store.writer(job.video_id, made_from) as writer:
                row.declared_frames = len(import_video(job.path, writer, cfg, lambda: _check_owner(owner)).frames)
                if made_from is not None:
                    writer.origin = {**made_from, "declared_frames": row.declared_frames}
            row.status, row.frames, row.flow_pairs = "done", writer.num_frames, writer.num_flows
            return row
        reader = VideoReader(job.path, cfg.size, cfg.max_pixels)
        row.declared_frames = reader.declared_frames
        backend = make_backend(cfg, device)
        if made_from is not None:  # kept with the video, for its manifest row should the run be killed
            made_from["declared_frames"] = reader.declared_frames
        with store.writer(job.video_id, made_from) as writer:
            last = None  # the previous chunk's last frame: the first frame of the next pair
            for chunk in reader.chunks(cfg.batch_pairs + 1, cfg.batch_pairs):
                _check_owner(owner)
                writer.add_rgb(chunk)
                gray = to_gray(chunk)
                if last is not None:
                    gray = np.concatenate([last[None], gray])
                if len(gray) > 1:
                    writer.add_flow(encode(backend.compute(gray), cfg.bound))
                last = gray[-1]
            reader.check_complete(cfg.missing_frames_tolerance)
            if writer.num_frames < 2:
                raise FlowError(f"{shown(job.path)}: only one frame, flow needs at least two")
        row.status, row.frames, row.flow_pairs = "done", writer.num_frames, writer.num_flows
    except _Orphaned:
        raise
    except Exception as e:  # a broken video must not stop the run: record it and go on
        if is_disk_full(e):  # ... but a full disk stops it (the writer removed its temporary file)
            raise e if isinstance(e, DiskFullError) else disk_full(store.path(job.video_id), e) from e
        row.error = _error_line(e, job.path)
        try:
            store.remove(job.video_id)  # nothing half-written, nor an older result, stays for it
        except FlowError as kept:  # a folder of the user's where the pack belongs: not deleted
            row.error += f"; {kept}"
    return row


def _error_line(err: BaseException, path: Path) -> str:
    """One printable line naming the file: a library's own words (OpenCV's assertion text) name none."""
    if isinstance(err, FlowError):
        text = str(err)
    else:
        words = str(err).strip().splitlines()
        text = f"{type(err).__name__}: {words[-1] if words else ''}"  # OpenCV's last line holds the reason
    if shown(path) not in text:
        text = f"{shown(path)}: {text}"
    return shown(" ".join(text.split()))


def _select_shard(jobs: Sequence[FlowJob], shard: tuple[int, int]) -> list[FlowJob]:
    i, n = shard
    if not (isinstance(i, int) and isinstance(n, int) and n >= 1 and 0 <= i < n):
        raise FlowError(f"--shard: expected 0 <= i < n, got {i}/{n} (i is 0-based)")
    ordered = sorted(jobs, key=_video_id)
    if len({job.video_id for job in ordered}) < len(ordered):  # sorted: a repeated id is its neighbour's
        twice = next(a.video_id for a, b in zip(ordered, ordered[1:], strict=False) if a.video_id == b.video_id)
        raise FlowError(f"video id {twice!r} appears twice in the list of videos")
    return ordered[i::n]


_video_id = operator.attrgetter("video_id")


def _workers(cfg: FlowConfig) -> tuple[int, list[str | None]]:
    """How many videos at once (local processes: `flow.jobs`, checked by local_processes, or a default
    by backend), and the torch devices to hand out in turn."""
    # On a Dask cluster (flow.scheduler) the workers are the cluster's: jobs starts nothing here.
    jobs = local_processes(cfg.jobs, "flow.jobs") if cfg.jobs and not cfg.scheduler else cfg.jobs
    if cfg.backend == "torch" and cfg.device in ("auto", "cuda"):
        import torch

        gpus = torch.cuda.device_count()
        if gpus:
            return jobs or gpus, [f"cuda:{k}" for k in range(gpus)]
        return jobs or 1, [None]
    if cfg.backend == "torch":
        return jobs or 1, [None]
    return jobs or local_processes(0, "flow.jobs"), [None]




def _died_reason(err: BaseException) -> str:
    codes = re.search(r"exit codes of the workers are (\{[^}]*\})", str(err))
    return (f"its worker process died while computing it, also when run alone (exit code "
            f"{codes.group(1) if codes else '?'}: killed, e.g. for lack of memory, or crashed)")


# How often a wait for the pool's results looks whether the pool still works (a poll, not a time limit).
POOL_POLL_S = 2.0
_MANAGER_THREAD = "ExecutorManagerThread"  # loky's thread that feeds the workers and collects their results


def _collect_manager_failures(failures: list[BaseException]) -> Any:
    """Collect into `failures` what ends loky's manager thread instead of printing it as a traceback:
    without that thread no result ever arrives (under `ulimit -v` it died on "can't start new thread"
    and the run waited for ever). Other threads' failures go to the hook as before, which is returned
    for the caller to put back."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.thread is not None and args.thread.name == _MANAGER_THREAD and args.exc_value is not None:
            failures.append(args.exc_value)
        else:
            previous(args)

    threading.excepthook = hook
    return previous


def _pool_results(todo: Sequence[_Task], run: Callable[[_Task, int], Any],
                  workers: int) -> Iterator[tuple[VideoResult, bool]]:
    """`run(task, k)` for every task in `workers` local processes (loky), as they finish.

    At most `workers` jobs are in flight, so those in flight are exactly the suspects when a worker
    process dies (OOM killer, a crash), which breaks the pool and fails all of them: each suspect
    is then run again alone, and the one whose worker dies again is recorded as failed with the
    reason; the others go on. A DiskFullError stops new jobs, lets those in flight finish, then
    is raised.
    """
    from joblib.externals.loky import get_reusable_executor

    # As joblib's own loky backend does: each worker's OpenMP / BLAS pools (torch on the CPU) get an
    # equal share of the cores, unless the environment already sets them.
    share = str(max(joblib.cpu_count() // workers, 1))
    env = {var: os.environ.get(var, share) for var in THREAD_VARS}

    def submit(job: _Task, k: int) -> Future:
        return get_reusable_executor(max_workers=workers, env=env).submit(run, job, k)

    pending = collections.deque(enumerate(todo))
    suspects: collections.deque[tuple[int, _Task]] = collections.deque()
    inflight: dict[Future, tuple[int, _Task, bool]] = {}
    full: DiskFullError | None = None
    failures: list[BaseException] = []
    hook = _collect_manager_failures(failures)
    try:
        while pending or suspects or inflight:
            if suspects:
                if not inflight:  # a suspect runs alone, in a fresh pool
                    k, job = suspects.popleft()
                    inflight[submit(job, k)] = (k, job, True)
            else:
                while pending and len(inflight) < workers:
                    k, job = pending.popleft()
                    inflight[submit(job, k)] = (k, job, False)
            done, _ = wait(list(inflight), timeout=POOL_POLL_S, return_when=FIRST_COMPLETED)
            if not done and failures:
                raise FlowError(f"flow: the pool of {workers} worker processes stopped working ({failures[0]}): "
                                "too little memory for it? (`ulimit -v`) raise the limit, or set flow.jobs = 1")
            for future in done:
                k, job, alone = inflight.pop(future)
                try:
                    result = future.result()
                except BrokenExecutor as e:
                    if alone:
                        yield VideoResult(job.video_id, shown(job.path), "failed", error=_died_reason(e)), True
                    elif full is None:
                        suspects.append((k, job))
                    continue
                except DiskFullError as e:
                    full = full or e
                    pending.clear()
                    suspects.clear()
                    continue
                yield result
    finally:
        threading.excepthook = hook
        for future in inflight:
            future.cancel()
        if inflight:  # interrupted (Ctrl-C, an error): the workers would go on writing
            get_reusable_executor(max_workers=workers, env=env).shutdown(wait=False, kill_workers=True)
    if full is not None:
        raise full


def _open_for_run(out_dir: Path, cfg: FlowConfig, shard: tuple[int, int], force: bool) -> Store:
    """The store for this run. Other output settings than the store's are refused; `force` rewrites
    store.json, but not with a shard: only its videos would be redone, and the other shards' would
    keep the old settings under the new store.json."""
    def create(overwrite: bool) -> Store:
        return create_store(out_dir, cfg.store, codec=cfg.codec, flow_codec=cfg.flow_codec, bound=cfg.bound,
                            jpeg_quality=cfg.jpeg_quality, params=store_params(cfg), overwrite=overwrite)
    try:
        return create(False)
    except OtherSettingsError as e:
        if not force:
            raise
        if shard[1] > 1:
            i, n = shard
            raise FlowError(f"{out_dir / STORE_FILE}: --force --shard {i}/{n} with other settings than "
                            f"the store's ({', '.join(e.differ)} differ) would redo only this shard's "
                            "videos and leave the other shards' with the old settings: run `flow "
                            "--force` without --shard, or use a new work_dir (whose shards then need no "
                            "--force)") from None
    except FlowError:
        if not force:
            raise  # with --force a broken store.json is rewritten
    return create(True)


def run_flow(videos: Sequence[FlowJob], out_dir: Path, cfg: FlowConfig, *, shard: tuple[int, int] = (0, 1),
             force: bool = False, strict: bool = False, config_toml: str = "") -> FlowSummary:
    """Process every video of `shard` = (i, n) (0-based i; the i-th of n interleaved parts of the
    videos sorted by id) into the store at `out_dir`; skip those the store's index lists as finished
    from the same source file and settings, unless `force`.

    Prints a summary and returns it. FlowError when every video of the run failed; with `strict`,
    when any did (after finishing the rest). The manifest (`manifest.csv`, or one per shard) lists
    every video of the run. `config_toml`: the caller's resolved settings, written as
    out_dir/config.toml once the store has accepted them (a refused run leaves the file as it was).
    """
    # 1. Check the settings (the device too, before any video) and pick this shard's videos.
    check_config(cfg)
    mine = _select_shard(videos, shard)
    out_dir = Path(out_dir).resolve()  # workers (processes, cluster nodes) may run elsewhere
    valid, rows = _refuse(mine, cfg, nested_problems((job.video_id for job in videos if not job.error), cfg.store))

    # 2. Open the store: other settings than its own are refused; --force rewrites store.json.
    store = _open_for_run(out_dir, cfg, shard, force)
    if read_only_store(out_dir, force):
        return _finished_read_only(store, mine, valid, rows, shard)
    if config_toml:
        write_text(out_dir / CONFIG, config_toml)
    manifest = store.manifest_path(shard)
    # 3. Plan from the index: finished videos (same source, same settings) are done; the rest is to do.
    with no_cycle_collection(), _stats_ahead(store, valid, force) as ahead:  # 650,000 rows, no cycles
        store.clean_stale([job.video_id for job in valid])  # what killed runs left (not what live ones write)
        plan = _plan(store, valid, force, ahead)
        if not force:
            _keep_refused(store, [job for job in mine if job.error], plan)
    rows.update(plan.rows)
    if cfg.source == "rawframes":
        print(survey([job.path for job in valid if job.video_id not in plan.gone]), flush=True)

    # 4. Compute what is left, recording each finished video in the index as it comes back.
    start = time.perf_counter()
    with store.running() if plan.todo else contextlib.nullcontext(), store.index.writer() as index:
        for entry in plan.adopted:
            index.add(entry, after=plan.after.get(entry.video_id, 0))
        tally = _compute_all(plan.todo, store, cfg, force=force, plan=plan, rows=rows, index=index,
                             manifest=manifest)
        store.clean_stale([job.video_id for job in plan.todo])  # what workers that died were writing
    if plan.damaged_index:  # their videos are indexed afresh above (or by their own shard's run): drop the lines
        store.index.compact(rewrite=True)

    # 5. The summary; a run in which every video failed is an error.
    failures = sorted([(r.video_id, r.error) for r in rows.values() if r.status == "failed"])
    found_done = sum(r.status == "done" for r in plan.rows.values())
    summary = FlowSummary(videos=len(mine), computed=tally.computed, skipped=found_done + tally.found,
                          failed=len(failures), frames=tally.frames, pairs=tally.pairs,
                          seconds=time.perf_counter() - start, manifest=manifest, shard=shard, failures=failures)
    print(summary, flush=True)
    if failures and (strict or len(failures) == len(mine)):
        video_id, error = failures[0]
        why = "--strict" if strict and len(failures) < len(mine) else "every video failed"
        raise FlowError(f"{len(failures)} of {len(mine)} videos failed ({why}), e.g. {video_id}: {error}; "
                        f"see {shown(manifest)}")
    return summary


def read_only_store(out_dir: Path | str, force: bool = False) -> bool:
    """Whether `out_dir` holds a store this process cannot write (a shared, read-only mount). A run
    on it can record nothing, but one whose videos are all in it is finished, not an error."""
    return not force and (Path(out_dir) / STORE_FILE).is_file() and not os.access(out_dir, os.W_OK | os.X_OK)


def _finished_read_only(store: Store, mine: Sequence[FlowJob], valid: Sequence[FlowJob],
                        rows: dict[str, VideoResult], shard: tuple[int, int]) -> FlowSummary:
    """run_flow on a read-only store: the plan alone (the index and a stat per video; packs only
    where the index lacks them). Every video done: the summary, nothing written. Any to do: refused
    in one line, since nothing could be computed into it."""
    plan = _plan(store, valid, force=False)
    _keep_refused(store, [job for job in mine if job.error], plan)
    rows.update(plan.rows)
    todo = [job.video_id for job in plan.todo]
    if todo:
        raise FlowError(f"the flow store {shown(store.root)} cannot be written (a read-only file system or no "
                        f"permission) and {len(todo)} of the run's {len(mine)} videos are not finished in it "
                        f"(e.g. {todo[0]}): run flow where the store can be written, or choose another work_dir")
    failures = sorted([(r.video_id, r.error) for r in rows.values() if r.status == "failed"])
    summary = FlowSummary(videos=len(mine), computed=0, skipped=len(mine) - len(failures), failed=len(failures),
                          frames=0, pairs=0, seconds=0.0, manifest=store.manifest_path(shard), shard=shard,
                          failures=failures)
    print(summary, flush=True)
    print(f"flow: {shown(store.root)} is read-only: nothing to compute, nothing written", flush=True)
    return summary


def check_config(cfg: FlowConfig) -> None:
    """FlowError for a bad [flow] setting, the device included: a torch backend on a device this
    machine lacks fails here, not video by video."""
    try:
        cfg.validate()
    except ValueError as e:
        raise FlowError(f"[flow] {e}") from None
    if cfg.backend == "torch" and cfg.device != "auto" and not cfg.scheduler:  # cluster nodes have their own
        from p3dbase.device import resolve_device

        resolve_device(cfg.device, "flow.device")


def _refuse(jobs: Sequence[FlowJob], cfg: FlowConfig, nested: dict[str, str]) -> tuple[list[FlowJob],
                                                                                       dict[str, VideoResult]]:
    """The jobs to run, and failed rows for those refused before anything is opened: the caller's
    reason (`FlowJob.error`), a bad video id or one the store cannot keep (store_name_problem; `nested`:
    nested_problems of the whole run), a frame folder leading out of `flow.rawframes_root`."""
    root = os.path.realpath(cfg.rawframes_root) if cfg.source == "rawframes" and cfg.rawframes_root else None
    valid: list[FlowJob] = []
    rows: dict[str, VideoResult] = {}
    for job in jobs:
        error = job.error
        if not error:
            try:
                check_video_id(job.video_id)
            except FlowError as e:
                error = str(e)
            else:
                error = store_name_problem(job.video_id, cfg.store) or nested.get(job.video_id, "")
        if not error and root is not None:
            real = os.path.realpath(job.path)
            if os.path.commonpath([real, root]) != root:
                error = (f"refused: {shown(job.path)} is a symbolic link to {shown(real)}, outside "
                         f"flow.rawframes_root {shown(root)}")
        if error:
            rows[job.video_id] = VideoResult(shown(job.video_id), shown(job.path), "failed",
                                             error=shown(" ".join(error.split())))
        else:
            valid.append(job)
    return valid, rows


@dataclass
class _Plan:
    """What step 3 of run_flow decided: rows of videos done (or refused), the jobs to compute with
    the origin each is made from, and index entries of finished videos the index lacked."""

    rows: dict[str, VideoResult] = field(default_factory=dict)
    todo: list[FlowJob] = field(default_factory=list)
    origins: dict[str, Origin | None] = field(default_factory=dict)
    adopted: list[IndexEntry] = field(default_factory=list)
    redo: set[str] = field(default_factory=set)  # computed even if the stored one opens (verify found it damaged)
    # The `recorded_ns` of the index entry each video's new entry supersedes: the new one is stamped after
    # it, so that it wins even over an entry from a clock running ahead (flow.index._merge).
    after: dict[str, int] = field(default_factory=dict)
    damaged_index: bool = False  # the index holds damaged lines: rewritten without them at the end
    gone: set[str] = field(default_factory=set)  # done videos whose source is gone (kept as stored)


class _Notes:
    """Why videos are redone, printed as one line each for the first few and a count for the rest."""

    SHOWN = 10

    def __init__(self) -> None:
        self.count = 0

    def add(self, line: str) -> None:
        self.count += 1
        if self.count <= self.SHOWN:
            print(f"flow: {line}", flush=True)

    def close(self) -> None:
        if self.count > self.SHOWN:
            print(f"flow: ... and {self.count - self.SHOWN} more videos redone for such reasons", flush=True)


STAT_AHEAD_MIN = 20_000  # videos from which a re-run's stats are taken by a child process (flow.stat_ahead)


class _Ahead(NamedTuple):
    """Each job's source path as text, and the child process taking every source's and stored
    video's stat meanwhile (None: the plan stats them itself)."""

    paths: list[str]
    stats: StatsAhead | None


@contextlib.contextmanager
def _stats_ahead(store: Store, jobs: Sequence[FlowJob], force: bool) -> Iterator[_Ahead]:
    """Start the plan's stats on the other core (many videos, not --force); the child is reaped on
    the way out whatever happens."""
    paths = [os.fspath(job.path) for job in jobs]  # once: a Path is formatted anew for each use
    stats = None
    if not force and len(jobs) >= STAT_AHEAD_MIN and can_fork():
        prefix, suffix = os.path.join(store.root, ""), PACK_SUFFIX if store.layout == "packed" else ""
        both = (p for path, job in zip(paths, jobs, strict=True) for p in (path, prefix + job.video_id + suffix))
        stats = StatsAhead(both, 2 * len(jobs))
    try:
        yield _Ahead(paths, stats)
    finally:
        if stats is not None:
            stats.close()


def _plan(store: Store, jobs: Sequence[FlowJob], force: bool, ahead: _Ahead | None = None) -> _Plan:
    """Sort the jobs into done and to do by the index, a `stat` of each source and stored video (no
    pack is opened unless the index lacks it or disagrees with it). The stats are `ahead`'s when
    it took them (its paths are the jobs' paths as text)."""
    # Stored paths as strings: the ids were checked in step 1, and pathlib costs more than the stat.
    prefix, suffix = os.path.join(store.root, ""), PACK_SUFFIX if store.layout == "packed" else ""
    read = store.index.read()
    paths = ahead.paths if ahead is not None else [os.fspath(job.path) for job in jobs]
    known = ahead.stats.result() if ahead is not None and ahead.stats is not None else None
    for problem in read.problems:
        print(f"flow: {problem}", flush=True)
    digest = store.settings_digest
    plan, notes = _Plan(), _Notes()
    plan.damaged_index = bool(read.problems)
    earlier: dict[str, VideoResult] | None = None  # manifest rows: timings of videos indexed from their packs
    entries, rows, stat = read.entries, plan.rows, os.stat
    # Per video (source size, source mtime, stored size, stored mtime) as the child found them.
    found: Iterable[tuple[int, ...] | None] = (itertools.repeat(None) if known is None
                                               else zip(*[iter(known)] * 4, strict=True))
    for job, path, stats in zip(jobs, paths, found, strict=False):  # `found` may be endless
        video_id = job.video_id
        entry = entries.get(video_id)
        if not force and entry is not None and entry.state == "done" and entry.settings == digest:
            if stats is None:
                stats = _stats(path, prefix + video_id + suffix)
            if stats == (entry.source_size, entry.source_mtime_ns, entry.stored_size, entry.stored_mtime_ns) \
                    and stats[0] != MISSING and stats[2] != MISSING:
                # The common case, kept lean (650,000 of them): finished from this very source and settings.
                rows[video_id] = VideoResult(video_id, path if path.isascii() else shown(path), "done",  # ASCII: shown
                                             entry.frames, entry.flows, entry.declared_frames, entry.seconds)
                continue
        # Anything else is looked at again, as it is now.
        if entry is not None:
            plan.after[video_id] = entry.recorded_ns
        try:
            source = stat(path)
        except OSError:
            # A source gone (a rawframes tree deleted once imported, as docs/flow.md allows; a wrong
            # flow.rawframes_root): the video stored from it stays done. Redone, it failed, and its
            # failure deleted the stored video.
            if not force and entry is not None and entry.state == "damaged" and entry_stat(
                    prefix + video_id + suffix) is not None:  # kept as it is: nothing to redo it from
                rows[video_id] = VideoResult(video_id, shown(job.path), "failed", error=(
                    f"`verify` found it damaged ({entry.note.removesuffix(': ' + REDO_DAMAGED)}) and its source "
                    f"{shown(job.path)} is gone: it cannot "
                    "be redone; bring the source back and re-run"))
                continue
            kept = None if force else _kept_without_source(store, job, entry, digest)
            if kept is None:  # fails in the worker, saying why
                plan.origins[video_id] = None
                plan.todo.append(job)
                continue
            notes.add(f"video {video_id}: its source {shown(job.path)} is gone: the stored video is kept")
            plan.gone.add(video_id)
            if kept is not entry:
                plan.adopted.append(kept)
            rows[video_id] = _done_row(job, kept)
            continue
        stored = entry_stat(prefix + video_id + suffix)
        origin = plan.origins[video_id] = Origin(digest, source.st_size, source.st_mtime_ns)
        if force:
            plan.todo.append(job)
            continue
        if stored is not None and store.layout == "packed" and os.path.isdir(store.path(job.video_id)):
            plan.rows[job.video_id] = VideoResult(
                job.video_id, shown(job.path), "failed",
                error=f"{shown(store.path(job.video_id))} is a folder where its pack belongs: move it out of the store")
            continue
        if entry is not None and stored is not None and entry.state == "done":
            if entry.settings != digest or entry.origin != origin:
                # Redone after its entry by a run stopped before it indexed it (a --force run with new
                # settings), or made before the source changed: the stored video says which.
                if (redone := _check_stored(store, job, origin, legacy=False, earlier=None)) is not None:
                    plan.adopted.append(redone)
                    plan.rows[video_id] = _done_row(job, redone)
                    continue
                why = ("made with other settings than the store's (a --force run was stopped before it)"
                       if entry.settings != digest else f"{shown(job.path)} changed since it was made (size or time)")
                notes.add(f"video {job.video_id}: {why}: redone")
                plan.todo.append(job)
                continue
            notes.add(f"video {job.video_id}: the index disagrees with {shown(store.path(job.video_id))} (changed "
                      "since it was written): checking it")
        elif entry is not None and entry.state == "damaged" and stored is not None:
            notes.add(f"video {job.video_id}: `verify` found it damaged ({entry.note}): redone")
            plan.todo.append(job)
            plan.redo.add(job.video_id)
            continue
        if stored is None:
            plan.todo.append(job)
            continue
        # Stored but not (rightly) indexed: a store from before the index, a run killed before it
        # recorded the video, a damaged index line. The stored video says what it was made from.
        if earlier is None:
            earlier = _earlier_rows(store)
        entry = _check_stored(store, job, origin, legacy=not read.exists, earlier=earlier.get(job.video_id))
        if entry is None:
            notes.add(f"video {job.video_id}: stored without a record of being made from this source and these "
                      "settings, or damaged: redone")
            plan.todo.append(job)
        else:
            plan.adopted.append(entry)
            plan.rows[job.video_id] = _done_row(job, entry)
    notes.close()
    return plan


def _done_row(job: FlowJob, entry: IndexEntry) -> VideoResult:
    """The manifest row of a video found finished, from its index entry."""
    return VideoResult(job.video_id, shown(job.path), "done", entry.frames, entry.flows, entry.declared_frames,
                       entry.seconds)


def _keep_refused(store: Store, refused: Sequence[FlowJob], plan: _Plan) -> None:
    """A finished video whose file the caller refuses now (a dangling link or a FIFO where the video
    was) is kept as one whose source is gone (docs/flow.md), with one line saying so: the refusal is
    why it cannot be redone, not a reason to call it failed. Its pack is opened (few are refused)."""
    for job in refused:
        try:
            if store_name_problem(check_video_id(job.video_id), store.layout):
                continue  # refused for its id: nothing of that name is in the store
        except FlowError:
            continue
        kept = _kept_without_source(store, job, None, store.settings_digest)
        if kept is None:
            continue
        print(f"flow: video {shown(job.video_id)}: its source is refused ({shown(job.error)}): the stored video is "
              "kept", flush=True)
        plan.gone.add(job.video_id)
        plan.rows[job.video_id] = _done_row(job, kept)


def _kept_without_source(store: Store, job: FlowJob, entry: IndexEntry | None, digest: str) -> IndexEntry | None:
    """The index entry of a stored video whose source is gone, when it is finished under the store's
    settings: its own entry (the stored video unchanged since), or one from the video's record of what
    it was made from (it opens: made for this video, under these settings). None: nothing to keep."""
    stored = entry_stat(store.path(job.video_id))
    if stored is None:
        return None
    if entry is not None and entry.state == "done" and entry.settings == digest \
            and (entry.stored_size, entry.stored_mtime_ns) == stored:
        return entry
    return _check_stored(store, job, None, legacy=False, earlier=None)


def _stats(source: str, stored: str) -> tuple[int, int, int, int]:
    """(size, mtime_ns) of a source and of its stored video, as flow.stat_ahead gives them."""
    return (*size_mtime(source), *size_mtime(stored))


def _check_stored(store: Store, job: FlowJob, origin: Origin | None, *, legacy: bool,
                  earlier: VideoResult | None) -> IndexEntry | None:
    """The index entry of a stored video that opens and was made from `origin` (in a store written
    before it kept an index, a video without a record of its origin is taken as made from the
    source as it is now; `origin` None, the source being gone: whatever its own record names, under
    the store's settings); None when it must be redone."""
    stored = entry_stat(store.path(job.video_id))
    try:
        with store.open(job.video_id) as frames:
            made = Origin.from_dict(frames.origin)
            if origin is None:
                if made is None or made.settings != store.settings_digest:
                    return None
                origin = made
            elif made != origin and not (legacy and frames.origin is None):
                return None
            counts = frames.num_frames, frames.num_flows
            declared = _declared(frames.origin)
    except FlowError:
        return None
    if stored is None:
        return None
    if earlier is not None and earlier.status == "done":
        declared, seconds = earlier.declared_frames, earlier.seconds
    else:
        seconds = ""
    return _entry(job, origin, stored, frames=counts[0], flows=counts[1], declared=declared, seconds=seconds)


def _declared(origin: dict[str, Any] | None) -> int:
    """The container's frame count the flow stage kept with a stored video (0: unknown)."""
    try:
        return int((origin or {}).get("declared_frames", 0))
    except (TypeError, ValueError):
        return 0


def _entry(job: FlowJob, origin: Origin, stored: tuple[int, int], *, frames: int, flows: int, declared: int,
           seconds: str) -> IndexEntry:
    return IndexEntry(job.video_id, "done", origin.settings, origin.size, origin.mtime_ns, stored[0], stored[1],
                      frames, flows, declared, seconds, source=shown(job.path))


def _earlier_rows(store: Store) -> dict[str, VideoResult]:
    """Rows of earlier manifests (every shard's), for the timings of videos indexed from their packs."""
    rows: dict[str, VideoResult] = {}
    for path in sorted(store.root.glob("manifest*.csv")):
        try:
            rows.update(read_manifest(path))
        except FlowError:
            continue  # a foreign or damaged manifest only loses its timings
    return rows


class _Task(NamedTuple):
    """One video to compute: the job, what it is made from, and whether to compute it even when a
    finished copy is stored (--force, or `verify` found that copy damaged)."""

    job: FlowJob
    origin: Origin | None
    force: bool

    @property
    def video_id(self) -> str:
        return self.job.video_id

    @property
    def path(self) -> Path:
        return self.job.path


@dataclass
class _Tally:
    computed: int = 0
    found: int = 0  # found finished by another run meanwhile
    frames: int = 0
    pairs: int = 0


def _compute_all(todo: Sequence[FlowJob], store: Store, cfg: FlowConfig, *, force: bool, plan: _Plan,
                 rows: dict[str, VideoResult], index: IndexWriter, manifest: Path) -> _Tally:
    """Run the jobs in local worker processes, on a Dask cluster or here; record each result in
    `rows` and (finished videos) the index, rewriting the manifest and flushing the index every
    MANIFEST_EVERY_S so that a killed run shows its progress and loses no finished video."""
    for job in todo:
        rows[job.video_id] = VideoResult(job.video_id, shown(job.path), "pending")
    # Each job with what it is made from and whether to redo it whatever is stored: sent to a worker
    # as it is, so that nothing of the size of the run travels with every job.
    tasks = [_Task(job, plan.origins.get(job.video_id), force or job.video_id in plan.redo) for job in todo]
    # Longest first (file size as the proxy), so no long video starts last while the others idle.
    tasks.sort(key=lambda t: -(t.origin.size if t.origin is not None else 0))
    workers, devices = _workers(cfg)
    threads = 1 if workers > 1 or cfg.scheduler else 0
    owner = (socket.gethostname(), os.getpid())
    out_dir = store.root

    def run(task: _Task, k: int) -> tuple[VideoResult, bool]:
        return process_video(task.job, out_dir, cfg, origin=task.origin, threads=threads,
                             device=devices[k % len(devices)], force=task.force, owner=owner)

    if cfg.scheduler:
        results: Iterable[tuple[VideoResult, bool]] = dask_unordered(
            (joblib.delayed(process_video)(t.job, out_dir, cfg, origin=t.origin, threads=threads, force=t.force,
                                           device=devices[k % len(devices)], owner=owner)
             for k, t in enumerate(tasks)), cfg.scheduler)
    elif workers == 1 or len(tasks) <= 1:
        results = (process_video(t.job, out_dir, cfg, origin=t.origin, device=devices[0], force=t.force)
                   for t in tasks)
    else:
        results = _pool_results(tasks, run, min(workers, len(tasks)))

    tally = _Tally()
    jobs = {task.video_id: task.job for task in tasks}
    start = last_write = time.perf_counter()
    try:
        with progress_bar(total=len(todo), desc="flow", unit="video") as bar:
            for row, fresh in results:
                rows[row.video_id] = row
                if row.status == "done":
                    tally.computed += fresh
                    tally.found += not fresh
                    tally.frames += row.frames if fresh else 0
                    tally.pairs += row.flow_pairs if fresh else 0
                    _record(index, store, jobs[row.video_id], plan.origins.get(row.video_id), row,
                            plan.after.get(row.video_id, 0))
                bar.update()
                failed = sum(r.status == "failed" for r in rows.values())
                bar.set_postfix(pairs_s=f"{tally.pairs / max(time.perf_counter() - start, 1e-9):.1f}",
                                failed=failed, refresh=False)
                if time.perf_counter() - last_write > MANIFEST_EVERY_S:
                    index.flush()
                    write_manifest(manifest, list(rows.values()))
                    last_write = time.perf_counter()
    except BaseException:
        store.clean_stale(list(jobs))  # first free what was being written: a full disk may then take the rest
        with contextlib.suppress(P3DError):  # the disk is full: the error being raised says so
            index.flush()
            write_manifest(manifest, list(rows.values()))
        raise
    index.flush()
    write_manifest(manifest, list(rows.values()))
    return tally


def _record(index: IndexWriter, store: Store, job: FlowJob, origin: Origin | None, row: VideoResult,
            after: int) -> None:
    """A finished video into the index, with the stat of what was stored (None: not indexed, so the
    next run checks the stored video itself), stamped after the entry it supersedes (`after`)."""
    stored = entry_stat(store.path(job.video_id))
    if origin is not None and stored is not None:
        index.add(_entry(job, origin, stored, frames=row.frames, flows=row.flow_pairs, declared=row.declared_frames,
                         seconds=row.seconds), after=after)
