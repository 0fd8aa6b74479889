"""Sports-1M at its real size: reading both partitions and resolving them against a folder of videos.

Generates (once, cached in --work) a release of the real length: 1,133,158 lines (README), split
882,802 train / 250,356 test, about 5% of lines with two or three labels, gzip-compressed as
distributed; and a flat folder of empty stand-in files for the videos still online (--present,
0.93 by default: about 7% were gone by 2016). Then, each in a fresh process (peak memory is the
process's own), measures in the same run:

  floor    decompress both files, split lines, one scandir of the folder: the unavoidable I/O
  generic  the Kinetics way of finding videos (pipeline.datasets.files.index_videos: os.walk, a
           Path per file), without even reading the partitions
  reader   pipeline.datasets.read_dataset for format sports1m: the whole Dataset

and prints seconds, peak RSS and the ratios to the floor. Target: reader <= 30 s and
<= 1 GB on 2 cores.

    flock /tmp/bench.lock .venv/bin/python bench/sports1m_index.py
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_cli import run  # bench/, the script's own folder, is on sys.path

TRAIN, TEST = 882_802, 250_356
ALPHABET = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", dtype=np.uint8)


def generate(work: Path, present: float, seed: int = 0) -> None:
    marker = work / "done.json"
    wanted = {"train": TRAIN, "test": TEST, "present": present, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return
    rng = np.random.default_rng(seed)
    total = TRAIN + TEST
    ids = ALPHABET[rng.integers(0, len(ALPHABET), size=(total, 11))].view("S11").ravel()
    ids = np.unique(ids)[:total]  # 64^11 ids: a clash is practically impossible, but make sure
    rng.shuffle(ids)
    names = [i.decode() for i in ids]
    first = rng.integers(0, 487, size=total)
    extra = rng.random(total)
    release = work / "release"
    (release / "original").mkdir(parents=True, exist_ok=True)
    (release / "labels.txt").write_text("".join(f"sport {i}\n" for i in range(487)))
    for subset, lo, hi in (("train", 0, TRAIN), ("test", TRAIN, total)):
        lines = []
        for k in range(lo, hi):
            labels = str(first[k])
            if extra[k] < 0.05:  # multi-label lines, as in the release
                labels += f",{(first[k] + 1) % 487}" + (f",{(first[k] + 2) % 487}" if extra[k] < 0.01 else "")
            lines.append(f"https://www.youtube.com/watch?v={names[k]} {labels}\n")
        with gzip.open(release / "original" / f"{subset}_partition.txt.gz", "wt", compresslevel=6) as f:
            f.write("".join(lines))
    videos = work / "videos"
    videos.mkdir(exist_ok=True)
    keep = rng.random(total) < present
    containers = (".mp4", ".webm", ".mkv")
    for k in np.flatnonzero(keep):
        open(videos / f"{names[k]}{containers[k % 3]}", "wb").close()
    marker.write_text(json.dumps(wanted))


def floor(work: Path) -> int:
    lines = 0
    for subset in ("train", "test"):
        lines += len(gzip.decompress((work / "release/original" / f"{subset}_partition.txt.gz").read_bytes())
                     .decode().splitlines())
    with os.scandir(work / "videos") as entries:
        files = sum(1 for _ in entries)
    return lines + files


def generic(work: Path) -> int:
    from pipeline.datasets.files import index_videos
    return len(index_videos(work / "videos"))


def reader(work: Path) -> int:
    from pipeline.datasets import DatasetConfig, read_dataset
    dataset = read_dataset(DatasetConfig(format="sports1m", root=str(work / "videos"),
                                         annotations=str(work / "release")))
    return len(dataset.videos) + len(dataset.missing)


def child(name: str, work: Path) -> None:
    start = time.perf_counter()
    count = {"floor": floor, "generic": generic, "reader": reader}[name](work)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"name": name, "seconds": seconds, "peak_mb": peak_mb, "count": count}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/sports1m_bench"))
    parser.add_argument("--present", type=float, default=0.93)
    parser.add_argument("--child", choices=("floor", "generic", "reader"))
    args = parser.parse_args()
    if args.child:
        child(args.child, args.work)
        return
    started = time.perf_counter()
    generate(args.work, args.present)
    print(f"release and stand-ins in {args.work} ({time.perf_counter() - started:.0f} s to prepare or check)")
    print(f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    results = {}
    for name in ("floor", "generic", "reader"):
        out = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--child", name],
                             check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
    base = results["floor"]["seconds"]
    for name, r in results.items():
        print(f"{name:8s} {r['seconds']:6.2f} s  peak {r['peak_mb']:6.0f} MB  {r['seconds'] / base:5.2f}x floor  "
              f"({r['count']} items)")
    r = results["reader"]
    verdict = "met" if r["seconds"] <= 30 and r["peak_mb"] <= 1024 else "NOT met"
    print(f"target reader <= 30 s and <= 1024 MB: {verdict}")


if __name__ == "__main__":
    run(main)
