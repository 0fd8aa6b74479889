"""The transfer stage's one feature extractor: every benchmark, every stream, cached per video.

The recipe (../shared/REFERENCE.md, "Transfer benchmarks"; the P3D author's description): per
video, `clips` uniformly spaced clips of the stream's clip length (`fusion.views.feature_views`:
starts evenly spaced from the first to the last full window; a video shorter than one clip is
looped, `streams.clips.window`), each frame's short side resized to the stream's crop size with the
aspect kept, the centre crop, each clip averaged with its mirror (flow: x inverted), and the mean
over all these views. RGB is decoded from the video file at its own size (so the aspect is the
video's); flow is read from a frame + flow store written by the flow stage (TV-L1 at `[flow] size`).
Grey videos come out of the decoder as three equal channels.

Layers, each averaged over the same views:
- `pool5`: the network's feature (`P3D.features`), what every protocol but ASLAN uses;
- `prob`: the softmax of the stream's classifier (the class probabilities of its training classes);
- `res5c`: the last res5 block's output (after its ReLU), **max**-pooled over space and time. Its
  average over space and time *is* pool5 (pool5 is that average), so an averaged res5c would repeat
  pool5; the maximum keeps where in the clip each channel fires strongest, a different summary of
  the same map. The paper does not say how it reduced res5c;
- `res4`: the last res4 block's output (`res4b35` in P3D-199), averaged over space and time.
The three extra layers are taken by forward hooks on the model (`LayerTap`) during the same forward
pass as pool5, so they cost nothing extra and are computed for every video; ASLAN's protocol uses
all four.

Cache: `<cache_root>/<stream>-<key>/<video_id>.npz` holds one video's layers, with the size and
mtime of the file it was computed from (the video, or its entry in the flow store). The key hashes
the checkpoint's SHA-256, the recipe (clips, clip length, crop) and the frame source (RGB: decoded at
the video's size; flow: the store's layout, codec, bound and TV-L1 parameters), so a changed
checkpoint or recipe computes afresh, and nothing about classifiers or protocols is in it. On a CPU
the videos are shared among processes of one thread each (as `make eval` does, fusion.outputs).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flow.config import FlowConfig
from flow.errors import FlowError
from flow.store import Store, open_store
from flow.video import opencv_single_thread
from fusion.decoded import decode_for_views
from fusion.errors import FusionError
from fusion.fuse import softmax
from fusion.scoring import ClipGeometry, StreamRunner
from fusion.views import View, feature_views
from p3dbase.atomic import atomic_path
from p3dbase.device import resolve_device
from p3dbase.progress import progress_bar
from streams.checkpoint import file_sha256, load_stream, stream_path
from streams.errors import StreamsError
from streams.p3d import P3D

LAYERS = ("pool5", "prob", "res5c", "res4")
STREAMS = ("rgb", "flow")
RECIPE = ("uniformly spaced clips; short side resized to the crop, centre crop; each clip averaged with its "
          "mirror; mean over the views; pool5, prob, res5c (max over space and time), res4 (mean)")


@dataclass(frozen=True)
class StreamSpec:
    """A stream as the extractor's worker processes rebuild it: picklable, no model inside."""
    name: str  # "rgb" or "flow"
    checkpoint: Path
    sha256: str
    geometry: ClipGeometry
    classes: int


@dataclass(frozen=True)
class VideoJob:
    video_id: str
    path: Path  # the video file (RGB is decoded from it)


def transfer_geometry(train_config: dict) -> ClipGeometry:
    """The recipe's clip geometry for a stream: its clip length and crop, the short side resized to
    the crop (ClipGeometry's test resize with scale_jitter = [crop, crop] is exactly that)."""
    trained = ClipGeometry.from_train_config(train_config)
    return ClipGeometry(trained.clip_len, (trained.crop, trained.crop), (trained.crop, trained.crop), trained.crop)


def load_stream_spec(name: str, path: Path | str) -> StreamSpec:
    """Check a checkpoint (a file, or a training folder standing for its last.pt) as the `name`
    stream; StreamsError / FusionError naming the file when it is not one."""
    path = stream_path(path)
    _, ckpt = load_stream(path, modality=name)  # builds the model: its weights must fit
    return StreamSpec(name, path, file_sha256(path), transfer_geometry(ckpt.train_config), ckpt.num_classes)


