"""Kinetics-700 scale without computing flow: a re-run of `flow` over 650,000 finished videos, the
dataset listing from Kinetics CSVs, and DataLoader worker memory over the same index.

    .venv/bin/python bench/scale.py [--videos 650000] [--classes 700] [--dir /tmp/p3d-scale] [--epoch 0]
        [--rounds 1]

It writes a simulated Kinetics tree (one empty `.mp4` per clip under `train/<class>/`, CSVs in the
Kinetics format), a store holding one tiny pack per clip (2 frames of 2x2 px, each pack carrying
what it was made from, as the flow stage writes it) and the store's index, then measures, each in a
fresh process so that start-up (imports, torch) counts:

1. `python -m pipeline flow` on the finished store: listing the CSVs and the tree, reading the index,
   one `stat` per source and per pack, the manifest; wall seconds and peak memory (ru_maxrss).
2. The dataset listing alone (`read_dataset`), the same way.
3. Baseline, same run: what a re-run cost before the index: opening every pack's header.
4. DataLoader memory: one epoch (or `--epoch N` items) of the training ClipDataset over all clips
   with 2 workers (the trainer's `make_loader`), ids and labels in numpy arrays against the same
   dataset holding a list of (video_id, label) tuples, while the parent holds the dataset's records
   as the training stage does; the private memory (USS) of each worker after the epoch.

Targets: (1) and (2) each <= 30 s and <= 2 GB on 2 cores; (4) <= 200 MB per worker.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from bench_cli import at_least, run  # bench/, the script's own folder, is on sys.path

REPO = Path(__file__).resolve().parents[1]
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def youtube_id(k: int) -> str:
    return "".join(ALPHABET[(k >> (6 * i)) & 63] for i in range(11))


def build(top: Path, videos: int, classes: int) -> Path:
    """The tree, the CSVs, the config, the store with its packs and index; returns the config path."""
    sys.path.insert(0, str(REPO))
    import numpy as np

    from flow.config import FlowConfig
    from flow.index import IndexEntry, Origin, entry_stat
    from flow.stage import run_flow
    from flow.store import open_store

    root, work = top / "kinetics", top / "work"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    config = top / "scale.toml"
    config.write_text(textwrap.dedent(f"""\
        work_dir = "{work}"
        [dataset]
        format = "kinetics"
        root = "{root}"
        annotations = "{root / 'annotations'}"
        [flow]
        jobs = 1
        """))
    cfg = FlowConfig(jobs=1)
    run_flow([], work / "flow", cfg)  # store.json exactly as the flow stage writes it
    store = open_store(work / "flow")
    with store.writer("template") as writer:  # a tiny pack in the store's codecs; its meta is redone per clip
        writer.add_rgb(np.zeros((2, 2, 2, 3), np.uint8))
        writer.add_flow(np.full((1, 2, 2, 2), 128, np.uint8))
    data = store.path("template").read_bytes()
    store.path("template").unlink()
    meta_len = struct.unpack("<Q", data[-16:-8])[0]
    body, meta = data[: -16 - meta_len], json.loads(data[-16 - meta_len: -16])
    digest = store.settings_digest
    header = "label,youtube_id,time_start,time_end,split"
    lines: dict[str, list[str]] = {"train": [header], "validate": [header]}
    start = time.perf_counter()
    made: set[tuple[str, str]] = set()
    with store.index.writer() as index:
        for k in range(videos):
            label = f"class {k % classes:03d}"
            name = f"{youtube_id(k)}_{k % 300:06d}_{k % 300 + 10:06d}"
            subset = "validate" if k % 20 == 0 else "train"
            split = "val" if subset == "validate" else "train"
            lines[subset].append(f"{label},{youtube_id(k)},{k % 300},{k % 300 + 10},{split}")
            source = root / subset / label / f"{name}.mp4"
            if (subset, label) not in made:  # a class's folder in each subset it turns up in
                source.parent.mkdir(parents=True, exist_ok=True)
                (work / "flow" / subset / label).mkdir(parents=True, exist_ok=True)
                made.add((subset, label))
            source.touch()
            st = source.stat()
            video_id = f"{subset}/{label}/{name}"
            origin = Origin(digest, st.st_size, st.st_mtime_ns)
            made_from = {**origin.as_dict(), "declared_frames": 2, "video_id": video_id}  # as the flow stage writes
            pack_meta = json.dumps({**meta, "origin": made_from}, sort_keys=True).encode()
            pack = store.path(video_id)
            pack.write_bytes(body + pack_meta + struct.pack("<Q8s", len(pack_meta), data[-8:]))
            index.add(IndexEntry(video_id, "done", digest, st.st_size, st.st_mtime_ns, *entry_stat(pack), 2, 1, 2,
                                 "1.000", source=str(source)))
            if k % 50_000 == 0:
                print(f"build: {k:,} of {videos:,} clips ({time.perf_counter() - start:.0f} s)", flush=True)
    for subset, rows in lines.items():
        (root / "annotations" / f"{subset}.csv").write_text("\n".join(rows) + "\n")
    (work / "flow" / ".built").write_text(str(videos))
    return config


def measure(code: list[str], label: str) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system: what a loaded machine disturbs least) and peak
    resident MB of one fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(code, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall, cpu = time.perf_counter() - start, usage.ru_utime + usage.ru_stime
    lines = [line for line in out.splitlines() if line.strip()]
    print(f"{label}: {wall:.1f} s wall, {cpu:.1f} s CPU, peak {usage.ru_maxrss / 1024:.0f} MB, exit "
          f"{os.waitstatus_to_exitcode(status)}: {lines[-3:] if lines else ''}", flush=True)
    return wall, cpu, usage.ru_maxrss / 1024


LISTING = """
import sys, time
from pipeline.config import load_config
from pipeline.datasets import read_dataset
d = read_dataset(load_config(sys.argv[1]).dataset)
print(len(d.videos), "videos,", len(d.classes), "classes")
"""

OPEN_EVERY_PACK = """
import sys
from flow.store import open_store
store = open_store(sys.argv[1])
n = 0
for video_id in store.video_ids():
    with store.open(video_id) as v:
        n += v.num_frames
