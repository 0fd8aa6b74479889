"""Training throughput of the P3D streams: clips/s trained and clips/s loaded.

    .venv/bin/python bench/streams_train.py                     # p3d199 16x160x160 (CPU, and GPU if any)
    .venv/bin/python bench/streams_train.py --store work/flow   # + the SynthActions settings: loading vs training

1. P3D-199 at 16x160x160: training steps (forward, backward, SGD) on random clips, at the given batch;
   on CUDA also with bf16 AMP + channels_last_3d, and torch.compile if --compile. The baseline of the
   ratios is the first configuration measured on each device.
2. With --store: the clip recipe of configs/synth.toml (p3d_tiny, 16x56x56 crops of 64x64 frames,
   batch 16) on the store's videos, labelled by their class folder: clips/s a DataLoader delivers
   (0 and 1 workers) against clips/s the training step consumes (1 and 2 threads).
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch
from bench_cli import at_least, run  # bench/, the script's own folder, is on sys.path

from flow.store import open_store
from streams.builder import to_channels_last
from streams.clips import ClipDataset, EpochSampler
from streams.config import TrainConfig
from streams.p3d import build_model
from streams.schedule import param_groups
from streams.train import train_step


def train_rate(arch: str, batch: int, shape: tuple[int, int, int], device: torch.device, steps: int, *,
               amp: torch.dtype | None = None, channels_last: bool = False, compile: bool = False,
               classes: int = 400) -> tuple[float, float]:
    """(clips/s over `steps` timed steps after 2 warm-up steps, seconds per step)."""
    torch.manual_seed(0)
    model = build_model(arch, classes, 3, dropout=0.5, partial_bn=True).to(device)
    if channels_last:
        to_channels_last(model)
    cfg = TrainConfig()
    groups = param_groups(model, "rgb", lr=cfg.lr, weight_decay=cfg.weight_decay)
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    net = torch.compile(model) if compile else model
    net.train()
    clips = torch.randint(0, 256, (batch, 3, *shape), dtype=torch.uint8)
    labels = torch.randint(0, classes, (batch,))
    if device.type == "cuda":
        clips, labels = clips.pin_memory(), labels.pin_memory()
    for _ in range(2):
        loss, _ = train_step(net, optimizer, scaler, clips, labels, "rgb", device=device, amp_dtype=amp,
                             channels_last=channels_last)
    _sync(device, loss)
    start = time.perf_counter()
    for _ in range(steps):
        loss, _ = train_step(net, optimizer, scaler, clips, labels, "rgb", device=device, amp_dtype=amp,
                             channels_last=channels_last)
    _sync(device, loss)
    seconds = (time.perf_counter() - start) / steps
    return batch / seconds, seconds


def _sync(device: torch.device, loss: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    float(loss)


def load_rate(store: Path, cfg: TrainConfig, modality: str, workers: int, batches: int) -> float:
    """Clips/s out of a training DataLoader over the store's videos (labelled by class folder)."""
    ids = open_store(store).video_ids()
    classes = sorted({v.split("/")[0] for v in ids})
    items = [(v, classes.index(v.split("/")[0])) for v in ids]
    ds = ClipDataset(store, items, modality, cfg.clip_len, train=True, resize=cfg.resize, crop=cfg.crop)
    sampler = EpochSampler(len(ds))
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(0))
    done, start, epoch = 0, 0.0, 0
    while True:
        sampler.set_epoch(epoch)
        for _ in loader:
            if done == 0:
                start = time.perf_counter()  # after the first batch: worker start-up is not loading
            done += 1
            if done == batches + 1:
                return batches * cfg.batch_size / (time.perf_counter() - start)
        epoch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="P3D-199 CPU batch")
    parser.add_argument("--gpu-batch", type=int, default=32, help="P3D-199 CUDA batch")
    parser.add_argument("--steps", type=at_least(1), default=2, help="timed P3D-199 CPU steps")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--store", type=Path, help="a flow store (e.g. work/flow of configs/synth.toml)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    cpu = torch.device("cpu")
    print(f"\n## P3D-199, 16x160x160 clips, training step, batch {args.batch}, CPU fp32")
    rate, step = train_rate("p3d199", args.batch, (16, 160, 160), cpu, args.steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"| CPU fp32 eager | {args.batch} | {step:.1f} s/step | {rate:.3f} clips/s | 1.00x "
          f"| peak RSS {peak:.1f} GiB |")
    if args.compile:
        start = time.perf_counter()
        c_rate, c_step = train_rate("p3d199", args.batch, (16, 160, 160), cpu, args.steps, compile=True)
        print(f"| CPU fp32 compiled | {args.batch} | {c_step:.1f} s/step | {c_rate:.3f} clips/s | "
              f"{c_rate / rate:.2f}x | {time.perf_counter() - start:.0f} s incl. compiling |")

    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        print(f"\n## P3D-199, 16x160x160, batch {args.gpu_batch}, {torch.cuda.get_device_name(gpu)}")
        base, _ = train_rate("p3d199", args.gpu_batch, (16, 160, 160), gpu, 10)
        print(f"| fp32 (TF32) | {args.gpu_batch} | {base:.1f} clips/s | 1.00x |")
        runs = [("bf16 AMP", dict(amp=torch.bfloat16)),
                ("bf16 AMP + channels_last_3d", dict(amp=torch.bfloat16, channels_last=True))]
        if args.compile:
            runs.append(("bf16 AMP + channels_last_3d + compile",
                         dict(amp=torch.bfloat16, channels_last=True, compile=True)))
        for name, kwargs in runs:
            rate_gpu, _ = train_rate("p3d199", args.gpu_batch, (16, 160, 160), gpu, 10, **kwargs)
            print(f"| {name} | {args.gpu_batch} | {rate_gpu:.1f} clips/s | {rate_gpu / base:.2f}x |")
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(gpu) / 2**30:.1f} GiB")
    else:
        print("\nGPU: not measured (no CUDA device)")

    if args.store:
        cfg = TrainConfig(clip_len=16, resize=[64, 64], crop=56, batch_size=16)
        print(f"\n## SynthActions settings: p3d_tiny, {cfg.clip_len}x{cfg.crop}x{cfg.crop}, batch {cfg.batch_size}")
        threads = torch.get_num_threads()
        trained = {}
        for n in sorted({1, threads}):
            torch.set_num_threads(n)
            trained[n], _ = train_rate("p3d_tiny", cfg.batch_size, (cfg.clip_len, cfg.crop, cfg.crop), cpu, 10,
                                       classes=12)
        torch.set_num_threads(threads)
        base = trained[threads]
        for n, rate_n in trained.items():
            print(f"| trained, {n} thread(s) | {rate_n:.0f} clips/s | {rate_n / base:.2f}x |")
        for modality in ("rgb", "flow"):
            for workers in (0, 1):
                loaded = load_rate(args.store, cfg, modality, workers, 20)
                print(f"| loaded ({modality}), {workers} worker(s) | {loaded:.0f} clips/s | {loaded / base:.2f}x |")


if __name__ == "__main__":
    run(main)
