"""Each stream's network outputs on each video of the store, for `make eval` (through fusion.engine).

A video's outputs for one stream are the logits of its score views (`[eval] clips` x `crops`) and its
pool5 feature averaged over the feature views (`svm_clips` centre clips, each with its mirror). Both
come from the engine's output cache (`<out_dir>/cache`, keyed by the checkpoint's SHA-256, the clip
geometry, the view plan and the store's settings; each entry tied to the video's entry in the store
by fusion.engine.file_signature: a pack's size and mtime, an mmaction folder's image count, total
size and newest mtime): a killed run resumes, a re-run reads everything back without the network, a
video redone by `make flow`, an image rewritten in place and a changed checkpoint are recomputed.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flow.errors import FlowError
from flow.store import Store
from fusion.config import EvalConfig
from fusion.engine import OutputCache, PoolSpec, Stream, Worker, file_signature, map_videos, store_source
from fusion.views import ViewPlan, feature_plan, score_plan
from p3dbase.atomic import DiskFullError, remove_dead_temps


@dataclass
class Outputs:
    """One stream's network outputs on one video."""
    logits: np.ndarray | None = None  # float32 [clips x crops, C], the score views
    feature: np.ndarray | None = None  # float32 [D], pool5 averaged over the feature views

    def has(self, scores: bool, features: bool) -> bool:
        return (not scores or self.logits is not None) and (not features or self.feature is not None)


@dataclass
class _Context:
    cache: OutputCache
    plans: dict[str, ViewPlan]  # "scores", "features"


def eval_plans(cfg: EvalConfig) -> dict[str, ViewPlan]:
    return {"scores": score_plan(cfg.clips, cfg.crops, cfg.clip_sampling, cfg.seed),
            "features": feature_plan(cfg.svm_clips)}


def collect(store: Store, streams: Sequence[Stream], needs: dict[str, tuple[bool, bool]], cfg: EvalConfig,
            device: torch.device, cache_root: Path) -> tuple[dict[str, dict[str, Outputs]], dict[str, str]]:
    """Outputs of every stream on the videos of `needs` ({video_id: (scores?, features?)}), computing
    what the cache under `cache_root` lacks. Returns ({video_id: {stream: Outputs}} of the usable
    videos, {video_id: why not} of the others)."""
    remove_dead_temps(cache_root)  # what a killed eval was writing
    context = _Context(OutputCache(cache_root, {s.name: store_source(store) for s in streams}), eval_plans(cfg))
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
        got = {s.name: _read(context, s, store, video_id) for s in streams}
        if all(o.has(scores, features) for o in got.values()):
            outputs[video_id] = got
        else:
            todo.append((video_id, scores, features))
    if todo:
        spec = PoolSpec(list(streams), cfg.batch_views, device, _work, context, store_root=store.root)
        for video_id, error in map_videos(spec, todo, cfg.jobs, desc="eval: network", leave=False):
            if error:
                failed[video_id] = error
    for video_id, _, _ in todo:
        if video_id not in failed:
            outputs[video_id] = {s.name: _read(context, s, store, video_id) for s in streams}
    return outputs, failed


def _read(context: _Context, stream: Stream, store: Store, video_id: str) -> Outputs:
    """The cached outputs; a part absent, damaged or older than the stored video is None."""
    try:
        signature = file_signature(store.path(video_id))
    except OSError:
        return Outputs()
    scores = context.cache.read(stream, context.plans["scores"], video_id, signature)
    features = context.cache.read(stream, context.plans["features"], video_id, signature)
    return Outputs(None if scores is None else scores.logits,
                   None if features is None else features.pool5.mean(axis=0))


def _work(worker: Worker, task: tuple[str, bool, bool]) -> tuple[str, str]:
    """Compute and cache one video's outputs for every stream; (video_id, "" or why it failed)."""
    video_id, scores, features = task
    store = worker.store
    context: _Context = worker.context
    try:
        signature = file_signature(store.path(video_id))
        with store.open(video_id) as video:
            for stream in worker.engine.streams:
                cached = _read(context, stream, store, video_id)
                if cached.has(scores, features):
                    continue
                names = [name for name, wanted in (("scores", scores), ("features", features)) if wanted]
                plans = [context.plans[name] for name in names]
                for plan, out in zip(plans, worker.engine.run(stream.name, video, plans), strict=True):
                    context.cache.write(stream, plan, video_id, signature, out)
    except FileNotFoundError as e:  # removed from the store while this run went on
        return video_id, f"video {video_id}: {e}"
    except DiskFullError:
        raise  # not this video's fault: every later one would fail the same way
    except FlowError as e:
        return video_id, str(e)
    return video_id, ""
