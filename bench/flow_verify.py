"""What the pack checksums cost: a flow re-run (the store's index, no pack opened) against `verify`
(every pack read and every CRC32 checked), and training-style window reads with and without the
per-image CRC32 check.

    .venv/bin/python bench/flow_verify.py [--videos 20] [--frames 100]

Synthetic 340x256 videos (a textured square moving over a textured background, smooth flow), so
the PNG blobs compress like real ones. The re-run finds every video done in the store's index and
stats each source and pack; `verify_store` (one process) reads each pack whole and checks every
blob's CRC32 (page cache warm). Window reads are random 16-frame RGB windows from the same packs, read once with their
checksums and once from copies without them (the pre-checksum format), in interleaved rounds;
ratios are against the unchecked variant measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from bench_cli import at_least, run  # bench/, the script's own folder, is on sys.path

from flow.config import FlowConfig
from flow.encoding import encode
from flow.stage import FlowJob, run_flow, store_params
from flow.store import create_store, open_store
from flow.verify import verify_store


def square_video(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(rng.integers(0, 256, (256, 340, 3), np.uint8), (9, 9), 3)
    square = cv2.GaussianBlur(rng.integers(0, 256, (96, 96, 3), np.uint8), (5, 5), 2)
    rgb = np.repeat(background[None], n, axis=0)
    for i in range(n):
        x = (20 + 3 * i) % (340 - 96)
        rgb[i, 80:176, x:x + 96] = square
    yy, xx = np.mgrid[0:256, 0:340] / 64.0
    field = np.stack([np.sin(xx) * 3, np.cos(yy) * 2], -1)
    return rgb, np.repeat(encode(field)[None], n - 1, axis=0)


def strip_checksums(path: Path) -> None:
    """Rewrite a pack as it was before checksums existed (no CRC32 column, no `crc32_offset`)."""
    data = path.read_bytes()
    meta_len = int.from_bytes(data[-16:-8], "little")
    meta = json.loads(data[-16 - meta_len:-16])
    offset = meta.pop("crc32_offset")
    body = json.dumps(meta, sort_keys=True).encode()
    path.write_bytes(data[:offset] + body + len(body).to_bytes(8, "little") + data[-8:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=at_least(1), default=20)
    parser.add_argument("--frames", type=at_least(17), default=100)
    parser.add_argument("--rounds", type=at_least(1), default=3)
    args = parser.parse_args()
    cfg = FlowConfig(jobs=1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = create_store(root / "flow", cfg.store, codec=cfg.codec, bound=cfg.bound, params=store_params(cfg))
        plain = create_store(root / "plain", cfg.store, codec=cfg.codec, bound=cfg.bound)
        (root / "plain" / "C").mkdir()
        jobs = []
        (root / "videos").mkdir()
        for k in range(args.videos):
            video_id = f"C/v{k:03d}"
            store.write_video(video_id, *square_video(args.frames, k))
            shutil.copy(store.path(video_id), plain.path(video_id))
            strip_checksums(plain.path(video_id))
            source = root / "videos" / f"v{k:03d}.avi"
            source.touch()  # never opened: all done (the first re-run indexes the packs)
            jobs.append(FlowJob(video_id, source))
        megabytes = sum(p.stat().st_size for p in (root / "flow").rglob("*.pack")) / 1e6
        run_flow(jobs, root / "flow", cfg)  # warm the page cache
        times = {False: [], True: []}
        for _ in range(args.rounds):
            for verify in (False, True):
                start = time.perf_counter()
                if verify:
                    verify_store(root / "flow", jobs=1)
                else:
                    run_flow(jobs, root / "flow", cfg)
                times[verify].append(time.perf_counter() - start)
        rng = random.Random(0)
        windows = [(f"C/v{rng.randrange(args.videos):03d}", rng.randrange(args.frames - 16)) for _ in range(200)]
        reads = {"checked": [], "unchecked": []}
        for _ in range(args.rounds):
            for name, where in (("unchecked", plain), ("checked", open_store(root / "flow"))):
                start = time.process_time()
                for video_id, first in windows:
                    with where.open(video_id) as v:
                        v.rgb(range(first, first + 16))
                reads[name].append(time.process_time() - start)
    off, on = min(times[False]), min(times[True])
    print(f"store: {args.videos} packs of {args.frames} frames at 340x256, {megabytes:.0f} MB")
    print("| all done | seconds | MB/s | vs the re-run |")
    print("|---|---|---|---|")
    print(f"| `flow` re-run (the index) | {off:.3f} | - | 1.00x |")
    print(f"| `verify`, one process (every CRC32) | {on:.3f} | {megabytes / on:.0f} | {on / off:.1f}x |")
    checked, unchecked = min(reads["checked"]), min(reads["unchecked"])
    print(f"window reads (200 x 16 RGB frames, CPU s): unchecked {unchecked:.3f}, checked {checked:.3f} "
          f"({checked / unchecked:.3f}x)")


if __name__ == "__main__":
    run(main)
