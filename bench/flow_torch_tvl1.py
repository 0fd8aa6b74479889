"""The batched PyTorch TV-L1 against OpenCV's DualTVL1: pairs/s at 340x256 and accuracy.

    .venv/bin/python bench/flow_torch_tvl1.py                          # speed on the CPU
    .venv/bin/python bench/flow_torch_tvl1.py --device cuda --pairs 512 --batch 64 128 256
    .venv/bin/python bench/flow_torch_tvl1.py --accuracy               # vs OpenCV and ground truth
    .venv/bin/python bench/flow_torch_tvl1.py --stores OPENCV_STORE TORCH_STORE   # two `make flow` stores

Speed: consecutive pairs of a real clip resized to 340x256 (grey), the `[flow]` defaults (or
`--set key=value`), OpenCV's CPU DualTVL1 and the torch backend eager and compiled, with the same
number of threads, in the same run; pairs/s and the ratio to OpenCV, the share of pixels within
0.1 px of OpenCV's flow, and on CUDA the peak memory per pair (torch.cuda.max_memory_allocated).
Building the backend and its first two pairs (compilation, for the compiled rows) are timed apart
and not counted; torch.compile caches its kernels on disk, so later processes compile faster.

Accuracy: RubberWhale and KITTI at full size and SynthActions pairs (pipeline.synth, 64x64), at the
chosen defaults and at OpenCV's CUDA-equivalent settings: the share within 0.1 px of OpenCV's flow,
the same share for OpenCV against itself with I0 moved by 2.55e-4 grey levels (how far the
iteration itself amplifies rounding), and mean EPE against ground truth of both.

Stores: the videos of two stores (e.g. `make flow` with each backend) compared frame by frame: the
RGB frames must be identical, and the decoded flow is compared within 0.1 px and in uint8 levels.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from bench_cli import at_least, run  # bench/, the script's own folder, is on sys.path

from flow.config import FlowConfig
from flow.evaluate import read_grey
from flow.formats import read_flow
from flow.tvl1 import OpenCVTVL1, create_tvl1, to_gray
from flow.tvl1_torch import TorchTVL1
from flow.video import VideoReader
from p3dbase.device import resolve_device
from pipeline.config import load_config

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CUDA_EQUIVALENT = dict(median_filtering=1, inner_iterations=1, outer_iterations=300)


def clip_frames(data: Path, pairs: int) -> np.ndarray:
    """pairs + 1 grey 340x256 frames of a real clip (looped if the clip is shorter)."""
    reader = VideoReader(data / "clips" / "arm_wrestling__mmaction2_demo.mp4", "340x256")
    frames = np.concatenate(list(reader.chunks(64, 64)))
    return to_gray(np.resize(frames, (pairs + 1, *frames.shape[1:])))


def within(a: np.ndarray, b: np.ndarray, px: float = 0.1) -> float:
    return float((np.linalg.norm(a - b, axis=-1) < px).mean())


def time_torch(backend: TorchTVL1, frames: np.ndarray) -> tuple[float, np.ndarray, float | None]:
    """Seconds for all consecutive pairs of `frames`, `cfg.batch_pairs` at a time and each batch's
    flow brought back to the host (as the flow stage does), the flow [N, H, W, 2], and on CUDA the
    peak memory per pair of a batch beyond the frames already on the device."""
    dev, batch = backend.device, backend.cfg.batch_pairs
    gray = torch.from_numpy(frames).to(dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        baseline = torch.cuda.memory_allocated(dev)
    start = time.perf_counter()
    pairs = len(frames) - 1
    flows = []
    for k in range(0, pairs, batch):
        end = min(k + batch, pairs)
        flows.append(backend.compute_pairs(gray[k:end], gray[k + 1:end + 1]).permute(0, 2, 3, 1).cpu())
    seconds = time.perf_counter() - start
    per_pair = None
    if dev.type == "cuda":
        per_pair = (torch.cuda.max_memory_allocated(dev) - baseline) / min(batch, pairs)
    return seconds, torch.cat(flows).numpy(), per_pair


def speed(args: argparse.Namespace, cfg: FlowConfig) -> None:
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    frames = clip_frames(args.data, args.pairs)
    n = len(frames) - 1
    device = resolve_device(args.device, "--device")

    start = time.perf_counter()
    reference = OpenCVTVL1(cfg).compute(frames[: args.opencv_pairs + 1])
    opencv_rate = args.opencv_pairs / (time.perf_counter() - start)
    print(f"opencv: {opencv_rate:.3f} pairs/s over {args.opencv_pairs} pairs", flush=True)

    rows = [("OpenCV DualTVL1 (CPU)", 1, opencv_rate, 1.0, None, None)]
    eager_flow = None
    for compiled in ([False, True] if not args.no_compile else [False]):
        for batch in args.batch:
            start = time.perf_counter()
            backend = TorchTVL1(dataclasses.replace(cfg, batch_pairs=batch), args.device, compiled=compiled)
            time_torch(backend, frames[:3])  # compilation (warm-up in the constructor), CUDA context
            print(f"{'compile + ' if compiled else ''}first 2 pairs: {time.perf_counter() - start:.1f} s", flush=True)
            seconds, flow, mem = time_torch(backend, frames)
            agree = within(flow[: len(reference)], reference)
            if not compiled and eager_flow is None:
                eager_flow = flow
            same = float(np.abs(flow - eager_flow).max())
            name = f"torch {'compiled' if backend.compiled else 'eager'} ({device})"
            rows.append((name, batch, n / seconds, n / seconds / opencv_rate, agree, mem))
            print(f"{name} batch {batch}: {n / seconds:.3f} pairs/s, within 0.1 px of OpenCV {agree:.4f}, "
                  f"max |diff to eager| {same:.2e} px", flush=True)

    print(f"\n340x256, {n} pairs ({args.opencv_pairs} for OpenCV), {args.threads} CPU thread(s), "
          f"FlowConfig {dataclasses.asdict(cfg)}\n")
    print("| backend | batch | pairs/s | vs OpenCV | within 0.1 px of OpenCV | memory / pair |")
    print("|---|---|---|---|---|---|")
    for name, batch, rate, ratio, agree, mem in rows:
        agree_s = "-" if agree is None else f"{100 * agree:.1f}%"
        mem_s = "-" if mem is None else f"{mem / 2**20:.0f} MiB"
        print(f"| {name} | {batch} | {rate:.3f} | {ratio:.2f}x | {agree_s} | {mem_s} |")


def synth_pairs(count: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """`count` SynthActions pairs (64x64, one per class, mid-clip) with their exact flow."""
    from pipeline.synth.config import SynthConfig
    from pipeline.synth.render import render_clip

    cfg = SynthConfig()
    out = []
    for k in range(count):
        clip = render_clip(cfg, k % len(cfg.class_names()), 1 + k // len(cfg.class_names()), 1)
        t = len(clip.frames) // 2
        gray = to_gray(clip.frames[t:t + 2])
        out.append((gray[0], gray[1], clip.flow[t], np.ones(gray.shape[1:], bool)))
    return out


def accuracy(args: argparse.Namespace, base: FlowConfig) -> None:
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    root = args.data / "flow_gt"
    cases: dict[str, list] = {}
    for name, a, b, gt in (("RubberWhale", "middlebury_rubberwhale/frame10.png", "middlebury_rubberwhale/frame11.png",
                            "middlebury_rubberwhale/flow10.flo"),
                           ("KITTI", "kitti_000/frame1.png", "kitti_000/frame2.png", "kitti_000/flow_gt.png")):
        if args.only and name not in args.only:
            continue
        cases[name] = [(read_grey(root / a), read_grey(root / b), *read_flow(root / gt))]
    if not args.only or "SynthActions" in args.only:
        cases["SynthActions"] = synth_pairs(args.synth_pairs)

    print("| data | settings | within 0.1 px of OpenCV | OpenCV vs itself, I0 + 2.55e-4 | EPE OpenCV | "
          "EPE torch | torch / OpenCV |")
    print("|---|---|---|---|---|---|---|")
    for settings, change in (("defaults", {}), ("CUDA-equivalent", CUDA_EQUIVALENT)):
        cfg = dataclasses.replace(base, **change)
        backend = TorchTVL1(cfg, args.device)  # compiled on GPUs, eager on the CPU (the defaults)
        for name, pairs in cases.items():
            shares, floors, epe_cv, epe_t = [], [], [], []
            for i0, i1, gt, valid in pairs:
                theirs = create_tvl1(cfg).calc(i0, i1, None)
                nudged = create_tvl1(cfg).calc((i0 / 255.0 + 1e-6).astype(np.float32),
                                               (i1 / 255.0).astype(np.float32), None)
                ours = backend.compute(np.stack([i0, i1]))[0]
                shares.append(within(ours, theirs))
                floors.append(within(nudged, theirs))
                epe_cv.append(np.linalg.norm(theirs - gt, axis=-1)[valid])
                epe_t.append(np.linalg.norm(ours - gt, axis=-1)[valid])
            cv_e, t_e = float(np.concatenate(epe_cv).mean()), float(np.concatenate(epe_t).mean())
            print(f"| {name} ({len(pairs)} pair{'s' if len(pairs) > 1 else ''}) | {settings} | "
                  f"{100 * np.mean(shares):.2f}% | {100 * np.mean(floors):.2f}% | {cv_e:.3f} | {t_e:.3f} | "
                  f"{t_e / cv_e:.3f} |", flush=True)


def compare_stores(a_root: Path, b_root: Path) -> None:
    from flow.encoding import decode
    from flow.store import open_store

    a, b = open_store(a_root), open_store(b_root)
    ids = a.video_ids()
    if sorted(ids) != sorted(b.video_ids()):
        raise SystemExit(f"the stores hold different videos: {len(ids)} vs {len(b.video_ids())}")
    bound = a.bound
    if b.bound != bound:
        raise SystemExit(f"the stores encode flow with different bounds: {a.bound} vs {b.bound}")
    shares, levels, same_rgb = [], [], True
    for video in ids:
        va, vb = a.open(video), b.open(video)
        if (va.num_frames, va.num_flows) != (vb.num_frames, vb.num_flows):
            raise SystemExit(f"{video}: {va.num_frames} vs {vb.num_frames} frames")
        same_rgb &= bool(np.array_equal(va.rgb(range(va.num_frames)), vb.rgb(range(vb.num_frames))))
        fa, fb = va.flow(range(va.num_flows)), vb.flow(range(vb.num_flows))
        shares.append(within(decode(fa, bound), decode(fb, bound)))
        levels.append(float((np.abs(fa.astype(int) - fb.astype(int)) <= 1).mean()))
    print(f"{len(ids)} videos, layouts {a.layout} / {b.layout}, RGB identical: {same_rgb}, bound {bound}")
    print(f"decoded flow within 0.1 px: {100 * np.mean(shares):.3f}% (worst video {100 * min(shares):.2f}%), "
          f"uint8 within 1 level: {100 * np.mean(levels):.3f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", type=at_least(1), default=8, help="pairs timed for torch")
    parser.add_argument("--opencv-pairs", type=int, default=4, help="pairs timed for OpenCV (a prefix)")
    parser.add_argument("--batch", type=int, nargs="+", default=[8], help="batch sizes (flow.batch_pairs)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--accuracy", action="store_true", help="accuracy instead of speed")
    parser.add_argument("--only", nargs="*", help="accuracy: RubberWhale, KITTI and/or SynthActions")
    parser.add_argument("--synth-pairs", type=int, default=12)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a [flow] setting, e.g. --set scale_step=0.8 (repeatable)")
    parser.add_argument("--stores", nargs=2, type=Path, metavar=("A", "B"), help="compare two flow stores")
    args = parser.parse_args()
    if args.stores:
        compare_stores(*args.stores)
        return
    cfg = load_config(None, [f"flow.{item}" for item in args.set]).flow
    (accuracy if args.accuracy else speed)(args, cfg)


if __name__ == "__main__":
    run(main)
