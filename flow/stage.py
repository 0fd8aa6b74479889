"""The flow stage (`make flow`): videos -> resized RGB frames + TV-L1 flow images in a store.

Every video is decoded in chunks of `batch_pairs` frames (the last frame of a chunk is carried into
the next, so every pair is computed however long the video), its flow computed by the configured
backend, encoded to uint8 and written under a temporary name that is renamed when the video is
complete. Videos run in parallel with joblib (local processes, or a Dask cluster with
`[flow] scheduler`), a shard of them per machine with `shard=(i, n)`. Finished videos are skipped on
a re-run; a broken video is recorded as failed in the manifest and the rest goes on.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import joblib
import numpy as np
from tqdm import tqdm

from flow.config import FlowConfig
from flow.encoding import encode
from flow.errors import FlowError
from flow.manifest import VideoResult, manifest_name, read_manifest, write_manifest
from flow.store import Store, create_store, open_store
from flow.tvl1 import OpenCVTVL1, to_gray
from flow.video import VideoReader

# [flow] fields that do not change what is written: a store made with other values of these is
# still the same store.
RUN_ONLY_FIELDS = ("jobs", "scheduler", "device", "batch_pairs", "missing_frames_tolerance",
                   "store", "codec", "bound", "jpeg_quality")
MANIFEST_EVERY_S = 30.0  # rewrite the manifest this often while running, so a killed run shows progress


@dataclass(frozen=True)
class FlowJob:
    """One video to process: its id in the store (`Class/v_Class_g01_c01`) and its file."""

    video_id: str
    path: Path


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
        lines.append(f"flow: manifest {self.manifest}")
        return "\n".join(lines)


def store_params(cfg: FlowConfig) -> dict[str, Any]:
    """The settings that decide the stored frames and flow, recorded in store.json."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_ONLY_FIELDS}


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
    raise FlowError(f"flow.backend: must be 'opencv' or 'torch', got {cfg.backend!r}")


def process_video(job: FlowJob, out_dir: Path, cfg: FlowConfig, *, threads: int = 0,
                  device: str | None = None) -> VideoResult:
    """Decode, compute and store one video; never raises for a broken video, returns its row.

    `threads` > 0 sets OpenCV's thread count first (1 when several videos run at once).
    """
    start = time.perf_counter()
    if threads > 0:
        cv2.setNumThreads(threads)
    store = open_store(out_dir)
    row = VideoResult(job.video_id, str(job.path), "failed")
    try:
        reader = VideoReader(job.path, cfg.size)
        row.declared_frames = reader.declared_frames
        backend = make_backend(cfg, device)
        with store.writer(job.video_id) as writer:
            last = None  # the previous chunk's last frame: the first frame of the next pair
            for chunk in reader.chunks(cfg.batch_pairs + 1, cfg.batch_pairs):
                writer.add_rgb(chunk)
                gray = to_gray(chunk)
                if last is not None:
                    gray = np.concatenate([last[None], gray])
                if len(gray) > 1:
                    writer.add_flow(encode(backend.compute(gray), cfg.bound))
                last = gray[-1]
            reader.check_complete(cfg.missing_frames_tolerance)
            if writer.num_frames < 2:
                raise FlowError(f"{job.path}: only one frame, flow needs at least two")
        row.status, row.frames, row.flow_pairs = "done", writer.num_frames, writer.num_flows
    except Exception as e:  # a broken video must not stop the run: record it and go on
        store.remove(job.video_id)  # nothing half-written, nor an older result, stays for it
        row.error = str(e) if isinstance(e, FlowError) else f"{type(e).__name__}: {e}"
        row.error = " ".join(row.error.split())  # one line in the manifest
    row.seconds = f"{time.perf_counter() - start:.3f}"
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


def _done_row(store: Store, job: FlowJob, earlier: VideoResult | None) -> VideoResult:
    """The row of a video found complete in the store (opening it checks it is readable); the
    time it took and its declared count come from an earlier manifest when there is one."""
    with store.open(job.video_id) as frames:
        row = VideoResult(job.video_id, str(job.path), "done", frames.num_frames, frames.num_flows)
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


