"""Store formats compared: bytes per frame, write time, and random 16-frame windows read per second.

    .venv/bin/python bench/flow_store.py [--data ../shared/data] [--frames 48] [--clips 3]

Real 340x256 clips, real TV-L1 flow (chosen defaults) on their first `--frames` frames. A "frame" is
one RGB image plus one two-channel flow image. Reads are random windows of 16 consecutive frames
from random videos (page cache warm, one process), RGB and flow separately, as the streams read
them; ratios are against the mmaction2 JPEG layout measured in the same run.
"""
from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

import cv2

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


def window_reads(store, ids, counts, modality: str, seconds: float, rng: random.Random) -> float:
    """Random 16-frame windows per second for `seconds`."""
    readers = {v: store.open(v) for v in ids}
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        v = rng.choice(ids)
        total = counts[v] - (1 if modality == "flow" else 0)
        first = rng.randrange(total - 15)
        reader = readers[v]
        (reader.rgb if modality == "rgb" else reader.flow)(range(first, first + 16))
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="reading time per measurement")
    args = parser.parse_args()

    cfg = FlowConfig()
    tvl1 = OpenCVTVL1(cfg)
    videos = {}
    for name in CLIPS[: args.clips]:
        rgb = next(VideoReader(args.data / "clips" / name, cfg.size).chunks(args.frames, 1))
        videos[Path(name).stem] = (rgb, encode(tvl1.compute(to_gray(rgb)), cfg.bound))
        print(f"flow of {name}: {len(rgb)} frames", flush=True)
    frames = sum(len(r) for r, _ in videos.values())

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="flow_store_bench_"))
    try:
        for label, kind in STORES.items():
            root = tmp / f"store{len(rows)}"
            store = create_store(root, kind["layout"], codec=kind.get("codec", "png"))
            default_png = store_module.PNG_PARAMS
            store_module.PNG_PARAMS = kind.get("png_params", default_png)  # the filter alternative
            start = time.perf_counter()
            for vid, (rgb, flow) in videos.items():
                store.write_video(f"Cls/{vid}", rgb, flow)
            store_module.PNG_PARAMS = default_png
            write_ms = (time.perf_counter() - start) / frames * 1e3
            files = [p for p in root.rglob("*") if p.is_file() and p.name != "store.json"]
            total = sum(p.stat().st_size for p in files)
            ids = store.video_ids()
            if kind["layout"] == "mmaction":
                rgb_bytes = sum(p.stat().st_size for p in files if p.name.startswith("img_"))
            else:  # the pack index holds each blob's length
                rgb_bytes = sum(store.open(v).rgb_bytes for v in ids)
            counts = {v: len(videos[v.split("/")[1]][0]) for v in ids}
            rgb_rate = window_reads(store, ids, counts, "rgb", args.seconds, random.Random(0))
            flow_rate = window_reads(store, ids, counts, "flow", args.seconds, random.Random(1))
            rows.append((label, total / frames, rgb_bytes / frames, write_ms, rgb_rate, flow_rate))
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(tmp)

    base = rows[0]
    print(f"\n{frames} frames of {args.clips} clips at {cfg.size}\n")
    print("| store | bytes / frame (RGB + flow) | of which RGB | UCF101 estimate | write ms / frame | "
          "RGB 16-frame clips/s | flow 16-frame clips/s | RGB read vs mmaction | flow read vs mmaction |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, per_frame, rgb_per_frame, write_ms, rgb_rate, flow_rate in rows:
        print(f"| {label} | {per_frame / 1e3:.1f} kB | {rgb_per_frame / 1e3:.1f} kB | "
              f"{per_frame * UCF101_FRAMES / 1e9:.0f} GB | {write_ms:.1f} | "
              f"{rgb_rate:.0f} | {flow_rate:.0f} | {rgb_rate / base[4]:.2f}x | {flow_rate / base[5]:.2f}x |")


if __name__ == "__main__":
    main()
