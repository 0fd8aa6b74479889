"""Would a video codec beat the JPEG store at reading windows? H.264 against the mmaction layout.

    .venv/bin/python bench/video_codec.py [--data ../shared/data] [--frames 80] [--clips 3] [--rounds 5]

A store of frames as an H.264 stream (mmaction2's VideoDataset reads the videos themselves) is far
smaller than JPEGs; whether it reads a random 16-frame window faster decides whether it could be the
route to reading windows at 1.5x the mmaction layout. Same 340x256 frames of real clips as
bench/flow_store.py, in one process:

- the mmaction layout: each frame a q95 JPEG (the store's encoder), read by cv2.imdecode;
- the store's decoder: the same JPEGs by simplejpeg into one reused array;
- H.264 (libx264 through PyAV, which bundles ffmpeg; no B-frames, a keyframe every `g` frames,
  tune=fastdecode: no CABAC, no deblocking, the fastest stream libx264 writes), one stream per clip,
  its packets kept in memory: a window is decoded from the keyframe at or before its first frame
  (up to g-1 frames more), on one thread, and converted to BGR by cv2 (YUV 4:2:0 -> BGR).

Bytes per frame, the mean absolute difference from the original frames in levels (every frame
decoded once), and CPU ms per window (median of interleaved rounds, the same windows for every
layout), with the ratio per CPU-second against the mmaction layout. PyAV (`pip install av`) is not
a dependency of the project: without it the bench stops with one line.
"""
from __future__ import annotations

import argparse
import fractions
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from flow import codec
from flow.config import FlowConfig
from flow.video import VideoReader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cli import at_least  # noqa: E402 (bench/, the script's own folder)
from bench_cli import run as run_bench  # noqa: E402
from flow_store import CLIPS  # noqa: E402 (the clips of bench/flow_store.py)

WINDOW, QUALITY = 16, 95
MMACTION, STORE = "mmaction layout (q95 JPEG, cv2.imdecode)", "store's decoder (simplejpeg)"
STREAMS = [(14, 8), (14, 16), (18, 8), (18, 16)]  # (crf, keyframe interval)


def h264_packets(av, frames: np.ndarray, crf: int, gop: int) -> list[bytes]:
    """One packet per frame: libx264, no B-frames, a keyframe every `gop` frames (no scene cuts)."""
    h, w = frames.shape[1:3]
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt, enc.time_base = w, h, "yuv420p", fractions.Fraction(1, 25)
    enc.options = {"crf": str(crf), "preset": "medium", "tune": "fastdecode",
                   "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"}
    packets = []
    for i, frame in enumerate(frames):
        picture = av.VideoFrame.from_ndarray(frame, format="bgr24").reformat(format="yuv420p")
        picture.pts = i
        packets += [bytes(p) for p in enc.encode(picture)]
    packets += [bytes(p) for p in enc.encode(None)]
    if len(packets) != len(frames):
        raise RuntimeError(f"libx264 wrote {len(packets)} packets for {len(frames)} frames")
    return packets


def h264_window(av, packets: list[bytes], gop: int, start: int, n: int) -> list[np.ndarray]:
    """Frames start .. start+n-1 as BGR: decoded from the keyframe at or before `start`."""
    decoder = av.CodecContext.create("h264", "r")
    decoder.thread_count = 1  # CPU per window, as one loader worker pays it
    pictures = []
    for i in range(start - start % gop, start + n):
        pictures += decoder.decode(av.Packet(packets[i]))
    pictures += decoder.decode(None)
    return [cv2.cvtColor(p.to_ndarray(), cv2.COLOR_YUV2BGR_I420) for p in pictures[-n:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--frames", type=at_least(WINDOW + 16), default=80)
    parser.add_argument("--clips", type=at_least(1), default=3)
    parser.add_argument("--windows", type=at_least(1), default=40, help="random windows a round")
    parser.add_argument("--rounds", type=at_least(1), default=5)
    args = parser.parse_args()
    try:
        import av
    except ImportError:
        sys.exit("video_codec: needs PyAV (pip install av), which the project does not depend on")

    size = FlowConfig().size
    clips = [next(VideoReader(args.data / "clips" / name, size).chunks(args.frames, 1))
             for name in CLIPS[: args.clips]]
    n = min(len(c) for c in clips)
    clips = [c[:n] for c in clips]
    print(f"{len(clips)} clips x {n} frames of {clips[0].shape[2]}x{clips[0].shape[1]}, windows of {WINDOW}")

    jpegs = [[codec.jpeg_bytes(f, QUALITY) for f in c] for c in clips]
    streams = {(crf, gop): [h264_packets(av, c, crf, gop) for c in clips] for crf, gop in STREAMS}
    out = np.empty(clips[0].shape[1:], np.uint8)

    def mmaction(c: int, s: int) -> None:
        for blob in jpegs[c][s: s + WINDOW]:
            cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)

    def store(c: int, s: int) -> None:
        for blob in jpegs[c][s: s + WINDOW]:
            codec.decode_jpeg(np.frombuffer(blob, np.uint8), out)

    def h264(key: tuple[int, int]) -> Callable[[int, int], None]:
        return lambda c, s: h264_window(av, streams[key][c], key[1], s, WINDOW)

    def label(crf: int, gop: int) -> str:
        return f"H.264 crf {crf}, keyframe every {gop}"

    reads = {MMACTION: mmaction, STORE: store} | {label(*key): h264(key) for key in STREAMS}
    jpeg_error = np.mean([np.abs(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR).astype(np.int16) - f).mean()
                          for j, c in zip(jpegs, clips, strict=True) for b, f in zip(j, c, strict=True)])
    jpeg_size = np.mean([len(b) for j in jpegs for b in j])
    size_of, error = {MMACTION: jpeg_size, STORE: jpeg_size}, {MMACTION: jpeg_error, STORE: jpeg_error}
    for crf, gop in STREAMS:
        packets = streams[(crf, gop)]
        decoded = [np.stack([f for s in range(0, n, gop) for f in h264_window(av, p, gop, s, min(gop, n - s))])
                   for p in packets]
        size_of[label(crf, gop)] = np.mean([len(p) for s in packets for p in s])
        error[label(crf, gop)] = np.mean([np.abs(d.astype(np.int16) - c).mean()
                                          for d, c in zip(decoded, clips, strict=True)])

    rng = random.Random(0)
    windows = [(rng.randrange(len(clips)), rng.randrange(n - WINDOW + 1)) for _ in range(args.windows)]
    times: dict[str, list[float]] = {name: [] for name in reads}
    load_before = open("/proc/loadavg").read().split()[0]
    for r in range(args.rounds):
        for name in (list(reads) if r % 2 == 0 else list(reads)[::-1]):  # interleaved: drift hits every row
            t = time.process_time()
            for c, s in windows:
                reads[name](c, s)
            times[name].append((time.process_time() - t) / len(windows) * 1e3)
    load_after = open("/proc/loadavg").read().split()[0]

    base = float(np.median(times[MMACTION]))
    print(f"\nload average {load_before} before, {load_after} after; median of {args.rounds} rounds of "
          f"{args.windows} windows\n")
    print("| read | bytes per frame | mean abs. error (levels) | CPU ms per window | windows per CPU-s vs mmaction |")
    print("|---|---|---|---|---|")
    for name in reads:
        ms = float(np.median(times[name]))
        print(f"| {name} | {size_of[name]:,.0f} | {error[name]:.2f} | {ms:.2f} | {base / ms:.2f}x |")


if __name__ == "__main__":
    run_bench(main)