def run_flow(videos: Sequence[FlowJob], out_dir: Path, cfg: FlowConfig, *, shard: tuple[int, int] = (0, 1),
             force: bool = False, strict: bool = False) -> FlowSummary:
    """Process every video of `shard` = (i, n) (0-based i; the i-th of n interleaved parts of the
    videos sorted by id) into the store at `out_dir`; skip those already complete unless `force`.

    Prints a summary and returns it; with `strict`, raises FlowError after finishing the rest if
    any video failed. The manifest (`manifest.csv`, or one per shard) lists every video of the run.
    """
    try:
        cfg.validate()
    except ValueError as e:
        raise FlowError(f"[flow] {e}") from None
    mine = _select_shard(videos, shard)
    out_dir = Path(out_dir).resolve()  # workers (processes, cluster nodes) may run elsewhere
    store = create_store(out_dir, cfg.store, codec=cfg.codec, bound=cfg.bound,
                         jpeg_quality=cfg.jpeg_quality, params=store_params(cfg), overwrite=force)
    manifest = out_dir / manifest_name(shard)
    earlier = _earlier_rows(out_dir, manifest)

    store.clean_stale([job.video_id for job in mine])  # what a killed run was writing
    rows: dict[str, VideoResult] = {}
    todo: list[FlowJob] = []
    for job in mine:
        if not force and store.has(job.video_id):
            try:
                rows[job.video_id] = _done_row(store, job, earlier.get(job.video_id))
                continue
            except FlowError:  # damaged since it was written: do it again
                store.remove(job.video_id)
        rows[job.video_id] = VideoResult(job.video_id, str(job.path), "pending")
        todo.append(job)
    skipped = len(mine) - len(todo)
    # Longest first (file size as the proxy), so no long video starts last while the others idle.
    todo.sort(key=lambda j: -(j.path.stat().st_size if j.path.is_file() else 0))

    workers, devices = _workers(cfg)
    threads = 1 if workers > 1 or cfg.scheduler else 0
    tasks = (joblib.delayed(process_video)(job, out_dir, cfg, threads=threads,
                                           device=devices[k % len(devices)])
             for k, job in enumerate(todo))
    if cfg.scheduler:
        results: Iterable[VideoResult] = _dask_results(tasks, cfg.scheduler)
    elif workers == 1 or len(todo) <= 1:
        results = (process_video(job, out_dir, cfg, device=devices[0]) for job in todo)
    else:
        results = joblib.Parallel(n_jobs=min(workers, len(todo)), return_as="generator_unordered")(tasks)

    start = time.perf_counter()
    computed = failed = frames = pairs = 0
    failures: list[tuple[str, str]] = []
    last_write = start
    try:
        with tqdm(total=len(todo), desc="flow", unit="video", dynamic_ncols=True) as bar:
            for row in results:
                rows[row.video_id] = row
                if row.status == "done":
                    computed += 1
                    frames += row.frames
                    pairs += row.flow_pairs
                else:
                    failed += 1
                    failures.append((row.video_id, row.error))
                bar.update()
                bar.set_postfix(pairs_s=f"{pairs / max(time.perf_counter() - start, 1e-9):.1f}",
                                failed=failed, refresh=False)
                if time.perf_counter() - last_write > MANIFEST_EVERY_S:
                    write_manifest(manifest, list(rows.values()))
                    last_write = time.perf_counter()
    finally:
        write_manifest(manifest, list(rows.values()))

    summary = FlowSummary(videos=len(mine), computed=computed, skipped=skipped, failed=failed,
                          frames=frames, pairs=pairs, seconds=time.perf_counter() - start,
                          manifest=manifest, shard=shard, failures=sorted(failures))
    print(summary, flush=True)
    if strict and failed:
        video_id, error = summary.failures[0]
        raise FlowError(f"{failed} of {len(mine)} videos failed (--strict), e.g. {video_id}: {error}; "
                        f"see {manifest}")
    return summary
