"""The training DataLoader's rate per worker core: read, decode, random window, resize, random crop,
flip, collate, pinned memory; normalisation timed beside it.

    .venv/bin/python bench/loader.py [--data ../shared/data] [--frames 40] [--clips 3] [--cache F.npz]

A packed store of real 340x256 clips and their TV-L1 flow (the frames of bench/flow_store.py; its
`--cache` .npz is shared), in the default codecs (jpeg, q95) and in png (the default before), read by
`streams.loaders.make_loader` exactly as `train_stream` builds it: ClipDataset(train=True) with the
paper's recipe (random 16-frame window, resize to 182x242, random 160x160 crop, random flip), batch
16, prefetch 4, pinned memory where CUDA is (not here). 1 and 2 workers, RGB and flow, the jpeg store
decoded accurately, with `train.fast_decode`, and with `train.decode = "hybrid"` (workers entropy-decode
into DCT coefficients and collate them; the rest of that decode is the GPU's, not run here). The rate per
worker core is clips per CPU-second the workers spent (user + system from /proc, after two batches
per worker), so that other load on the shared cores does not move it; the wall-clock rate is in
brackets. Normalisation (float, minus the mean) is the trainer's first step on its device
(streams.transforms.normalize); its CPU cost per clip is measured here in the main process as an
upper bound of what it adds when the device is a CPU. Then where one clip's CPU goes, part by part
(`clip_costs`). `--paired`: only the training item as it was made before the crop-only resize
(`whole_frame_item`) against ClipDataset now, alternating item by item in one process.

`device_decode_rate` (called by bench/gpu_sections.py's loading section) measures the training
options that finish clips on the device: `train.decode = "cuda"` (a clip's JPEGs decoded by nvJPEG,
torchvision.io.decode_jpeg on CUDA) and `"hybrid"` (entropy-decoded on the CPU, the rest on the
device), each then resized, cropped and flipped there (streams.gpu_decode).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_cli import at_least, run  # bench/, the script's own folder, is on sys.path
from torch.utils.data import Dataset

from flow.config import FlowConfig
from flow.store import create_store
from streams import transforms

CLIP_LEN, RESIZE, CROP, BATCH = 16, (182, 242), 160, 16
TARGETS = {"rgb": 80.0, "flow": 120.0}  # clips/s per worker core (so that 16 cores feed >= 1,000 clips/s)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (and their threads) so far."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))
    return total / os.sysconf("SC_CLK_TCK")


def loader_rate(root: Path, items: list[tuple[str, int]], modality: str, workers: int, seconds: float,
                fast: bool = False, decode: str = "cpu") -> tuple[float, float, float]:
    """(clips per worker CPU-second, clips per wall second, normalisation ms per clip) of the training
    DataLoader over about `seconds` of wall time after its warm-up batches; `fast`: train.fast_decode;
    `decode`: train.decode ("hybrid": batches of coefficients, whose decode a GPU would finish: not
    done here, and no normalisation timed, NaN)."""
    from flow.video import opencv_single_thread
    from streams.clips import ClipDataset, EpochSampler
    from streams.loaders import make_loader

    dataset = ClipDataset(root, items, modality, CLIP_LEN, train=True, resize=RESIZE, crop=CROP, fast_decode=fast,
                          decode=decode)
    sampler = EpochSampler(len(dataset))
    warm = 2 * workers
    with opencv_single_thread():
        loader = make_loader(dataset, batch=BATCH, workers=workers, seed=0, pin_memory=torch.cuda.is_available(),
                             sampler=sampler, drop_last=True)
        try:
            done, epoch, norm = 0, 0, 0.0
            while True:
                sampler.set_epoch(epoch)
                for clips, _ in loader:
                    done += 1
                    if done == warm:
                        pids = [w.pid for w in loader._iterator._workers]
                        cpu, wall, counted = cpu_seconds(pids), time.perf_counter(), done
                    elif done > warm:
                        start = time.process_time()
                        if decode == "cpu":
                            transforms.normalize(clips, modality)
                        else:
                            norm = float("nan")
                        norm += time.process_time() - start
                        if time.perf_counter() - wall >= seconds:
                            clips_n = (done - counted) * BATCH
                            return (clips_n / (cpu_seconds(pids) - cpu), clips_n / (time.perf_counter() - wall),
                                    norm / clips_n * 1e3)
                epoch += 1
        finally:
            del loader


def _cpu_ms(fn: Callable[[], object], seconds: float) -> float:
    """CPU ms per call of `fn` over about `seconds` of this process's CPU time (after one untimed call)."""
    fn()
    n, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        fn()
        n += 1
    return (time.process_time() - start) / n * 1e3


