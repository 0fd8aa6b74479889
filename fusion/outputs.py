"""Each stream's network outputs on each video: computed in parallel processes, cached on disk.

A video's outputs for one stream are the logits of its score views and its pool5 feature averaged
over the feature views. They are saved as `<cache_dir>/<video_id>.npz` together with the size and
mtime of the video's file in the store; the cache directory's name holds a key of the checkpoint's
bytes and the view settings. So a killed run resumes, a re-run reads everything back without the
network, and a video redone by `make flow` is recomputed.

On a CPU the videos are shared among `jobs` processes of one thread each: tiny clips give a network
too little work per operation for several threads, and on a busy machine threads that wait for each
other lose far more (measured: a p3d_tiny batch took 21 ms with one thread, 283 ms with two, on two
cores shared with other jobs). On a GPU one process does everything.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flow.errors import FlowError
from flow.store import Store, open_store
from flow.video import opencv_single_thread
from fusion.config import EvalConfig
from fusion.report import save_npz
from fusion.scoring import ClipGeometry, StreamRunner, num_positions
from fusion.views import feature_views, score_views
from p3dbase.atomic import DiskFullError
from p3dbase.progress import progress_bar
from streams.checkpoint import load_stream


@dataclass(frozen=True)
class StreamSpec:
    """What a worker process needs to rebuild a stream: picklable, no model inside."""
    name: str  # "rgb" or "flow"
    checkpoint: Path
    geometry: ClipGeometry
    cache_dir: Path


@dataclass
class Outputs:
    """One stream's network outputs on one video."""
    logits: np.ndarray | None = None  # float32 [clips x crops, C], the score views
    feature: np.ndarray | None = None  # float32 [D], pool5 averaged over the feature views

    def has(self, scores: bool, features: bool) -> bool:
        return (not scores or self.logits is not None) and (not features or self.feature is not None)


def collect(store: Store, specs: Sequence[StreamSpec], needs: dict[str, tuple[bool, bool]], cfg: EvalConfig,
            device: torch.device) -> tuple[dict[str, dict[str, Outputs]], dict[str, str]]:
    """Outputs of every stream on the videos of `needs` ({video_id: (scores?, features?)}), computing
    what the cache lacks. Returns ({video_id: {stream: Outputs}} of the usable videos,
    {video_id: why not} of the others)."""
    outputs: dict[str, dict[str, Outputs]] = {}
    failed: dict[str, str] = {}
    todo = []
    for video_id, (scores, features) in needs.items():
        try:
            stored = store.has(video_id)
        except FlowError as e:  # not a valid video id
            failed[video_id] = str(e)
            continue
        if not stored:
            failed[video_id] = f"not in the store at {store.root} (failed or not run in `make flow`)"
            continue
        got = {s.name: read_cached(s, store, video_id) for s in specs}
        if all(o.has(scores, features) for o in got.values()):
            outputs[video_id] = got
        else:
            todo.append((video_id, scores, features))
    if todo:
        failed.update(_compute(store.root, specs, todo, cfg, device))
    for video_id, _, _ in todo:
        if video_id not in failed:
            outputs[video_id] = {s.name: read_cached(s, store, video_id) for s in specs}
    return outputs, failed


def read_cached(spec: StreamSpec, store: Store, video_id: str) -> Outputs:
    """The cached outputs, or empty Outputs when absent, damaged or older than the stored video."""
    path = _cache_path(spec, video_id)
    if not path.is_file():
        return Outputs()
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["signature"]) != _signature(store, video_id):
                return Outputs()
            return Outputs(data["logits"] if "logits" in data.files else None,
                           data["feature"] if "feature" in data.files else None)
    except (OSError, ValueError, KeyError, EOFError):
        return Outputs()


def _jobs(cfg: EvalConfig, device: torch.device) -> int:
    if device.type != "cpu":
        return 1
    if cfg.jobs:
        return cfg.jobs
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _compute(store_root: Path, specs: Sequence[StreamSpec], tasks: Sequence[tuple[str, bool, bool]],
             cfg: EvalConfig, device: torch.device) -> dict[str, str]:
    jobs = min(_jobs(cfg, device), len(tasks))
    failed = {}
    bar = progress_bar(total=len(tasks), desc="eval: network", unit="video", leave=False)
    if jobs == 1:
        threads = torch.get_num_threads()
        try:
            _init_worker(store_root, specs, cfg, device)
            for video_id, error in map(_work, tasks):
                bar.update()
                if error:
                    failed[video_id] = error
        finally:
            _WORKER.clear()
            torch.set_num_threads(threads)
    else:
        # Forked like DataLoader workers (one torch thread each, so a forked OpenMP pool is never
        # used): a spawned worker would first spend seconds importing torch again.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        with opencv_single_thread(), context.Pool(jobs, initializer=_init_worker,
                                                  initargs=(store_root, specs, cfg, device)) as pool:
            for video_id, error in pool.imap_unordered(_work, tasks):
                bar.update()
                if error:
                    failed[video_id] = error
    bar.close()
    return failed


_WORKER: dict = {}  # this process's store and stream runners, set by _init_worker


def _init_worker(store_root: Path, specs: Sequence[StreamSpec], cfg: EvalConfig, device: torch.device) -> None:
    if device.type == "cpu":
        torch.set_num_threads(1)
    runners = []
    for spec in specs:
        model, _ = load_stream(spec.checkpoint)
        runners.append((spec, StreamRunner(model, spec.name, spec.geometry, cfg.batch_views, device)))
    _WORKER.update(store=open_store(store_root), runners=runners, cfg=cfg)


def _work(task: tuple[str, bool, bool]) -> tuple[str, str]:
    """Compute and cache one video's outputs for every stream; (video_id, "" or why it failed)."""
    video_id, scores, features = task
    store: Store = _WORKER["store"]
    cfg: EvalConfig = _WORKER["cfg"]
    try:
        signature = _signature(store, video_id)
        with store.open(video_id) as video:
            for spec, runner in _WORKER["runners"]:
                cached = read_cached(spec, store, video_id)
                if cached.has(scores, features):
                    continue
                length = num_positions(video, spec.name)
                if length < 1:
                    raise FlowError(f"video {video_id}: has no {spec.name} images (a single frame has no flow)")
                clip_len = spec.geometry.clip_len
                wanted_scores = score_views(length, clip_len, cfg.clips, cfg.crops) if scores else []
                wanted_features = feature_views(length, clip_len, cfg.svm_clips) if features else []
                logits, pool5 = runner.run(video, wanted_scores + wanted_features)
                if scores:
                    cached.logits = logits[:len(wanted_scores)]
                if features:
                    cached.feature = pool5[len(wanted_scores):].mean(axis=0)
                arrays = {"signature": np.array(signature)}
                arrays.update({k: v for k, v in (("logits", cached.logits), ("feature", cached.feature))
                               if v is not None})
                save_npz(_cache_path(spec, video_id), arrays)
    except FileNotFoundError as e:  # removed from the store while this run went on
        return video_id, f"video {video_id}: {e}"
    except DiskFullError:
        raise  # not this video's fault: every later one would fail the same way
    except FlowError as e:
        return video_id, str(e)
    return video_id, ""


def _cache_path(spec: StreamSpec, video_id: str) -> Path:
    return spec.cache_dir / f"{video_id}.npz"


def _signature(store: Store, video_id: str) -> str:
    stat = store.path(video_id).stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"
