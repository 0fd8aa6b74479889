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

Cache: the engine's output cache (fusion.engine.OutputCache) under `cache_root`: each view's rows,
keyed by the checkpoint's SHA-256, the clip geometry, the view plan and the frame source (RGB: decoded
at the video's size; flow: the store's layout, codec, bound and TV-L1 parameters), each entry tied to
the size and mtime of the video file and, for flow, of its entry in the store as well: a changed
checkpoint, recipe or a swapped source video computes afresh (a swapped video never pairs new RGB
features with old flow). On a CPU the videos are shared among processes of one thread each (the
engine's worker pool, as `make eval` does).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flow.config import FlowConfig
from flow.errors import FlowError
from flow.store import Store, open_store
from fusion.decoded import decode_for_views
from fusion.engine import Engine, OutputCache, PoolSpec, Stream, ViewOutputs, Worker, file_signature, map_videos
from fusion.engine import open_stream as _open_stream
from fusion.engine import store_source as flow_source
from fusion.errors import FusionError
from fusion.fuse import softmax
from fusion.scoring import ClipGeometry
from fusion.views import feature_plan
from p3dbase.atomic import remove_dead_temps
from p3dbase.device import resolve_device
from streams.errors import StreamsError

LAYERS = ("pool5", "prob", "res5c", "res4")
STREAMS = ("rgb", "flow")


@dataclass(frozen=True)
class VideoJob:
    video_id: str
    path: Path  # the video file (RGB is decoded from it)


def transfer_geometry(train_config: dict) -> ClipGeometry:
    """The recipe's clip geometry for a stream: its clip length and crop, the short side resized to
    the crop (ClipGeometry's test resize with scale_jitter = [crop, crop] is exactly that)."""
    trained = ClipGeometry.from_train_config(train_config)
    return ClipGeometry(trained.clip_len, (trained.crop, trained.crop), (trained.crop, trained.crop), trained.crop)


def load_stream_spec(name: str, path: Path | str) -> Stream:
    """Check a checkpoint (a file, or a training folder standing for its last.pt) as the `name`
    stream with the recipe's geometry; StreamsError naming the file when it is not one."""
    return _open_stream(name, path, transfer_geometry)


def rgb_source() -> dict:
    return {"rgb": "decoded from the video file at its own size"}


def video_layers(out: ViewOutputs) -> dict[str, np.ndarray]:
    """{layer: float32 [D]} of one video: each layer averaged over the views, a repeated view (a
    short video's clips can start at the same frame) counted as often as it is listed; prob is the
    softmax of the logits, res5c and res4 the LayerTap's rows."""
    _, counts, rows = out.distinct()
    weights = counts.astype(np.float64) / counts.sum()
    table = {"pool5": out.pool5[rows], "prob": softmax(out.logits[rows]),
             **{k: out.layers[k][rows] for k in LAYERS[2:]}}
    return {name: (weights @ table[name].astype(np.float64)).astype(np.float32) for name in LAYERS}


@dataclass
class Extraction:
    """Per stream: {video_id: {layer: vector}} of the usable videos and {video_id: why not} of the others."""
    features: dict[str, dict[str, dict[str, np.ndarray]]]
    failed: dict[str, dict[str, str]]
    computed: int  # (video, stream) pairs computed by this run; the rest came from the cache


@dataclass
class _Context:
    cache: OutputCache
    clips: int
    flow_cfg: FlowConfig


def extract(videos: Sequence[VideoJob], streams: Sequence[Stream], cache_root: Path, flow_store: Store | Path | None,
            flow_cfg: FlowConfig, *, clips: int = 20, batch_views: int = 16, device: str = "auto", jobs: int = 0,
            desc: str = "features") -> Extraction:
    """Layers of every video for every stream, from the cache where it holds them. The flow stream
    reads `flow_store` (an opened store or its folder; required when a flow stream is given); a video
    missing there, or one that cannot be decoded, is recorded as failed for that stream and the rest
    goes on."""
    store = None
    if any(s.name == "flow" for s in streams):
        if flow_store is None:
            raise FusionError("the flow stream needs a flow store (flow_store)")
        store = flow_store if isinstance(flow_store, Store) else open_store(flow_store)
    sources = {s.name: flow_source(store) if s.name == "flow" else rgb_source() for s in streams}
    remove_dead_temps(cache_root)  # what a killed run was writing
    context = _Context(OutputCache(cache_root, sources), clips, flow_cfg)
    plan = feature_plan(clips)
    features: dict[str, dict[str, dict[str, np.ndarray]]] = {s.name: {} for s in streams}
    failed: dict[str, dict[str, str]] = {s.name: {} for s in streams}
    todo: list[tuple[VideoJob, list[tuple[str, str]]]] = []  # the video and its (stream, signature) to compute
    for job in videos:
        missing = []
        for s in streams:
            try:
                signature = _signature(s.name, job, store)
            except (FlowError, OSError) as e:
                failed[s.name][job.video_id] = " ".join(str(e).split())
                continue
            got = context.cache.read(s, plan, job.video_id, signature, layers=True)
            if got is None:
                missing.append((s.name, signature))
            else:
                features[s.name][job.video_id] = video_layers(got)
        if missing:
            todo.append((job, missing))
    computed = 0
    if todo:
        spec = PoolSpec(list(streams), batch_views, resolve_device(device, "transfer.device"), _work, context,
                        layers=True, store_root=None if store is None else store.root)
        for video_id, results in map_videos(spec, todo, jobs, desc=desc, jobs_key="transfer.jobs"):
            for name, error in results.items():
                if error:
                    failed[name][video_id] = error
                else:
                    computed += 1
        by_name = {s.name: s for s in streams}
        for job, missing in todo:
            for name, signature in missing:
                if job.video_id in failed[name]:
                    continue
                got = context.cache.read(by_name[name], plan, job.video_id, signature, layers=True)
                if got is None:
                    failed[name][job.video_id] = "its features were not written (see the messages above)"
                else:
                    features[name][job.video_id] = video_layers(got)
    return Extraction(features, failed, computed)


def _signature(stream: str, job: VideoJob, store: Store | None) -> str:
    """What a stream's features of a video come from: the video file, and for flow also its entry in
    the flow store (a swapped video then recomputes both streams, never one)."""
    if not job.path.is_file():
        raise FlowError(f"{job.path}: no such video file")
    video = file_signature(job.path)
    if stream == "rgb":
        return video
    assert store is not None
    if not store.has(job.video_id):
        raise FlowError(f"no flow in the store at {store.root} (its flow failed or was not computed; see the "
                        "manifest there)")
    return f"{video}|{file_signature(store.path(job.video_id))}"


def _work(worker: Worker, task: tuple[VideoJob, list[tuple[str, str]]]) -> tuple[str, dict[str, str]]:
    """Compute and cache one video's layers for the streams listed; (video_id, {stream: error or ""})."""
    job, missing = task
    context: _Context = worker.context
    plan = feature_plan(context.clips)
    results = {}
    for name, signature in missing:
        try:
            out = _compute(worker.engine, name, job, worker.store, context)
            context.cache.write(worker.engine.stream(name), plan, job.video_id, signature, out)
            results[name] = ""
        except (FlowError, StreamsError, OSError) as e:
            results[name] = " ".join(str(e).split())
    return job.video_id, results


def _compute(engine: Engine, name: str, job: VideoJob, store: Store | None, context: _Context) -> ViewOutputs:
    plan = feature_plan(context.clips)
    clip_len = engine.stream(name).clip_len
    if name == "rgb":
        # The video's own size: the recipe resizes its short side to the crop, keeping the aspect.
        decode_cfg = dataclasses.replace(context.flow_cfg, size="")
        video, views = decode_for_views(job.path, decode_cfg, {"rgb": clip_len},
                                        lambda modality, length: plan.views(length, clip_len))
        with video:
            return engine.run("rgb", video, [plan], views=[views["rgb"]])[0]
    assert store is not None
    with store.open(job.video_id) as video:
        if video.num_flows < 1:
            raise FlowError(f"video {job.video_id}: has no flow images (a single frame)")
        return engine.run("flow", video, [plan])[0]
