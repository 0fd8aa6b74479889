"""The fast CPU TV-L1 (`flow.backend = "fast"`) against OpenCV's DualTVL1 and the torch backend.

    .venv/bin/python bench/flow_tvl1_fast.py speed --cores 1            # pairs/s at 340x256, interleaved
    .venv/bin/python bench/flow_tvl1_fast.py speed --cores 2            # one process per core, one thread each
    .venv/bin/python bench/flow_tvl1_fast.py speed --synth --cores 2    # SynthActions 64x64, configs/synth.toml
    .venv/bin/python bench/flow_tvl1_fast.py accuracy                   # EPE per data set, uint8 levels
    .venv/bin/python bench/flow_tvl1_fast.py compile                    # first-call JIT time, cold and cached

Speed: consecutive pairs of a real clip (arm_wrestling__mmaction2_demo.mp4) resized to 340x256,
grey, at the `[flow]` defaults (or `--set key=value`); or with `--synth` the frames of SynthActions
clips (64x64) at configs/synth.toml's `[flow]` settings. Each round times every backend on the same
pairs, one after the other (interleaved, so a change of load hits all alike); the table gives the
median pairs/s over the rounds and the median of the per-round ratios to OpenCV. `--cores N` runs N
worker processes with one thread each (how the flow stage uses N cores), each on its share of the
pairs; the rate is all pairs over the wall time of the slowest, and (robust to other jobs on
a shared machine) all pairs over the workers' summed CPU time. The torch backend (eager, one
thread, batch `--torch-batch`) is slow on the CPU, so it gets `--torch-pairs` pairs per worker.
Building each backend is not timed (the fast backend's JIT is compiled and cached beforehand).

Accuracy: RubberWhale, KITTI and the FlyingChairs crop (../shared/data/flow_gt, full size), and
SynthActions clips (pipeline.synth, 64x64, every consecutive pair, exact flow): mean end-point
error against ground truth for OpenCV and the fast backend, their ratio, the share of pixels within
0.1 px of OpenCV's flow, the share of uint8 codes (the `[flow]` bound) within one level of
OpenCV's, and OpenCV against itself with I0 moved by 2.55e-4 grey levels (how much the iteration
amplifies rounding on that data: the floor for any reimplementation). The real clip is compared to
OpenCV only (no ground truth). `--set use_initial_flow=true` evaluates the warm start.

Compile: a fresh process with an empty numba cache times import + the first pair, then a second
process with that cache (what every later process of the flow stage pays).
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from bench_cli import at_least, run  # bench/, the script's own folder, is on sys.path

from flow.config import FlowConfig
from flow.encoding import encode
from flow.evaluate import read_grey
from flow.formats import read_flow
from flow.tvl1 import OpenCVTVL1, create_tvl1, to_gray
from flow.tvl1_fast import FastTVL1
from flow.video import VideoReader
from pipeline.config import load_config

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CLIP = "arm_wrestling__mmaction2_demo.mp4"


def clip_frames(data: Path, count: int) -> np.ndarray:
    """`count` grey 340x256 frames of the real clip (looped if it is shorter)."""
    frames = np.concatenate(list(VideoReader(data / "clips" / CLIP, "340x256").chunks(64, 64)))
    return to_gray(np.resize(frames, (count, *frames.shape[1:])))


def synth_clips(count: int, frames: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` SynthActions clips (grey frames [T, 64, 64], exact flow [T-1, 64, 64, 2]), one per
    class in turn, the first `frames` frames of each (all with None)."""
    from pipeline.synth.config import SynthConfig
    from pipeline.synth.render import render_clip

    cfg = SynthConfig()
    names = cfg.class_names()
    out = []
    for k in range(count):
        clip = render_clip(cfg, k % len(names), 1 + k // len(names), 1)
        t = frames or len(clip.frames)
        out.append((to_gray(clip.frames[:t]), np.asarray(clip.flow[:t - 1], np.float32)))
    return out


def make_backend(name: str, cfg: FlowConfig, torch_batch: int):
    if name == "opencv":
        return OpenCVTVL1(cfg)
    if name == "fast":
        return FastTVL1(cfg)
    from flow.tvl1_torch import TorchTVL1

    return TorchTVL1(dataclasses.replace(cfg, batch_pairs=torch_batch), "cpu", compiled=False)


def _one_thread() -> None:
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _timed_compute(name: str, cfg: FlowConfig, torch_batch: int, videos: list[np.ndarray]) -> float:
    """CPU seconds of this worker for one backend to compute every pair of `videos` (built
    outside the timing)."""
    backend = make_backend(name, cfg, torch_batch)
    start = time.process_time()
    for frames in videos:
        backend.compute(frames)
    return time.process_time() - start


def speed(args: argparse.Namespace, cfg: FlowConfig) -> None:
    if args.synth:
        cfg = load_config(REPO / "configs" / "synth.toml", [f"flow.{item}" for item in args.set]).flow
        clips = [frames for frames, _ in synth_clips(args.cores * max(args.pairs // 31, 1))]
        jobs = [clips[w::args.cores] for w in range(args.cores)]  # whole videos per worker, as the stage
        torch_jobs = [[clip[: args.torch_pairs + 1]] for clip in clips[: args.cores]]
    else:
        frames = clip_frames(args.data, args.pairs * args.cores + 1)
        jobs = [[frames[w * args.pairs: (w + 1) * args.pairs + 1]] for w in range(args.cores)]
        torch_jobs = [[job[0][: args.torch_pairs + 1]] for job in jobs]
    names = [n for n in ("opencv", "torch", "fast") if n in args.backends]
    pairs = {n: sum(len(v) - 1 for job in (torch_jobs if n == "torch" else jobs) for v in job) for n in names}
    ctx = multiprocessing.get_context("spawn")
    rates: dict[str, list[float]] = {n: [] for n in names}
    cpu_rates: dict[str, list[float]] = {n: [] for n in names}
    with ctx.Pool(args.cores, initializer=_one_thread) as pool:
        # Warm-up: every worker imports, compiles or loads the JIT cache, and computes a pair.
        pool.starmap(_timed_compute, [(n, cfg, args.torch_batch, [job[0][:2]]) for n in names
                                      for job in jobs])
        for r in range(args.rounds):
            load = os.getloadavg()[0]
            line = []
            for n in names:
                work = torch_jobs if n == "torch" else jobs
                start = time.perf_counter()
                cpu = pool.starmap(_timed_compute, [(n, cfg, args.torch_batch, job) for job in work])
                rates[n].append(pairs[n] / (time.perf_counter() - start))
                cpu_rates[n].append(pairs[n] / sum(cpu))
                line.append(f"{n} {rates[n][-1]:.3f} ({cpu_rates[n][-1]:.3f} per CPU-s)")
            print(f"round {r + 1} (load {load:.2f}): " + ", ".join(line) + " pairs/s", flush=True)
    what = "SynthActions 64x64, configs/synth.toml [flow]" if args.synth else f"340x256 {CLIP}"
    print(f"\n{what}, {args.cores} process(es) x 1 thread, {args.rounds} rounds, load after "
          f"{os.getloadavg()[0]:.2f}; pairs per round: "
          + ", ".join(f"{n} {pairs[n]}" for n in names) + f"\nFlowConfig {dataclasses.asdict(cfg)}\n")
    print("| backend | pairs/s wall (median) | each round | vs OpenCV, wall | pairs per CPU-second "
          "(median) | vs OpenCV, CPU |")
    print("|---|---|---|---|---|---|")

    def ratio(table: dict[str, list[float]], n: str) -> float:  # median of the per-round ratios
        if "opencv" not in table:
            return np.nan
        return statistics.median(a / b for a, b in zip(table[n], table["opencv"], strict=True))

    for n in names:
        print(f"| {n} | {statistics.median(rates[n]):.3f} | {', '.join(f'{x:.3f}' for x in rates[n])} | "
              f"{ratio(rates, n):.2f}x | {statistics.median(cpu_rates[n]):.3f} | {ratio(cpu_rates, n):.2f}x |")
    if args.synth and "fast" in rates:
        per_s = statistics.median(rates["fast"])
        print(f"\nmake flow on SynthActions (10,416 pairs) with the fast backend on {args.cores} core(s): "
              f"about {10416 / per_s:.0f} s of TV-L1")


def within(a: np.ndarray, b: np.ndarray, px: float = 0.1) -> float:
    return float((np.linalg.norm(a - b, axis=-1) < px).mean())


def levels(a: np.ndarray, b: np.ndarray, bound: float) -> float:
    """Share of uint8 codes of a within one level of b's (the stored encoding)."""
    return float((np.abs(encode(a, bound).astype(np.int16) - encode(b, bound).astype(np.int16)) <= 1).mean())


def accuracy(args: argparse.Namespace, cfg: FlowConfig) -> None:
    _one_thread()
    root = args.data / "flow_gt"
    # name -> list of (grey frames [T, H, W], ground truth [T-1, H, W, 2] or None, valid or None)
    cases: dict[str, list] = {}
    for name, a, b, gt in (
            ("RubberWhale", "middlebury_rubberwhale/frame10.png", "middlebury_rubberwhale/frame11.png",
             "middlebury_rubberwhale/flow10.flo"),
            ("KITTI", "kitti_000/frame1.png", "kitti_000/frame2.png", "kitti_000/flow_gt.png"),
            ("FlyingChairs", "flyingchairs_tiny/00001_img1.ppm", "flyingchairs_tiny/00001_img2.ppm",
             "flyingchairs_tiny/00001_flow.flo")):
        flow, valid = read_flow(root / gt)
        cases[name] = [(np.stack([read_grey(root / a), read_grey(root / b)]), flow[None], valid[None])]
    cases["SynthActions"] = [(frames, flow, np.ones(flow.shape[:-1], bool))
                             for frames, flow in synth_clips(args.synth_clips, args.synth_frames)]
    cases[f"clip {CLIP} (no GT)"] = [(clip_frames(args.data, args.clip_pairs + 1), None, None)]
    if args.only:
        cases = {name: videos for name, videos in cases.items() if name.split()[0] in args.only}

    print(f"FlowConfig {dataclasses.asdict(cfg)}\n")
    print("| data | pairs | EPE OpenCV | EPE fast | fast / OpenCV | within 0.1 px of OpenCV | uint8 within 1 level "
          "of OpenCV | OpenCV vs itself (I0 + 2.55e-4): 0.1 px / 1 level |")
    print("|---|---|---|---|---|---|---|---|")
    opencv, fast = OpenCVTVL1(cfg), FastTVL1(cfg)
    for name, videos in cases.items():
        err_cv, err_fast, share, level, floor, floor_level, n = [], [], [], [], [], [], 0
        for frames, gt, valid in videos:
            ours, theirs = fast.compute(frames), opencv.compute(frames)
            n += len(ours)
            share.append(within(ours, theirs))
            level.append(levels(ours, theirs, cfg.bound))
            # OpenCV on float input reads grey levels / 255: one nudged first frame, cold start.
            nudged = create_tvl1(cfg).calc((frames[0] / 255.0 + 1e-6).astype(np.float32),
                                           (frames[1] / 255.0).astype(np.float32), None)
            floor.append(within(nudged, theirs[0]))
            floor_level.append(levels(nudged, theirs[0], cfg.bound))
            if gt is not None:
                err_cv.append(np.linalg.norm(theirs - gt, axis=-1)[valid])
                err_fast.append(np.linalg.norm(ours - gt, axis=-1)[valid])
        if err_cv:
            e_cv, e_fast = float(np.concatenate(err_cv).mean()), float(np.concatenate(err_fast).mean())
            epe = f"{e_cv:.4f} | {e_fast:.4f} | {e_fast / e_cv:.4f}"
        else:
            epe = "- | - | -"
        print(f"| {name} | {n} | {epe} | {100 * np.mean(share):.2f}% | {100 * np.mean(level):.3f}% | "
              f"{100 * np.mean(floor):.2f}% / {100 * np.mean(floor_level):.3f}% |", flush=True)


COMPILE_SNIPPET = """
import time
start = time.perf_counter()
import numpy as np
from flow.config import FlowConfig
from flow.tvl1_fast import FastTVL1
frames = (np.random.default_rng(0).uniform(0, 255, (2, 64, 80))).astype(np.uint8)
FastTVL1(FlowConfig()).compute(frames)
print(f"{time.perf_counter() - start:.2f}")
"""


def compile_time(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("empty numba cache (first process ever)", "cached (every later process)"):
            out = subprocess.run([sys.executable, "-c", COMPILE_SNIPPET], env=env, cwd=REPO, check=True,
                                 capture_output=True, text=True).stdout.strip()
            print(f"import + first pair (64x80), {label}: {out} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("speed", "accuracy", "compile"))
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--cores", type=at_least(1), default=1, help="speed: worker processes, one thread each")
    parser.add_argument("--rounds", type=at_least(1), default=3)
    parser.add_argument("--pairs", type=at_least(1), default=8, help="speed: pairs per worker per round (--synth: "
                        "pairs / 31 clips of 32 frames per worker)")
    parser.add_argument("--backends", nargs="+", choices=("opencv", "torch", "fast"),
                        default=["opencv", "torch", "fast"])
    parser.add_argument("--torch-pairs", type=int, default=2, help="speed: pairs per worker for torch")
    parser.add_argument("--torch-batch", type=int, default=8)
    parser.add_argument("--synth", action="store_true", help="speed: SynthActions at configs/synth.toml")
    parser.add_argument("--synth-clips", type=int, default=12, help="accuracy: SynthActions clips")
    parser.add_argument("--synth-frames", type=int, default=8, help="accuracy: frames per clip")
    parser.add_argument("--clip-pairs", type=int, default=8, help="accuracy: pairs of the real clip")
    parser.add_argument("--only", nargs="+", choices=("RubberWhale", "KITTI", "FlyingChairs", "SynthActions", "clip"),
                        help="accuracy: some of the data sets")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a [flow] setting, e.g. --set use_initial_flow=true (repeatable)")
    args = parser.parse_args()
    cfg = load_config(None, [f"flow.{item}" for item in args.set]).flow
    if args.mode == "speed":
        speed(args, cfg)
    elif args.mode == "accuracy":
        accuracy(args, cfg)
    else:
        compile_time(args)


if __name__ == "__main__":
    run(main)
