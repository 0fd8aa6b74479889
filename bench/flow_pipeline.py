"""End-to-end flow stage against a bare OpenCV loop on the same frames, and scaling from 1 to 2 jobs.

    .venv/bin/python bench/flow_pipeline.py [--data ../shared/data] [--frames 9] [--rounds 2]

Eight real clips (mp4 / avi / mkv, 320x240 to 1920x1080) are cut to their first `--frames` frames
(re-encoded losslessly as FFV1 .mkv at their own size). Measured in one run, each with one OpenCV
thread per process, in `--rounds` interleaved rounds:
  bare      cv2 DualTVL1 `calc` over every pair of the already decoded, resized grey frames
  stage j1  run_flow(jobs=1): decode + resize + TV-L1 + uint8 encoding + PNG + packed store write
  bare x2   the bare loop in two processes at once (what the machine gives two processes now)
  stage j2  run_flow(jobs=2): two worker processes
Overhead = stage j1 / bare pairs/s (target >= 0.9), by wall clock and by CPU time (immune to other
processes' load). Parallel efficiency = stage j2 / (2 x stage j1) (target >= 0.85) by wall clock; on
a shared machine compare it with the bare loop's own, bare x2 / (2 x bare). CPU-time efficiency =
CPU per pair of stage j1 / CPU per pair of stage j2 counting the workers' whole lives (start-up,
imports, transfers): what two idle cores would give, as the videos split evenly between the jobs.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import joblib
import numpy as np
from bench_cli import at_least, run  # bench/, the script's own folder, is on sys.path
from joblib.externals.loky import get_reusable_executor

from flow.config import FlowConfig
from flow.stage import FlowJob, run_flow
from flow.tvl1 import create_tvl1, to_gray
from flow.video import VideoReader

CLIPS = ["arm_wrestling__mmaction2_demo.mp4", "clean_and_jerk__mmskeleton.mp4",
         "cleaning_pool__mmaction2_test.mp4", "skateboarding__mmskeleton.mp4", "tai_chi__mmskeleton.mp4",
         "apply_eye_makeup__mmaction2_test.avi", "flipping_pancake__decord.mkv",
         "drink_water__ntu_S001C001P001R001A001.avi"]


def cut(src: Path, dst: Path, frames: int) -> None:
    cap = cv2.VideoCapture(str(src))
    writer = None
    for _ in range(frames):
        ok, frame = cap.read()
        if not ok:
            break
        if writer is None:
            h, w = frame.shape[:2]
            writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"FFV1"), 25, (w, h))
        writer.write(frame)
    writer.release()
    cap.release()


def bare_loop(grey: list[np.ndarray], cfg: FlowConfig) -> tuple[int, float, float]:
    """(pairs, wall s, CPU s) of the plain OpenCV loop."""
    cv2.setNumThreads(1)
    tvl1 = create_tvl1(cfg)
    wall, cpu, pairs = time.perf_counter(), time.process_time(), 0
    for video in grey:
        for a, b in zip(video[:-1], video[1:], strict=True):
            tvl1.calc(a, b, None)
            pairs += 1
    return pairs, time.perf_counter() - wall, time.process_time() - cpu


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def stage(jobs: list[FlowJob], out: Path, cfg: FlowConfig, n_jobs: int) -> tuple[int, float, float]:
    """(pairs, wall s, CPU s of this process and its workers) of the flow stage from scratch."""
    shutil.rmtree(out, ignore_errors=True)
    cv2.setNumThreads(1)  # jobs=1 runs in this process
    get_reusable_executor().shutdown(wait=True)  # workers start (and are paid for) inside the run
    wall, cpu = time.perf_counter(), _cpu_seconds()
    summary = run_flow(jobs, out, dataclasses.replace(cfg, jobs=n_jobs))
    wall = time.perf_counter() - wall
    get_reusable_executor().shutdown(wait=True)  # so that the workers' CPU time is counted
    return summary.pairs, wall, _cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--frames", type=at_least(2), default=9)
    parser.add_argument("--rounds", type=at_least(1), default=2)
    args = parser.parse_args()
    # The bare loop is OpenCV's DualTVL1: the stage runs the same solver, so that the ratio is the work
    # around TV-L1 (the default backend, "fast", made it a comparison of two solvers, 4-5x apart)
    cfg = FlowConfig(backend="opencv")
    tmp = Path(tempfile.mkdtemp(prefix="flow_pipeline_bench_"))
    load_before = os.getloadavg()[0]
    wall: dict[str, list[float]] = {"bare": [], "stage j1": [], "bare x2": [], "stage j2": []}
    cpu: dict[str, list[float]] = {"bare": [], "stage j1": [], "stage j2": []}
    try:
        jobs = []
        for name in CLIPS:
            dst = tmp / "videos" / (Path(name).stem + ".mkv")
            dst.parent.mkdir(parents=True, exist_ok=True)
            cut(args.data / "clips" / name, dst, args.frames)
            jobs.append(FlowJob(f"clips/{dst.stem}", dst))
        # the same grey frames the stage computes on (it decodes and resizes the same way)
        grey = [to_gray(np.concatenate(list(VideoReader(j.path, cfg.size).chunks(1000, 1000)))) for j in jobs]
        half = [grey[0::2], grey[1::2]]
        for _ in range(args.rounds):
            pairs, secs, cpu_s = bare_loop(grey, cfg)
            wall["bare"].append(pairs / secs)
            cpu["bare"].append(pairs / cpu_s)
            pairs, secs, cpu_s = stage(jobs, tmp / "out", cfg, 1)
            wall["stage j1"].append(pairs / secs)
            cpu["stage j1"].append(pairs / cpu_s)
            start = time.perf_counter()
            done = joblib.Parallel(n_jobs=2)(joblib.delayed(bare_loop)(g, cfg) for g in half)
            wall["bare x2"].append(sum(d[0] for d in done) / (time.perf_counter() - start))
            pairs, secs, cpu_s = stage(jobs, tmp / "out", cfg, 2)
            wall["stage j2"].append(pairs / secs)
            cpu["stage j2"].append(pairs / cpu_s)
    finally:
        shutil.rmtree(tmp)

    # Ratios per round, then the median: one round disturbed by another process does not decide.
    rounds = range(args.rounds)
    over_wall = np.median([wall["stage j1"][r] / wall["bare"][r] for r in rounds])
    over_cpu = np.median([cpu["stage j1"][r] / cpu["bare"][r] for r in rounds])
    eff_bare = np.median([wall["bare x2"][r] / (2 * wall["bare"][r]) for r in rounds])
    eff_wall = np.median([wall["stage j2"][r] / (2 * wall["stage j1"][r]) for r in rounds])
    eff_cpu = np.median([cpu["stage j2"][r] / cpu["stage j1"][r] for r in rounds])
    print(f"\n{sum(len(g) - 1 for g in grey)} pairs per run at {cfg.size}, scale_step {cfg.scale_step}, "
          f"{joblib.cpu_count()} cores, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after\n")
    print("| run | pairs/s wall (each round) | pairs per CPU-second (each round) | ratio (median over rounds) |")
    print("|---|---|---|---|")
    ratios = {"bare": "baseline",
              "stage j1": f"overhead: {over_wall:.3f} of bare by wall clock, {over_cpu:.3f} by CPU time",
              "bare x2": f"machine: {eff_bare:.3f} parallel efficiency of the bare loop",
              "stage j2": f"parallel efficiency: {eff_wall:.3f} by wall clock, {eff_cpu:.3f} by CPU time"}
    for k, v in wall.items():
        cpu_cell = ", ".join(f"{x:.3f}" for x in cpu[k]) if k in cpu else "-"
        print(f"| {k} | {', '.join(f'{x:.3f}' for x in v)} | {cpu_cell} | {ratios[k]} |")


if __name__ == "__main__":
    run(main)