def cache_key(spec: StreamSpec, clips: int, source: dict) -> str:
    """What decides a stream's features: the checkpoint's bytes, the recipe and the frame source."""
    settings = {"checkpoint": spec.sha256, "clips": clips, "clip_len": spec.geometry.clip_len,
                "crop": spec.geometry.crop, "recipe": RECIPE, "source": source}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def rgb_source() -> dict:
    return {"rgb": "decoded from the video file at its own size"}


def flow_source(store: Store) -> dict:
    return {"layout": store.layout, "codec": store.codec, "bound": store.bound, "params": store.params}


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


def video_layers(runner: StreamRunner, tap: LayerTap, video, views: Sequence[View]) -> dict[str, np.ndarray]:
    """{layer: float32 [D]} of one video: each layer averaged over `views`, a repeated view (a short
    video's clips can start at the same frame) counted as often as it is listed."""
    distinct = sorted(set(views))  # StreamRunner.run computes these in this order: the tap's rows match
    counts = Counter(views)
    weights = np.array([counts[v] for v in distinct], dtype=np.float64)
    weights /= weights.sum()
    tap.reset()  # drop anything a failed earlier video left
    logits, pool5 = runner.run(video, distinct)
    rows = {"pool5": pool5, "prob": softmax(logits), **tap.take()}
    return {name: (weights @ rows[name].astype(np.float64)).astype(np.float32) for name in LAYERS}


