"""The flow stage (`make flow`): videos -> resized RGB frames + TV-L1 flow images in a store.

Every video is decoded in chunks of `batch_pairs` frames (the last frame of a chunk is carried into
the next, so every pair is computed however long the video), its flow computed by the configured
backend, encoded to uint8 and written under a temporary name that is renamed when the video is
complete. Videos run in parallel in local worker processes (loky), or on a Dask cluster with
`[flow] scheduler`, a shard of them per machine with `shard=(i, n)`. Finished videos are skipped on
a re-run; a broken video is recorded as failed in the manifest and the rest goes on.

Each video is processed holding its lock in the store (`Store.lock`), so two runs on one store (a
re-launch, a scheduler retry) never clean, write or remove the same video at once: the second waits
and then finds it done. A worker process that dies (killed for memory, a crash) fails only its
video; a worker whose run was killed stops at the next chunk and removes what it was writing. A full
disk stops the run with one DiskFullError (a FlowError).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import joblib
import numpy as np

from flow.config import FlowConfig
from flow.encoding import encode
from flow.errors import FlowError
from flow.manifest import VideoResult, manifest_name, read_manifest, write_manifest
from flow.rawframes import import_video, survey
from flow.store import STORE_FILE, OtherSettingsError, Store, check_video_id, create_store, open_store
from flow.tvl1 import OpenCVTVL1, to_gray
from flow.video import VideoReader
from p3dbase.atomic import DiskFullError, disk_full, is_disk_full
from p3dbase.errors import shown
from p3dbase.progress import progress_bar

# [flow] fields that do not change what is written: a store made with other values of these is
# still the same store.
RUN_ONLY_FIELDS = ("jobs", "scheduler", "device", "batch_pairs", "missing_frames_tolerance",
                   "store", "codec", "bound", "jpeg_quality", "max_pixels", "verify", "source",
                   "rawframes_root", "rawframes_bound")
# What decides imported rawframes (source = "rawframes"): TV-L1's settings are the other tool's, unknown here.
RAWFRAMES_FIELDS = ("size", "rawframes_bound")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "NUMEXPR_NUM_THREADS")
MANIFEST_EVERY_S = 30.0  # rewrite the manifest this often while running, so a killed run shows progress


@dataclass(frozen=True)
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
        return {"source": "rawframes", **{k: getattr(cfg, k) for k in RAWFRAMES_FIELDS}}
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_ONLY_FIELDS}


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
        key = (tuple(sorted(store_params(cfg).items())), device or cfg.device)
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


def process_video(job: FlowJob, out_dir: Path, cfg: FlowConfig, *, threads: int = 0,
                  device: str | None = None, force: bool = False,
                  owner: tuple[str, int] | None = None) -> tuple[VideoResult, bool]:
    """Decode, compute and store one video holding its lock; returns its row and whether this call
    computed it (False: complete in the store, e.g. finished meanwhile by another run; with
    `force` it is always computed). Never raises for a broken video; a full disk raises
    DiskFullError after removing what it was writing.

    `threads` > 0 sets OpenCV's thread count first (1 when several videos run at once). `owner` is
    the (host, pid) of the run: a worker process whose run has died stops at the next chunk and
    exits.
    """
    start = time.perf_counter()
    if threads > 0:
        cv2.setNumThreads(threads)
    alive = None if owner is None else (*owner, os.getppid() == owner[1])
    store = open_store(out_dir)
    try:
        _check_owner(alive)
        with store.lock(job.video_id):
            if not force and store.has(job.video_id):
                try:
                    return _done_row(store, job, None, cfg.verify), False
                except FlowError:
                    pass  # damaged: redo it
            store.remove_temp(job.video_id)  # what a killed writer left
            row = _compute(job, store, cfg, device, alive)
    except _Orphaned:
        os._exit(1)  # a worker of a killed run: its writer has removed the temporary file
    except OSError as e:
        if is_disk_full(e):  # taking the lock (creating its file) can meet a full disk too
            raise e if isinstance(e, DiskFullError) else disk_full(store.lock_path(job.video_id), e) from e
        raise
    row.seconds = f"{time.perf_counter() - start:.3f}"
    return row, True


def _compute(job: FlowJob, store: Store, cfg: FlowConfig, device: str | None,
             owner: tuple[str, int, bool] | None) -> VideoResult:
    row = VideoResult(job.video_id, shown(job.path), "failed")
    try:
        if cfg.source == "rawframes":  # an existing frame folder: copied, nothing computed
            with store.writer(job.video_id) as writer:
                row.declared_frames = len(import_video(job.path, writer, cfg, lambda: _check_owner(owner)).frames)
            row.status, row.frames, row.flow_pairs = "done", writer.num_frames, writer.num_flows
            return row
        reader = VideoReader(job.path, cfg.size, cfg.max_pixels)
        row.declared_frames = reader.declared_frames
        backend = make_backend(cfg, device)
        with store.writer(job.video_id) as writer:
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
        store.remove(job.video_id)  # nothing half-written, nor an older result, stays for it
        error = str(e) if isinstance(e, FlowError) else f"{type(e).__name__}: {e}"
        row.error = shown(" ".join(error.split()))  # one printable line in the manifest
    return row


def _select_shard(jobs: Sequence[FlowJob], shard: tuple[int, int]) -> list[FlowJob]:
    i, n = shard
    if not (isinstance(i, int) and isinstance(n, int) and n >= 1 and 0 <= i < n):
        raise FlowError(f"--shard: expected 0 <= i < n, got {i}/{n} (i is 0-based)")
    ordered = sorted(jobs, key=lambda j: j.video_id)
    seen: set[str] = set()
    for job in ordered:
        if job.video_id in seen:
            raise FlowError(f"video id {job.video_id!r} appears twice in the list of videos")
        seen.add(job.video_id)
    return ordered[i::n]


def _earlier_rows(out_dir: Path, own: Path) -> dict[str, VideoResult]:
    """Rows of earlier manifests (every shard's, then this run's own), to keep their timings."""
    rows: dict[str, VideoResult] = {}
    for path in sorted(out_dir.glob("manifest*.csv")) + [own]:
        try:
            rows.update(read_manifest(path))
        except FlowError:
            continue  # a foreign or damaged manifest only loses its timings
    return rows


def _done_row(store: Store, job: FlowJob, earlier: VideoResult | None, verify: bool) -> VideoResult:
    """The row of a video found complete in the store (opening it checks its index, `verify` the
    checksum of every image: FlowError if damaged); the time it took and its declared count come
    from an earlier manifest when there is one."""
    with store.open(job.video_id) as frames:
        if verify:
            frames.verify()
        row = VideoResult(job.video_id, shown(job.path), "done", frames.num_frames, frames.num_flows)
    if earlier is not None and earlier.status == "done":
        row.declared_frames, row.seconds = earlier.declared_frames, earlier.seconds
    else:
        try:
            row.declared_frames = VideoReader(job.path).declared_frames
        except FlowError:
            pass
    return row


def _workers(cfg: FlowConfig) -> tuple[int, list[str | None]]:
    """How many videos at once, and the torch devices to hand out in turn."""
    if cfg.backend == "torch" and cfg.device in ("auto", "cuda"):
        import torch

        gpus = torch.cuda.device_count()
        if gpus:
            return cfg.jobs or gpus, [f"cuda:{k}" for k in range(gpus)]
        return cfg.jobs or 1, [None]
    if cfg.backend == "torch":
        return cfg.jobs or 1, [None]
    return cfg.jobs or joblib.cpu_count(), [None]


def _dask_results(tasks: Iterable[Any], scheduler: str) -> Iterator[VideoResult]:
    try:
        from distributed import Client
    except ImportError:
        raise FlowError(f"flow.scheduler = {scheduler!r} needs dask.distributed: "
                        "pip install 'p3d-two-stream[dist]'") from None
    try:
        client = Client(scheduler)  # waits distributed.comm.timeouts.connect (dask config)
    except (OSError, TimeoutError) as e:
        raise FlowError(f"flow.scheduler: cannot reach the Dask scheduler at {scheduler}: {e}") from None
    with client, joblib.parallel_config(backend="dask"):
        yield from joblib.Parallel(n_jobs=-1, return_as="generator_unordered")(tasks)


def _died_reason(err: BaseException) -> str:
    codes = re.search(r"exit codes of the workers are (\{[^}]*\})", str(err))
    return (f"its worker process died while computing it, also when run alone (exit code "
            f"{codes.group(1) if codes else '?'}: killed, e.g. for lack of memory, or crashed)")


def _pool_results(todo: Sequence[FlowJob], run: Callable[[FlowJob, int], Any],
                  workers: int) -> Iterator[tuple[VideoResult, bool]]:
    """`run(job, k)` for every job in `workers` local processes (loky), as they finish.

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

    def submit(job: FlowJob, k: int) -> Future:
        return get_reusable_executor(max_workers=workers, env=env).submit(run, job, k)

    pending = collections.deque(enumerate(todo))
    suspects: collections.deque[tuple[int, FlowJob]] = collections.deque()
    inflight: dict[Future, tuple[int, FlowJob, bool]] = {}
    full: DiskFullError | None = None
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
            done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
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
        return create_store(out_dir, cfg.store, codec=cfg.codec, bound=cfg.bound,
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
             force: bool = False, strict: bool = False, on_start: Callable[[], None] | None = None) -> FlowSummary:
    """Process every video of `shard` = (i, n) (0-based i; the i-th of n interleaved parts of the
    videos sorted by id) into the store at `out_dir`; skip those already complete unless `force`.

    Prints a summary and returns it; with `strict`, raises FlowError after finishing the rest if
    any video failed. The manifest (`manifest.csv`, or one per shard) lists every video of the run.
    `on_start` is called once the store has accepted the settings (the pipeline writes config.toml then).
    """
    try:
        cfg.validate()
    except ValueError as e:
        raise FlowError(f"[flow] {e}") from None
    mine = _select_shard(videos, shard)
    out_dir = Path(out_dir).resolve()  # workers (processes, cluster nodes) may run elsewhere
    store = _open_for_run(out_dir, cfg, shard, force)
    if on_start is not None:
        on_start()
    manifest = out_dir / manifest_name(shard)
    earlier = _earlier_rows(out_dir, manifest)

    rows: dict[str, VideoResult] = {}
    valid: list[FlowJob] = []
    for job in mine:
        error = job.error
        if not error:
            try:
                check_video_id(job.video_id)
            except FlowError as e:
                error = str(e)
        if error:  # refused before decoding: recorded, never opened
            rows[job.video_id] = VideoResult(shown(job.video_id), shown(job.path), "failed",
                                             error=shown(" ".join(error.split())))
        else:
            valid.append(job)
    refused = [(r.video_id, r.error) for r in rows.values()]
    store.clean_stale([job.video_id for job in valid])  # what killed runs left (not what live ones write)
    todo: list[FlowJob] = []
    for job in valid:
        if not force and store.has(job.video_id):
            try:
                rows[job.video_id] = _done_row(store, job, earlier.get(job.video_id), cfg.verify)
                continue
            except FlowError:  # damaged since it was written: redone (under its lock)
                pass
        rows[job.video_id] = VideoResult(job.video_id, shown(job.path), "pending")
        todo.append(job)
    skipped = len(valid) - len(todo)
    if cfg.source == "rawframes":
        print(survey([job.path for job in valid]), flush=True)
    # Longest first (file size as the proxy), so no long video starts last while the others idle.
    todo.sort(key=lambda j: -(j.path.stat().st_size if j.path.is_file() else 0))

    workers, devices = _workers(cfg)
    threads = 1 if workers > 1 or cfg.scheduler else 0
    owner = (socket.gethostname(), os.getpid())
    if cfg.scheduler:
        tasks = (joblib.delayed(process_video)(job, out_dir, cfg, threads=threads, force=force,
                                               device=devices[k % len(devices)], owner=owner)
                 for k, job in enumerate(todo))
        results: Iterable[tuple[VideoResult, bool]] = _dask_results(tasks, cfg.scheduler)
    elif workers == 1 or len(todo) <= 1:
        results = (process_video(job, out_dir, cfg, device=devices[0], force=force) for job in todo)
    else:
        def run(job: FlowJob, k: int) -> tuple[VideoResult, bool]:
            return process_video(job, out_dir, cfg, threads=threads, device=devices[k % len(devices)],
                                 force=force, owner=owner)
        results = _pool_results(todo, run, min(workers, len(todo)))

    start = time.perf_counter()
    computed = failed = frames = pairs = 0
    failures: list[tuple[str, str]] = list(refused)
    last_write = start
    try:
        with progress_bar(total=len(todo), desc="flow", unit="video") as bar:
            for row, fresh in results:
                rows[row.video_id] = row
                if row.status == "done" and not fresh:
                    skipped += 1  # another run finished it meanwhile
                elif row.status == "done":
                    computed += 1
                    frames += row.frames
                    pairs += row.flow_pairs
                else:
                    failures.append((row.video_id, row.error))
                failed = len(failures)
                bar.update()
                bar.set_postfix(pairs_s=f"{pairs / max(time.perf_counter() - start, 1e-9):.1f}",
                                failed=failed, refresh=False)
                if time.perf_counter() - last_write > MANIFEST_EVERY_S:
                    write_manifest(manifest, list(rows.values()))
                    last_write = time.perf_counter()
    except BaseException:
        try:
            write_manifest(manifest, list(rows.values()))
        except FlowError:
            pass  # the disk is full: the error being raised says so
        raise
    write_manifest(manifest, list(rows.values()))
    store.clean_stale([job.video_id for job in todo])  # what workers that died were writing
    failed = len(failures)

    summary = FlowSummary(videos=len(mine), computed=computed, skipped=skipped, failed=failed,
                          frames=frames, pairs=pairs, seconds=time.perf_counter() - start,
                          manifest=manifest, shard=shard, failures=sorted(failures))
    print(summary, flush=True)
    if strict and failed:
        video_id, error = summary.failures[0]
        raise FlowError(f"{failed} of {len(mine)} videos failed (--strict), e.g. {video_id}: {error}; "
                        f"see {shown(manifest)}")
    return summary
