"""Store formats compared: bytes per frame, write time, and random 16-frame windows read per second.

    .venv/bin/python bench/flow_store.py [--data ../shared/data] [--frames 48] [--clips 3]

Real 340x256 clips, real TV-L1 flow (chosen defaults) on their first `--frames` frames. A "frame" is
one RGB image plus one two-channel flow image. Reads are random windows of 16 consecutive frames
from random videos (page cache warm, one process), RGB and flow separately, as the streams read
them, counted per CPU-second of the reading process (load from other processes does not move it)
in interleaved rounds; ratios are against the mmaction2 JPEG layout measured in the same run.
"""
from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from flow import store as store_module
from flow.config import FlowConfig
from flow.encoding import encode
from flow.store import create_store
from flow.tvl1 import OpenCVTVL1, to_gray
from flow.video import VideoReader

CLIPS = ["arm_wrestling__mmaction2_demo.mp4", "clean_and_jerk__mmskeleton.mp4",
         "skateboarding__mmskeleton.mp4", "tai_chi__mmskeleton.mp4", "cleaning_pool__mmaction2_test.mp4"]
STORES = {"mmaction (JPEG q95, lossy)": dict(layout="mmaction"),
          "packed png (default, lossless)": dict(layout="packed", codec="png"),
          "packed png, adaptive filters": dict(layout="packed", codec="png",
                                               png_params=[cv2.IMWRITE_PNG_COMPRESSION, 3]),
          "packed raw (uint8, lossless)": dict(layout="packed", codec="raw")}
UCF101_FRAMES = 2.48e6  # 13,320 clips, about 186 frames each


def window_reads(readers: dict, counts: dict[str, int], modality: str, cpu_seconds: float,
                 rng: random.Random) -> tuple[int, float, float]:
    """Read random 16-frame windows for `cpu_seconds` of this process's CPU time:
    (windows, wall s, CPU s)."""
    ids = sorted(readers)
    n, wall, cpu = 0, time.perf_counter(), time.process_time()
    while time.process_time() - cpu < cpu_seconds:
        v = rng.choice(ids)
        first = rng.randrange(counts[v] - (1 if modality == "flow" else 0) - 15)
        (readers[v].rgb if modality == "rgb" else readers[v].flow)(range(first, first + 16))
        n += 1
    return n, time.perf_counter() - wall, time.process_time() - cpu


def load_videos(args: argparse.Namespace, cfg: FlowConfig) -> dict[str, tuple]:
    """{name: (rgb uint8 [N, H, W, 3], flow uint8 [N-1, H, W, 2])}, from `--cache` when it exists."""
    if args.cache and args.cache.exists():
        data = np.load(args.cache)
        return {k[:-4]: (data[k], data[k[:-4] + "_flo"]) for k in data.files if k.endswith("_rgb")}
    tvl1 = OpenCVTVL1(cfg)
    videos = {}
    for name in CLIPS[: args.clips]:
        rgb = next(VideoReader(args.data / "clips" / name, cfg.size).chunks(args.frames, 1))
        videos[Path(name).stem] = (rgb, encode(tvl1.compute(to_gray(rgb)), cfg.bound))
        print(f"flow of {name}: {len(rgb)} frames", flush=True)
    if args.cache:
        np.savez(args.cache, **{f"{k}_rgb": v[0] for k, v in videos.items()},
                 **{f"{k}_flo": v[1] for k, v in videos.items()})
    return videos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4, help="reading rounds over every store (median kept)")
    parser.add_argument("--seconds", type=float, default=1.0, help="CPU seconds of reading per store, "
                        "modality and round")
    parser.add_argument("--cache", type=Path, help="keep the decoded frames and flow here (.npz) for re-runs")
    args = parser.parse_args()

    cfg = FlowConfig()
    videos = load_videos(args, cfg)
    frames = sum(len(r) for r, _ in videos.values())

    sizes, readers = {}, {}
    tmp = Path(tempfile.mkdtemp(prefix="flow_store_bench_"))
    try:
        for k, (label, kind) in enumerate(STORES.items()):
            root = tmp / f"store{k}"
            store = create_store(root, kind["layout"], codec=kind.get("codec", "png"))
            default_png = store_module.PNG_PARAMS
            store_module.PNG_PARAMS = kind.get("png_params", default_png)  # the filter alternative
            cpu = time.process_time()
            for vid, (rgb, flo) in videos.items():
                store.write_video(f"Cls/{vid}", rgb, flo)
            store_module.PNG_PARAMS = default_png
            write_ms = (time.process_time() - cpu) / frames * 1e3
            files = [p for p in root.rglob("*") if p.is_file() and p.name != "store.json"]
            ids = store.video_ids()
            if kind["layout"] == "mmaction":
                rgb_bytes = sum(p.stat().st_size for p in files if p.name.startswith("img_"))
            else:  # the pack index holds each blob's length
                rgb_bytes = sum(store.open(v).rgb_bytes for v in ids)
            sizes[label] = (sum(p.stat().st_size for p in files) / frames, rgb_bytes / frames, write_ms)
            readers[label] = {v: store.open(v) for v in ids}
        counts = {f"Cls/{v}": len(rgb) for v, (rgb, _) in videos.items()}
        rates: dict[tuple[str, str], list[float]] = {(s, m): [] for s in STORES for m in ("rgb", "flow")}
        wall_rates: dict[tuple[str, str], list[float]] = {key: [] for key in rates}
        rng = random.Random(0)
        for _ in range(args.rounds):
            for label in STORES:
                for modality in ("rgb", "flow"):
                    n, wall, cpu = window_reads(readers[label], counts, modality, args.seconds, rng)
                    rates[label, modality].append(n / cpu)
                    wall_rates[label, modality].append(n / wall)
    finally:
        shutil.rmtree(tmp)

    med = {key: float(np.median(v)) for key, v in rates.items()}
    wmed = {key: float(np.median(v)) for key, v in wall_rates.items()}
    base = next(iter(STORES))
    print(f"\n{frames} frames of {len(videos)} clips at {cfg.size}; reads: random 16-frame windows, "
          f"page cache warm, one process, per CPU-second (median of {args.rounds} rounds; wall-clock rate "
          "in brackets)\n")
    print("| store | bytes / frame (RGB + flow) | of which RGB | UCF101 estimate | write CPU ms / frame | "
          "RGB clips/s | flow clips/s | RGB read vs mmaction | flow read vs mmaction |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label in STORES:
        per_frame, rgb_per_frame, write_ms = sizes[label]
        print(f"| {label} | {per_frame / 1e3:.1f} kB | {rgb_per_frame / 1e3:.1f} kB | "
              f"{per_frame * UCF101_FRAMES / 1e9:.0f} GB | {write_ms:.1f} | "
              f"{med[label, 'rgb']:.0f} ({wmed[label, 'rgb']:.0f}) | {med[label, 'flow']:.0f} "
              f"({wmed[label, 'flow']:.0f}) | {med[label, 'rgb'] / med[base, 'rgb']:.2f}x | "
              f"{med[label, 'flow'] / med[base, 'flow']:.2f}x |")


if __name__ == "__main__":
    main()