def _signature(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def read_cached(path: Path, signature: str) -> dict[str, np.ndarray] | None:
    """The cached layers, or None when absent, damaged or computed from another version of the file."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["signature"]) != signature:
                return None
            return {name: data[name] for name in LAYERS}
    except (OSError, ValueError, KeyError, EOFError):
        return None


def save_cached(path: Path, signature: str, layers: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, keep_suffix=True) as tmp:
        np.savez(tmp, signature=np.array(signature), **layers)


@dataclass
class Extraction:
    """Per stream: {video_id: {layer: vector}} of the usable videos and {video_id: why not} of the others."""
    features: dict[str, dict[str, dict[str, np.ndarray]]]
    failed: dict[str, dict[str, str]]
    computed: int  # (video, stream) pairs computed by this run; the rest came from the cache


def extract(videos: Sequence[VideoJob], streams: Sequence[StreamSpec], cache_root: Path, flow_store: Path | None,
            flow_cfg: FlowConfig, *, clips: int = 20, batch_views: int = 16, device: str = "auto", jobs: int = 0,
            desc: str = "features") -> Extraction:
    """Layers of every video for every stream, from the cache where it holds them. The flow stream
    reads `flow_store` (required when a flow stream is given); a video missing there, or one that
    cannot be decoded, is recorded as failed for that stream and the rest goes on."""
    cache_root = Path(cache_root)
    store = None
    if any(s.name == "flow" for s in streams):
        if flow_store is None:
            raise FusionError("the flow stream needs a flow store (flow_store)")
        store = open_store(flow_store)
    dirs: dict[str, Path] = {}
    for s in streams:
        source = flow_source(store) if s.name == "flow" else rgb_source()
        dirs[s.name] = cache_root / f"{s.name}-{cache_key(s, clips, source)}"
    features: dict[str, dict[str, dict[str, np.ndarray]]] = {s.name: {} for s in streams}
    failed: dict[str, dict[str, str]] = {s.name: {} for s in streams}
    todo: list[tuple[VideoJob, list[tuple[str, str]]]] = []  # the video and its (stream, signature) to compute
    for job in videos:
        missing = []
        for s in streams:
            try:
                source = _source_file(s.name, job, store)
            except (FlowError, OSError) as e:
                failed[s.name][job.video_id] = " ".join(str(e).split())
                continue
            signature = _signature(source)
            got = read_cached(dirs[s.name] / f"{job.video_id}.npz", signature)
            if got is None:
                missing.append((s.name, signature))
            else:
                features[s.name][job.video_id] = got
        if missing:
            todo.append((job, missing))
    computed = 0
    if todo:
        target = resolve_device(device, "transfer.device")
        settings = _WorkerSettings(list(streams), dirs, None if store is None else store.root, flow_cfg, clips,
                                   batch_views, target)
        for video_id, results in _run(todo, settings, jobs, desc):
            for name, error in results.items():
                if error:
                    failed[name][video_id] = error
                else:
                    computed += 1
        for job, missing in todo:
            for name, signature in missing:
                if job.video_id in failed[name]:
                    continue
                got = read_cached(dirs[name] / f"{job.video_id}.npz", signature)
                if got is None:
                    failed[name][job.video_id] = "its features were not written (see the messages above)"
                else:
                    features[name][job.video_id] = got
    return Extraction(features, failed, computed)


def _source_file(stream: str, job: VideoJob, store: Store | None) -> Path:
    """The file a stream's features of a video come from: the video, or its entry in the flow store."""
    if stream == "rgb":
        if not job.path.is_file():
            raise FlowError(f"{job.path}: no such video file")
        return job.path
    assert store is not None
    if not store.has(job.video_id):
        raise FlowError(f"no flow in the store at {store.root} (its flow failed or was not computed; see the "
                        "manifest there)")
    return store.path(job.video_id)


@dataclass
class _WorkerSettings:
    streams: list[StreamSpec]
    dirs: dict[str, Path]
    store_root: Path | None
    flow_cfg: FlowConfig
    clips: int
    batch_views: int
    device: torch.device


def _jobs(jobs: int, device: torch.device) -> int:
    if device.type != "cpu":
        return 1
    if jobs:
        return jobs
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _run(todo: list, settings: _WorkerSettings, jobs: int, desc: str):
    """Yields (video_id, {stream: "" or why it failed}) as the videos finish, with a progress bar."""
    workers = min(_jobs(jobs, settings.device), len(todo))
    with progress_bar(total=len(todo), desc=desc, unit="video") as bar:
        if workers == 1:
            threads = torch.get_num_threads()
            try:
                _init_worker(settings)
                for task in todo:
                    yield _work(task)
                    bar.update()
            finally:
                _WORKER.clear()
                torch.set_num_threads(threads)
            return
        # Forked, one torch thread each, as fusion.outputs does for `make eval` (see its docstring).
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with opencv_single_thread(), multiprocessing.get_context(method).Pool(
                workers, initializer=_init_worker, initargs=(settings,)) as pool:
            for result in pool.imap_unordered(_work, todo):
                yield result
                bar.update()


_WORKER: dict = {}  # this process's runners, taps and store, set by _init_worker


def _init_worker(settings: _WorkerSettings) -> None:
    if settings.device.type == "cpu":
        torch.set_num_threads(1)
    runners = {}
    for spec in settings.streams:
        model, _ = load_stream(spec.checkpoint)
        runner = StreamRunner(model, spec.name, spec.geometry, settings.batch_views, settings.device)
        runners[spec.name] = (spec, runner, LayerTap(runner.model))
    store = open_store(settings.store_root) if settings.store_root is not None else None
    _WORKER.update(settings=settings, runners=runners, store=store)


def _work(task: tuple[VideoJob, list[tuple[str, str]]]) -> tuple[str, dict[str, str]]:
    """Compute and cache one video's layers for the streams listed; (video_id, {stream: error or ""})."""
    job, missing = task
    settings: _WorkerSettings = _WORKER["settings"]
    results = {}
    for name, signature in missing:
        spec, runner, tap = _WORKER["runners"][name]
        try:
            layers = _compute(job, spec, runner, tap, settings)
            save_cached(settings.dirs[name] / f"{job.video_id}.npz", signature, layers)
            results[name] = ""
        except (FlowError, StreamsError, OSError) as e:
            results[name] = " ".join(str(e).split())
    return job.video_id, results


def _compute(job: VideoJob, spec: StreamSpec, runner: StreamRunner, tap: LayerTap,
             settings: _WorkerSettings) -> dict[str, np.ndarray]:
    clip_len = spec.geometry.clip_len
    if spec.name == "rgb":
        # The video's own size: the recipe resizes its short side to the crop, keeping the aspect.
        decode_cfg = dataclasses.replace(settings.flow_cfg, size="")
        video, views = decode_for_views(job.path, decode_cfg, {"rgb": clip_len},
                                        lambda modality, length: feature_views(length, clip_len, settings.clips))
        with video:
            return video_layers(runner, tap, video, views["rgb"])
    store: Store = _WORKER["store"]
    with store.open(job.video_id) as video:
        if video.num_flows < 1:
            raise FlowError(f"video {job.video_id}: has no flow images (a single frame)")
        return video_layers(runner, tap, video, feature_views(video.num_flows, clip_len, settings.clips))
