"""Per-snippet features (`features --stride`): speed on a real clip, and peak memory on a 1-hour video.

Speed (default): one clip of ../shared/data/clips through fusion.snippets.run_snippets at stride 8
and 16 (window = the clip length, 16), both streams, the default [flow] settings (TV-L1 at 340x256),
against a baseline measured in the same run: each snippet on its own (fusion.decoded on the video
for that snippet's views alone, as a per-clip extractor does: decoding again, TV-L1 on its 16 pairs
even where windows overlap). Printed: snippets/s per stream, the share of the time in decoding, flow
and the network, the TV-L1 pairs computed against those the windows read, and the ratio.

Memory (`--memory`): peak RSS of `extract_snippet_features` (the whole code path: streaming buffer,
both streams, the .npy / .json written) on a 30 fps 340x256 video of `--minutes` (60 = 1 hour), each
in a fresh process. The video is a synthetic frame source (frames made on the fly, fusion.snippets's
reader replaced) and, for the long run, TV-L1 a stand-in returning zero flow of the right shape
(the real one takes ~30 ms per pair at its cheapest here: 56 minutes for an hour); the real TV-L1's
own working memory is measured by a short run with it.

    flock /tmp/bench.lock .venv/bin/python bench/snippet_features.py [--clip NAME] [--arch p3d_tiny]
    flock /tmp/bench.lock .venv/bin/python bench/snippet_features.py --memory --minutes 60
    flock /tmp/bench.lock .venv/bin/python bench/snippet_features.py --memory --arch p3d199   # the network's share
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_cli import run  # bench/, the script's own folder, is on sys.path

from flow.config import FlowConfig
from fusion.config import EvalConfig
from fusion.decoded import decode_for_views
from fusion.engine import Engine, open_stream
from fusion.snippets import run_snippets
from fusion.views import View
from streams import transforms
from streams.checkpoint import make_payload, save_checkpoint
from streams.config import ModelConfig, TrainConfig
from streams.p3d import build_model

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "clips"


def checkpoint(path: Path, modality: str, arch: str, train_cfg: TrainConfig) -> Path:
    torch.manual_seed(0)
    model = build_model(arch, 10, transforms.CHANNELS[modality])
    save_checkpoint(path, make_payload(
        model, arch=arch, modality=modality, classes=[f"c{k}" for k in range(10)],
        input_convention=transforms.INPUT_CONVENTION[modality], model_config=dataclasses.asdict(ModelConfig(arch=arch)),
        train_config=dataclasses.asdict(train_cfg), step=0, epoch=0, metrics={}))
    return path


def speed(args: argparse.Namespace, root: Path) -> None:
    torch.set_num_threads(1)
    train_cfg = TrainConfig(clip_len=16, resize=[128, 171], crop=112)
    streams = [open_stream(m, checkpoint(root / f"{m}.pt", m, args.arch, train_cfg)) for m in ("rgb", "flow")]
    engine = Engine(streams, 16, torch.device("cpu"))
    video = CLIPS / args.clip
    flow_cfg = FlowConfig()
    print(f"{video.name}, {args.arch} 16x112x112, TV-L1 defaults at {flow_cfg.size}, one thread")
    print("| stride | snippets | streamed: snippets/s, both / rgb alone / flow alone | decode / flow / network "
          "| TV-L1 pairs (computed / read by windows) | per-snippet baseline, both | ratio |")
    print("|---|---|---|---|---|---|---|")
    for stride in (8, 16):
        started = time.perf_counter()
        got = run_snippets(video, engine, flow_cfg, stride)
        streamed = time.perf_counter() - started
        sec = got.seconds
        network = sec["network_rgb"] + sec["network_flow"]
        total = sec["decode"] + sec["flow"] + network
        shares = " / ".join(f"{100 * t / total:.0f}%" for t in (sec["decode"], sec["flow"], network))
        # a stream alone: decoding, its network, and for flow TV-L1
        alone = (len(got.starts) / (sec["decode"] + sec["network_rgb"]),
                 len(got.starts) / (sec["decode"] + sec["flow"] + sec["network_flow"]))
        computed = max(got.starts) + 16 if got.starts else 0
        read = 16 * len(got.starts)
        started = time.perf_counter()
        for s in got.starts:  # the baseline: each snippet alone
            views = [View(s, "center", False)]
            decoded, _ = decode_for_views(video, flow_cfg, {"rgb": 16, "flow": 16}, lambda m, n, v=views: v)
            with decoded:
                for stream in streams:
                    engine.run(stream.name, decoded, [], views=[views])
        baseline = time.perf_counter() - started
        n = len(got.starts)
        print(f"| {stride} | {n} | {n / streamed:.2f} / {alone[0]:.2f} / {alone[1]:.2f} | {shares} | "
              f"{computed} / {read} | {n / baseline:.2f} snippets/s | {baseline / streamed:.2f}x |", flush=True)


class SyntheticReader:
    """A 30 fps 340x256 video made on the fly: a textured background drifting one pixel a frame."""

    def __init__(self, frames: int):
        self.declared_frames = frames
        self.fps = 30.0
        self.frames_read = 0
        rng = np.random.default_rng(0)
        self.base = rng.integers(0, 256, (256, 340 + frames % 340 + 340, 3), dtype=np.uint8)

    def frames(self):
        for t in range(self.declared_frames):
            self.frames_read += 1
            x = t % 340
            yield np.ascontiguousarray(self.base[:, x:x + 340])

    def check_complete(self, tolerance: float) -> None:
        pass


class ZeroFlow:
    def compute(self, gray: np.ndarray) -> np.ndarray:
        return np.zeros((len(gray) - 1, *gray.shape[1:], 2), np.float32)


def memory_child(minutes: float, real_tvl1: bool, root: Path, arch: str = "p3d_tiny", batch: int = 16) -> None:
    """One measurement (in its own process): prints a JSON line with the peak RSS."""
    from fusion import snippets
    from fusion.snippet_features import extract_snippet_features

    torch.set_num_threads(1)
    frames = int(minutes * 60 * 30)
    snippets.open_reader = lambda path, size="", max_pixels=0: SyntheticReader(frames)
    if not real_tvl1:
        snippets.make_backend = lambda cfg: ZeroFlow()
    if arch == "p3d_tiny":
        train_cfg = TrainConfig(clip_len=16, resize=[24, 32], crop=16)  # a cheap network: the video is measured
    else:  # the network measured: P3D's clips, 16 x 160 x 160
        train_cfg = TrainConfig(clip_len=16, resize=[182, 242], crop=160)
    ckpts = {m: checkpoint(root / f"{m}.pt", m, arch, train_cfg) for m in ("rgb", "flow")}
    (root / "video.avi").write_bytes(b"stands for the synthetic video")
    flow_cfg = FlowConfig(nscales=1, warps=1, inner_iterations=1, outer_iterations=1, median_filtering=1)
    started = time.perf_counter()
    extract_snippet_features([root / "video.avi"], ckpts, root / "out", flow_cfg, EvalConfig(jobs=1, batch_views=batch),
                             stride=8, progress=False)
    rows = np.load(root / "out" / "video.npy", mmap_mode="r").shape
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"minutes": minutes, "frames": frames, "real_tvl1": real_tvl1, "arch": arch, "snippets": rows[0],
                      "columns": rows[1], "peak_rss_mb": round(peak), "seconds": round(time.perf_counter() - started)}))


def memory(args: argparse.Namespace) -> None:
    runs = [(1.0, False, "p3d_tiny"), (args.minutes, False, "p3d_tiny"), (1.0, True, "p3d_tiny")]
    if args.arch != "p3d_tiny":  # the network's own share: a few batches of full-size clips
        runs = [(0.1, False, args.arch)]
    batch = args.batch
    print("| video | TV-L1 | network | snippets x columns | peak RSS | seconds |")
    print("|---|---|---|---|---|---|")
    for minutes, real, arch in runs:
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, __file__, "--child", str(minutes), "--root", tmp, "--arch", arch,
                       "--batch", str(batch)]
            command += ["--real-tvl1"] if real else []
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            row = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("{")))
        kind = "real (cheapest settings)" if real else "zero-flow stand-in"
        net = f"p3d_tiny 16x16x16, batch {batch}" if arch == "p3d_tiny" else f"{arch} 16x160x160, batch {batch}"
        print(f"| {minutes:g} min, {row['frames']} frames 340x256 | {kind} | {net} | {row['snippets']} x "
              f"{row['columns']} | {row['peak_rss_mb']} MB | {row['seconds']} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default="drink_water__ntu_S001C001P001R001A001.avi")
    parser.add_argument("--arch", default="p3d_tiny")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--batch", type=int, default=16, help="[eval] batch_views: snippets at once")
    parser.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--real-tvl1", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if args.child is not None:
        memory_child(args.child, args.real_tvl1, args.root, args.arch, args.batch)
    elif args.memory:
        memory(args)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            speed(args, Path(tmp))
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    run(main)