def clip_costs(root: Path, items: list[tuple[str, int]], modality: str, fast: bool, seconds: float
               ) -> dict[str, float]:
    """Where one training clip's CPU goes, in this process (ms per clip): the whole ClipDataset item,
    its decoding (store read into the reused buffer; flow as x and y planes), the crop's resize, flip
    and copy out to [C, T, H, W] (one pass: streams.transforms.resized_crop_chw), and the worker's
    share of the collate: torch stacks a worker's batch into fresh shared memory to hand it to the
    trainer (its page faults, not the copy, are the cost)."""
    from streams.clips import ClipDataset

    dataset = ClipDataset(root, items, modality, CLIP_LEN, train=True, resize=RESIZE, crop=CROP, fast_decode=fast)
    from streams.loaders import keep_freed_memory

    keep_freed_memory()  # as in a worker (streams.loaders.worker_init): no page faults on reallocated clips
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a worker: no spinning intra-op threads
    try:
        return _clip_costs(dataset, items, modality, fast, seconds)
    finally:
        torch.set_num_threads(threads)


def _clip_costs(dataset: Dataset, items: list[tuple[str, int]], modality: str, fast: bool, seconds: float
                ) -> dict[str, float]:
    from streams.clips import window

    rng = random.Random(0)
    key = iter(range(10**9))
    costs = {"item": _cpu_ms(lambda: dataset[(next(key) % len(items), 0)], seconds)}
    planes = modality == "flow"  # as ClipDataset reads a training clip: flow as x and y planes
    with dataset.store.open(items[0][0]) as video:
        channels = transforms.CHANNELS[modality]
        shape = (channels, CLIP_LEN, video.height, video.width) if planes else \
            (CLIP_LEN, video.height, video.width, channels)
        decoded = np.empty(shape, np.uint8)
        read = video.flow_planes if planes else video.rgb
        num = video.num_frames if modality == "rgb" else video.num_flows
        costs["decode"] = _cpu_ms(lambda: read(window(rng.randrange(num - CLIP_LEN + 1), CLIP_LEN, num), decoded,
                                              fast=fast), seconds)

    def crop_out() -> torch.Tensor:  # the random crop's resize, flip and [C, T, H, W] copy, as drawn
        top, left = rng.randrange(RESIZE[0] - CROP + 1), rng.randrange(RESIZE[1] - CROP + 1)
        return transforms.resized_crop_chw(decoded, RESIZE, top, left, CROP, modality, flip=rng.random() < 0.5,
                                           planes=planes)

    costs["resize, crop, flip, copy out"] = _cpu_ms(crop_out, seconds)
    clips = [crop_out() for _ in range(BATCH)]

    def shared_collate() -> torch.Tensor:  # what default_collate does in a worker
        storage = clips[0]._typed_storage()._new_shared(BATCH * clips[0].numel(), device=clips[0].device)
        return torch.stack(clips, 0, out=clips[0].new(storage).resize_(BATCH, *clips[0].shape))

    costs["collate (shared memory)"] = _cpu_ms(shared_collate, seconds) / BATCH
    costs["collate (plain memory)"] = _cpu_ms(lambda: torch.stack(clips), seconds) / BATCH
    return costs


def whole_frame_item(dataset: Dataset, key: tuple[int, int], buffers: dict[str, np.ndarray]) -> torch.Tensor:
    """A training item as the loader made it before the crop-only resize: the whole window decoded
    (flow interleaved), every whole frame resized, the crop copied out; the same random choices."""
    from streams.clips import window

    index, epoch = key
    with dataset.store.open(dataset.video_ids[index].decode()) as video:
        num = video.num_frames if dataset.modality == "rgb" else video.num_flows
        rng = np.random.default_rng([dataset.seed, epoch, index])
        start = int(rng.integers(0, max(num - CLIP_LEN, 0) + 1))
        shape = (CLIP_LEN, video.height, video.width, transforms.CHANNELS[dataset.modality])
        if "decoded" not in buffers:  # reused, as ClipDataset reused its window and resize buffers
            buffers["decoded"] = np.empty(shape, np.uint8)
        clip = (video.rgb if dataset.modality == "rgb" else video.flow)(window(start, CLIP_LEN, num),
                                                                        buffers["decoded"])
    size, top, left, flip = dataset._choices(rng, *clip.shape[1:3])
    if buffers.get("resized", np.empty(0)).shape != (CLIP_LEN, *size, shape[3]):
        buffers["resized"] = np.empty((CLIP_LEN, *size, shape[3]), np.uint8)
    resized = transforms.resize_clip(clip, size, buffers["resized"])
    return transforms.flipped_chw(transforms.crop(resized, top, left, CROP), dataset.modality, flip)