print(n, "frames in the packs' headers")
"""

LOADER = """
import sys, time
import numpy as np
from flow.index import StoreIndex
from streams.clips import ClipDataset
from streams.loaders import make_loader

root, variant, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
entries = StoreIndex(root).read().entries
# What the training stage's parent holds meanwhile: the dataset's records (id, path, label).
records = [(v, e.source, int(v.split("/")[1][6:])) for v, e in sorted(entries.items())]
items = [(v, label) for v, _, label in records]
del entries

class ListClipDataset(ClipDataset):
    # the list of (video_id, label) tuples a dataset held before: every worker touches it
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.items = [(v, int(l)) for v, l in zip(args[1], self.labels.tolist())]
    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        self.items[index]
        return super().__getitem__(key)

cls = ClipDataset if variant == "numpy" else ListClipDataset
ds = cls(root, items, "rgb", 2, train=True, resize=(8, 8), crop=8, flip=False)
del items
n = len(ds) if limit <= 0 else min(limit, len(ds))
order = np.random.default_rng(0).permutation(len(ds))[:n]
loader = make_loader(ds, batch=512, workers=2, seed=0, pin_memory=False, sampler=order.tolist())
start = time.perf_counter()
for batch in loader:
    pass
seconds = time.perf_counter() - start
def uss(pid):
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/smaps_rollup").read().splitlines()[1:])
    return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty")) / 1024
workers = [w.pid for w in loader._iterator._workers]
print(variant, n, "items", f"{seconds:.1f} s", "worker USS MB", " ".join(f"{uss(p):.0f}" for p in workers))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=at_least(1), default=650_000)
    parser.add_argument("--classes", type=at_least(1), default=700)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/p3d-scale"))
    parser.add_argument("--epoch", type=int, default=0, help="items of the DataLoader epoch (0: every clip)")
    parser.add_argument("--skip-loader", action="store_true")
    parser.add_argument("--build-only", action="store_true", help="write the simulated store and stop")
    parser.add_argument("--rounds", type=at_least(1), default=1,
                        help="rounds of (1)-(3), interleaved; the table gives each measurement's median (the "
                             "re-run's time moves with what the previous baseline left in the kernel's caches)")
    args = parser.parse_args()
    top = args.dir / f"{args.videos}"
    config = top / "scale.toml"
    built = top / "work" / "flow" / ".built"
    if not built.is_file() or built.read_text() != str(args.videos):
        start = time.perf_counter()
        config = build(top, args.videos, args.classes)
        print(f"build: {time.perf_counter() - start:.0f} s", flush=True)
    store = top / "work" / "flow"
    if args.build_only:
        return
    py = sys.executable
    print(f"load average: {os.getloadavg()}", flush=True)
    rounds: list[tuple[tuple[float, float, float], ...]] = []
    for k in range(args.rounds):
        print(f"round {k + 1} of {args.rounds}", flush=True)
        rounds.append((measure([py, "-m", "pipeline", "flow", "--config", str(config)], "flow re-run (index)"),
                       measure([py, "-c", LISTING, str(config)], "dataset listing"),
                       measure([py, "-c", OPEN_EVERY_PACK, str(store)], "baseline: open every pack")))
    rerun, listing, base = (tuple(statistics.median(r[m][i] for r in rounds) for i in range(3)) for m in range(3))
    walls = [", ".join(f"{r[m][0]:.1f}" for r in rounds) for m in range(3)]
    print(f"| measurement | wall s{' (median; each round)' if args.rounds > 1 else ''} | CPU s | peak MB | target |")
    print("|---|---|---|---|---|")
    target = "<= 30 s, <= 2048 MB"
    for name, (wall, cpu, peak), each in (
            (f"`flow` re-run of {args.videos:,} finished videos", rerun, walls[0]),
            ("dataset listing (Kinetics CSVs + tree)", listing, walls[1]),
            ("baseline: open every pack's header (the re-run before the index)", base, walls[2])):
        shown = f"{wall:.1f} ({each})" if args.rounds > 1 else f"{wall:.1f}"
        print(f"| {name} | {shown} | {cpu:.1f} | {peak:.0f} | {target if 'baseline' not in name else '-'} |")
    print(f"| re-run vs baseline, CPU | {rerun[1] / base[1]:.2f}x | | | |")
    if not args.skip_loader:
        for variant in ("numpy", "list"):
            measure([py, "-c", LOADER, str(store), variant, str(args.epoch)], f"DataLoader, 2 workers, {variant}")
    print(f"load average: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    run(main)
