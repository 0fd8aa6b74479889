"""Choosing the TV-L1 defaults by measurement: accuracy on real ground truth and time per pair.

    .venv/bin/python bench/flow_params.py [--data ../shared/data] [--only NAME ...]

For each parameter variant: mean EPE (px) on Middlebury RubberWhale (584x388, small motions), on the
KITTI pair (1242x375, large motions, sparse GT) and on the FlyingChairs crop (50x50), and seconds per
340x256 pair of a real clip with one OpenCV thread (as each worker runs when jobs > 1), relative to
OpenCV's defaults in the same run. Time is this process's CPU time (other processes' load does not
move it), going round the variants `--rounds` times (median kept).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import cv2
import numpy as np
from bench_cli import at_least, run  # bench/, the script's own folder, is on sys.path

from flow.config import FlowConfig
from flow.evaluate import endpoint_errors, read_grey
from flow.formats import read_flow
from flow.tvl1 import OpenCVTVL1, to_gray
from flow.video import VideoReader

OPENCV = dict(scale_step=0.8)  # OpenCV's own defaults (the other fields of FlowConfig equal them)
VARIANTS = {
    "opencv defaults (scale_step 0.8)": OPENCV,
    "scale_step 0.5 (chosen)": dict(scale_step=0.5),
    "scale_step 0.5, warps 3": dict(scale_step=0.5, warps=3),
    "scale_step 0.5, nscales 3": dict(scale_step=0.5, nscales=3),
    "scale_step 0.5, nscales 8": dict(scale_step=0.5, nscales=8),
    "scale_step 0.5, outer 5": dict(scale_step=0.5, outer_iterations=5),
    "scale_step 0.5, median off": dict(scale_step=0.5, median_filtering=1),
    "scale_step 0.65": dict(scale_step=0.65),
    "CUDA-like (1 inner, 300 outer, no median, 0.8)": dict(inner_iterations=1, outer_iterations=300,
                                                          median_filtering=1, scale_step=0.8),
}


def pairs(data: Path) -> dict[str, tuple[Path, Path, Path]]:
    gt = data / "flow_gt"
    return {"RubberWhale": (gt / "middlebury_rubberwhale" / "frame10.png",
                            gt / "middlebury_rubberwhale" / "frame11.png",
                            gt / "middlebury_rubberwhale" / "flow10.flo"),
            "KITTI": (gt / "kitti_000" / "frame1.png", gt / "kitti_000" / "frame2.png",
                      gt / "kitti_000" / "flow_gt.png"),
            "FlyingChairs": (gt / "flyingchairs_tiny" / "00001_img1.ppm",
                             gt / "flyingchairs_tiny" / "00001_img2.ppm",
                             gt / "flyingchairs_tiny" / "00001_flow.flo")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--timing-pairs", type=int, default=2)
    parser.add_argument("--rounds", type=at_least(1), default=3)
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="variant names to run (default: all)")
    args = parser.parse_args()
    clip = VideoReader(args.data / "clips" / "arm_wrestling__mmaction2_demo.mp4", "340x256")
    frames = to_gray(next(clip.chunks(args.timing_pairs + 1, 1)))
    cases = {name: (read_grey(a), read_grey(b), *read_flow(g)) for name, (a, b, g) in pairs(args.data).items()}

    names = [n for n in VARIANTS if not args.only or n in args.only]
    solvers = {n: OpenCVTVL1(dataclasses.replace(FlowConfig(), **VARIANTS[n])) for n in names}
    epe: dict[str, dict[str, float]] = {}
    cv2.setNumThreads(0)  # accuracy runs on every core
    for name in names:
        epe[name] = {case: float(endpoint_errors(solvers[name].compute(np.stack([a, b]))[0], truth, valid).mean())
                     for case, (a, b, truth, valid) in cases.items()}
        print(f"{name}: {epe[name]}", flush=True)
    cv2.setNumThreads(1)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:
            start = time.process_time()
            solvers[name].compute(frames)
            times[name].append((time.process_time() - start) / args.timing_pairs)
    rows = [(n, epe[n], float(np.median(times[n]))) for n in names]

    base = rows[0][2]
    print("\n| variant | RubberWhale EPE | KITTI EPE | FlyingChairs EPE | CPU s / 340x256 pair (1 thread) "
          "| time vs OpenCV defaults |")
    print("|---|---|---|---|---|---|")
    for name, epe, per_pair in rows:
        print(f"| {name} | {epe['RubberWhale']:.3f} | {epe['KITTI']:.1f} | {epe['FlyingChairs']:.3f} | "
              f"{per_pair:.3f} | {per_pair / base:.2f}x |")


if __name__ == "__main__":
    run(main)