def paired_items(root: Path, items: list[tuple[str, int]], modality: str, clips: int = 240) -> dict[str, float]:
    """CPU ms per training item, the whole-frame path (`whole_frame_item`) and ClipDataset's, alternating
    item by item on the same keys in one process (so load moves both alike), and how far apart their
    clips are (uint8 levels)."""
    from streams.clips import ClipDataset
    from streams.loaders import keep_freed_memory

    keep_freed_memory()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a worker; and no intra-op threads spinning into the next timed item
    try:
        return _paired_items(ClipDataset(root, items, modality, CLIP_LEN, train=True, resize=RESIZE, crop=CROP),
                             clips)
    finally:
        torch.set_num_threads(threads)


def _paired_items(dataset: Dataset, clips: int) -> dict[str, float]:
    buffers: dict[str, np.ndarray] = {}
    cpu = {"whole frame": 0.0, "crop only": 0.0}
    changes = []
    for k in range(clips + 6):
        key = (k % len(dataset), k)
        start = time.process_time()
        before = whole_frame_item(dataset, key, buffers)
        middle = time.process_time()
        now = dataset[key][0]
        if k >= 6:  # the first few warm both up
            cpu["whole frame"] += middle - start
            cpu["crop only"] += time.process_time() - middle
            changes.append((now.int() - before.int()).abs())
    change = torch.stack(changes)
    return {**{name: c / clips * 1e3 for name, c in cpu.items()}, "max level": float(change.max()),
            "mean level": float(change.float().mean())}


