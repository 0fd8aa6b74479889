"""How long `make eval` takes on a SynthActions-sized benchmark, against a naive scorer.

Builds a store like the default SynthActions (12 classes x 28 videos of 32 frames, 64x64) with
random content and two random P3D checkpoints, then times:
  baseline  each view alone through the network, logits and pool5 in two passes, one thread,
            contiguous layout, no de-duplication of repeated views (on --baseline-videos videos)
  cold      run_eval from scratch (default [eval] settings: 10 clips, centre crop, SVM on 20 clips +
            mirrors, one process per core)
  warm      run_eval again: every network output comes from the cache

    .venv/bin/python bench/fusion_eval.py [--arch p3d_tiny] [--clip-len 16] [--crop 56]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_cli import at_least, run  # bench/, the script's own folder, is on sys.path

from flow.store import create_store, open_store
from fusion.config import EvalConfig
from fusion.scoring import ClipGeometry
from fusion.stage import EvalJob, run_eval
from fusion.views import feature_views, score_views
from pipeline.config import load_config
from streams import transforms
from streams.checkpoint import load_checkpoint, make_payload, save_checkpoint
from streams.clips import window
from streams.config import ModelConfig, TrainConfig
from streams.p3d import build_model


def build(root: Path, classes: int, per_class: int, frames: int, size: int, seed: int = 0):
    store = create_store(root / "store")
    rng = np.random.default_rng(seed)
    items = []
    for c in range(classes):
        for i in range(per_class):
            rgb = rng.integers(0, 256, size=(frames, size, size, 3), dtype=np.uint8)
            flow = rng.integers(100, 156, size=(frames - 1, size, size, 2), dtype=np.uint8)
            store.write_video(f"C{c:02d}/v_{i:02d}", rgb, flow)
            items.append((f"C{c:02d}/v_{i:02d}", (c,)))
    return items


def save(path: Path, modality: str, arch: str, classes: list[str], train_cfg: TrainConfig) -> Path:
    model = build_model(arch, len(classes), transforms.CHANNELS[modality])
    save_checkpoint(path, make_payload(
        model, arch=arch, modality=modality, classes=classes, input_convention=transforms.INPUT_CONVENTION[modality],
        model_config=dataclasses.asdict(ModelConfig(arch=arch)), train_config=dataclasses.asdict(train_cfg),
        step=0, epoch=0, metrics={}))
    return path


def naive_seconds_per_video(store_root: Path, checkpoints: dict[str, Path], video_ids: list[str],
                            cfg: EvalConfig) -> float:
    store = open_store(store_root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each eval worker: compare the work, not thread contention
    started = time.perf_counter()
    for name, path in checkpoints.items():
        model, ckpt = load_checkpoint(path)
        geometry = ClipGeometry.from_train_config(ckpt.train_config)
        for video_id in video_ids:
            with store.open(video_id) as video:
                length = video.num_frames if name == "rgb" else video.num_flows
                views = score_views(length, geometry.clip_len, cfg.clips, cfg.crops)
                views += feature_views(length, geometry.clip_len, cfg.svm_clips)
                for v in views:
                    idx = window(v.start, geometry.clip_len, length)
                    clip = video.rgb(idx) if name == "rgb" else video.flow(idx)
                    clip = geometry.crop_clip(geometry.resize_clip(clip), v.crop)
                    if v.flip:
                        clip = transforms.hflip(clip, name)
                    x = transforms.to_tensor(clip, name)[None]
                    with torch.inference_mode():
                        model(x)
                        model.features(x)
    torch.set_num_threads(threads)
    return (time.perf_counter() - started) / len(video_ids)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the eval workers): unlike wall time, it
    does not depend on how many other jobs share the cores."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="p3d_tiny")
    parser.add_argument("--clip-len", type=int, default=16)
    parser.add_argument("--crop", type=int, default=56)
    parser.add_argument("--frames", type=at_least(2), default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", type=at_least(2), default=12)
    parser.add_argument("--per-class", type=int, default=28)
    parser.add_argument("--baseline-videos", type=int, default=6)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="an [eval] setting, e.g. --set svm_clips=10 (read as python -m pipeline --set)")
    args = parser.parse_args()
    cfg = load_config(None, [f"eval.{item.removeprefix('eval.')}" for item in args.overrides]).eval

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items = build(root, args.classes, args.per_class, args.frames, args.size)
        classes = [f"C{c:02d}" for c in range(args.classes)]
        train_cfg = TrainConfig(clip_len=args.clip_len, resize=[args.size, args.size], crop=args.crop)
        checkpoints = {m: save(root / f"{m}.pt", m, args.arch, classes, train_cfg) for m in ("rgb", "flow")}
        test = [it for it in items if int(it[0][-2:]) < args.per_class * 2 // 7]
        train = [it for it in items if it not in test]

        cpu = cpu_seconds()
        naive = naive_seconds_per_video(root / "store", checkpoints, [v for v, _ in items[:args.baseline_videos]], cfg)
        naive_cpu = (cpu_seconds() - cpu) / args.baseline_videos
        cpu, started = cpu_seconds(), time.perf_counter()
        job = EvalJob(open_store(root / "store"), checkpoints, train, test, classes, protocol="bench")
        run_eval(job, cfg, root / "eval")
        cold, cold_cpu = time.perf_counter() - started, cpu_seconds() - cpu
        cpu, started = cpu_seconds(), time.perf_counter()
        run_eval(job, cfg, root / "eval")
        warm, warm_cpu = time.perf_counter() - started, cpu_seconds() - cpu

    n = len(items)
    print(f"\n{args.arch}, clips {args.clip_len}x{args.crop}x{args.crop}, {n} videos of {args.frames} frames "
          f"({len(train)} train, {len(test)} test), [eval] {', '.join(args.overrides) or 'defaults'}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall times depend on it, CPU times less)")
    print(f"baseline (naive, per view): {naive:.3f} s/video wall, {naive_cpu:.3f} CPU s/video "
          f"-> {naive * n:.0f} s, {naive_cpu * n:.0f} CPU s for all videos (extrapolated)")
    print(f"run_eval cold:              {cold:.1f} s wall, {cold_cpu:.1f} CPU s "
          f"({naive * n / cold:.1f}x less wall, {naive_cpu * n / cold_cpu:.1f}x less CPU than the baseline)")
    print(f"run_eval warm (cached):     {warm:.1f} s wall, {warm_cpu:.1f} CPU s")


if __name__ == "__main__":
    run(main)