def device_decode_rate(root: Path | str, video_ids: list[str], device: torch.device, decode: str = "cuda",
                       clips: int = 64, clip_len: int = CLIP_LEN, resize: tuple[int, int] = RESIZE,
                       crop: int = CROP) -> dict[str, float]:
    """RGB clips/s of the training option `train.decode = decode` on a jpeg store, in one process:
    batches of ClipDataset(decode=decode) items (a random window's JPEGs read on the CPU; "hybrid":
    and entropy-decoded there) collated and moved by `batch.to(device)`: the rest of the decode
    ("cuda": nvJPEG, torchvision.io.decode_jpeg, imported on the first batch only: the nvjpeg extra),
    resize, crop and flip on the device (streams.gpu_decode), then normalised. Also the CPU path on
    one core for the same clips, for the ratio."""
    from streams.clips import ClipDataset
    from streams.gpu_decode import collate

    items = [(v, 0) for v in video_ids]
    common = dict(train=True, resize=resize, crop=crop)
    gpu_set = ClipDataset(root, items, "rgb", clip_len, decode=decode, **common)
    keys = iter(range(10**9))

    def gpu_batch() -> torch.Tensor:
        batch, _ = collate([gpu_set[(k % len(items), k)] for k in (next(keys) for _ in range(BATCH))])
        return transforms.normalize(batch.to(device), "rgb")

    batches = max(clips // BATCH, 1)
    for _ in range(2):
        gpu_batch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(batches):
        gpu_batch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    gpu = batches * BATCH / (time.perf_counter() - start)
    cpu_set = ClipDataset(root, items, "rgb", clip_len, **common)
    start = time.process_time()
    for k in range(clips):
        transforms.normalize(cpu_set[(k % len(items), k)][0], "rgb")
    cpu = clips / (time.process_time() - start)
    return {"clips_s": gpu, "cpu_core_clips_s": cpu, "ratio": gpu / cpu}


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from flow_store import load_videos, video_args

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    video_args(parser, frames=40)
    parser.add_argument("--seconds", type=float, default=6.0, help="wall seconds timed per configuration")
    parser.add_argument("--codecs", nargs="+", default=["jpeg", "png"])
    parser.add_argument("--workers", nargs="+", type=at_least(0), default=[1, 2])
    parser.add_argument("--no-costs", action="store_true", help="skip the per-clip cost breakdown")
    parser.add_argument("--paired", action="store_true", help="only the training item before and now, item by "
                        "item in one process (whole-frame resize against crop-only)")
    args = parser.parse_args()

    from flow.video import opencv_single_thread

    cfg = FlowConfig()
    videos = load_videos(args, cfg)
    tmp = Path(tempfile.mkdtemp(prefix="loader_bench_"))
    rows = []
    try:
        items = []
        for codec in args.codecs:
            store = create_store(tmp / codec, codec=codec)
            for k in range(4):  # 4 ids per clip: a dozen videos to draw from
                for name, (rgb, flow) in videos.items():
                    store.write_video(f"c{k}/{name}", rgb, flow)
                    items.append((f"c{k}/{name}", 0))
        items = sorted(set(items)) * 20  # an epoch long enough never to drain inside the timed window
        # (codec, train.fast_decode): the jpeg store decoded accurately (the default) and fast; the last
        # codec (png, the default before) is the baseline of the ratios
        if args.paired:
            with opencv_single_thread():
                for modality in ("rgb", "flow"):
                    r = paired_items(tmp / args.codecs[0], sorted(set(items)), modality)
                    print(f"{modality} ({args.codecs[0]}): CPU ms per item, whole frame {r['whole frame']:.2f}, crop "
                          f"only {r['crop only']:.2f} ({r['crop only'] / r['whole frame']:.2f}x); clips apart by "
                          f"{r['max level']:.0f} level at most, {r['mean level']:.3f} on average")
            return
        # (codec, decode): jpeg decoded accurately (the default), fast, and hybrid (the workers' part)
        setups = [(c, mode) for c in args.codecs for mode in (("accurate", "fast", "hybrid") if c == "jpeg"
                                                               else ("accurate",))]
        costs = {}
        if not args.no_costs and "jpeg" in args.codecs:
            with opencv_single_thread():
                costs = {(m, fast): clip_costs(tmp / "jpeg", sorted(set(items)), m, fast, args.seconds / 6)
                         for m in ("rgb", "flow") for fast in (False, True)}
        for workers in args.workers:
            for modality in ("rgb", "flow"):
                for codec, mode in setups:
                    per_core, wall, norm = loader_rate(tmp / codec, items, modality, workers, args.seconds,
                                                       mode == "fast", "hybrid" if mode == "hybrid" else "cpu")
                    rows.append((modality, codec, mode, workers, per_core, wall, norm))
    finally:
        shutil.rmtree(tmp)
    base = {(m, w): pc for m, c, _, w, pc, _, _ in rows if c == args.codecs[-1]}
    print(f"\n{len(videos)} clips x 4 ids, {args.frames} frames at {cfg.size}; training clips {CLIP_LEN}x{CROP}x{CROP} "
          f"from {RESIZE[1]}x{RESIZE[0]}, batch {BATCH}, pinned memory {torch.cuda.is_available()}\n")
    print(f"| modality | codec | decode | workers | clips/s per worker core (wall clips/s) | vs {args.codecs[-1]} "
          "| target | normalise, CPU ms/clip |")
    print("|---|---|---|---|---|---|---|---|")
    for modality, codec, mode, workers, per_core, wall, norm in rows:
        target = TARGETS[modality]
        verdict = "met" if per_core >= target else "NOT met"
        print(f"| {modality} | {codec} | {mode} | {workers} | {per_core:.0f} ({wall:.0f}) | "
              f"{per_core / base[modality, workers]:.2f}x | >= {target:.0f}: {verdict} | {norm:.2f} |")
    if costs:
        parts = list(next(iter(costs.values())))
        print("\nWhere a clip's CPU goes on the jpeg store (one process, CPU ms per clip; the item is decode + "
              "the crop's resize and copy out + reading the pack's index; the collate is the worker's, per clip)\n")
        print(f"| modality | decode | {' | '.join(parts)} |")
        print("|---" * (len(parts) + 2) + "|")
        for (modality, fast), c in costs.items():
            print(f"| {modality} | {'fast' if fast else 'accurate'} | {' | '.join(f'{c[p]:.2f}' for p in parts)} |")


if __name__ == "__main__":
    run(main)
