"""Bytes moved by the batched TV-L1 and by P3D-199 training, eager and fused: the arithmetic behind
the ceilings in docs/gpu.md, counted on the CPU (a count of memory traffic needs no GPU).

    .venv/bin/python bench/gpu_bytes.py                 # TV-L1 on 2 SynthActions pairs at 340x256, P3D-199
    .venv/bin/python bench/gpu_bytes.py --no-p3d --pairs 4 --video CLIP   # a real clip instead

Eager, every aten op reads its operands from memory and writes its result back (no cache holds a
340x256 batch), so an op's traffic is the size of its tensor inputs plus its outputs; views move
nothing. A fused kernel (torch.compile) reads each input once and writes each output once: the
function's arguments plus its results, a lower bound (a stencil's neighbours come from cache).

1. TV-L1 (`flow.tvl1_torch`, [flow] defaults): bytes per pixel of one call of each kernel (the
   inner iteration, the median filter, the warp) counted at 340x256, times the pixels each kernel is
   called on in whole solves of SynthActions pairs (the epsilon rule stops each pair on its own):
   bytes per pair, and the pairs/s that HBM bandwidth allows.
2. P3D-199 training (16x160x160, one clip, fp32, partial BN as the official nets train): bytes of the
   convolutions (forward and backward) apart from everything else (BN, ReLU, add, pooling), the
   optimizer step apart (per batch), and the FLOPs, per clip.
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np
import torch
from bench_cli import at_least, run  # bench/, the script's own folder, is on sys.path
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/gpu_sections.py: the SynthActions pairs

# HBM bandwidth from NVIDIA's datasheets, TB/s.
BANDWIDTH = {"H100 PCIe": 2.0, "H100 SXM": 3.35, "H200": 4.8}


class Traffic(TorchDispatchMode):
    """Bytes each eager aten op reads (tensor operands) and writes (results), by op name."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        out = func(*args, **(kwargs or {}))
        if not getattr(func, "is_view", False):
            moved = sum(t.numel() * t.element_size() for t in tree_leaves((args, kwargs, out))
                        if isinstance(t, torch.Tensor))
            self.bytes[func.__name__.split(".")[0]] += moved
        return out

    @property
    def total(self) -> int:
        return sum(self.bytes.values())


def fused_bytes(args: tuple, out: object) -> int:
    """What a fused kernel must move: each distinct tensor argument read once, each result written once."""
    seen, total = set(), 0
    for t in tree_leaves((args, out)):
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def video_pairs(path: Path, pairs: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The first `pairs` consecutive pairs of a video, grey at `size` (width, height), as the flow stage
    decodes and resizes them."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < pairs + 1:
        ok, frame = capture.read()
        if not ok:
            raise SystemExit(f"{path}: {len(frames)} frames, {pairs + 1} needed")
        frames.append(cv2.cvtColor(cv2.resize(frame, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY))
    grey = np.stack(frames)
    return grey[:-1], grey[1:]


def tvl1_bytes(pairs: int, video: Path | None) -> None:
    from gpu_sections import FULL, flow_pairs

    from flow.config import FlowConfig
    from flow.tvl1_torch import _Solver, masked_median, primal_dual_step, tvl1_flow, warp_terms

    cfg = FlowConfig()
    p = _Solver.from_config(cfg)
    h, w = FULL.frame[1], FULL.frame[0]
    px = h * w
    g = torch.Generator().manual_seed(0)
    u, pxd, pyd, gw = (torch.randn(1, 2, h, w, generator=g) for _ in range(4))
    grad, rho_c, i0 = (torch.rand(1, h, w, generator=g) * 100 for _ in range(3))
    to_warp = torch.rand(1, 3, h, w, generator=g) * 255
    active = torch.ones(1, dtype=torch.bool)
    calls = {
        "iteration (eager: unmasked)": (primal_dual_step, (u, pxd, pyd, gw, grad, rho_c, None, p.l_t, p.theta, p.taut)),
        "iteration (compiled: masked)": (primal_dual_step,
                                         (u, pxd, pyd, gw, grad, rho_c, active, p.l_t, p.theta, p.taut)),
        "median 5x5": (masked_median, (u, cfg.median_filtering, None)),
        "warp + calcGradRho": (warp_terms, (to_warp, u, i0, p.gamma)),
    }
    per_px = {}
    for name, (fn, args) in calls.items():
        with torch.inference_mode(), Traffic() as traffic:
            out = fn(*args)
        per_px[name] = (traffic.total / px, fused_bytes(args, out) / px)

    # Pixels each kernel runs on in whole solves (a converged pair leaves the batch at once).
    counted = collections.Counter()

    def count(name: str, fn):  # noqa: ANN001, ANN202
        def spy(*args):  # noqa: ANN002, ANN202
            counted[name] += args[0].shape[0] * args[0].shape[-1] * args[0].shape[-2]
            return fn(*args)
        return spy

    class Quiet:  # the SynthActions note of flow_pairs goes to the terminal
        @staticmethod
        def note(text: str) -> None:
            print(text)

    if video is None:
        sz = FULL.__class__(**{**FULL.__dict__, "flow_clips": 1, "flow_frames": pairs + 1, "jobs": 1})
        a, b, _ = flow_pairs(Quiet, sz)
    else:
        a, b = video_pairs(video, pairs, FULL.frame)
    with torch.inference_mode():
        tvl1_flow(torch.from_numpy(a), torch.from_numpy(b), cfg, step=count("iteration", primal_dual_step),
                  median=count("median", masked_median), warp=count("warp", warp_terms))
    per_pair = {k: v / pairs for k, v in counted.items()}
    print(f"\n## TV-L1 at {w}x{h}, [flow] defaults, {pairs} pairs of {video.name if video else 'SynthActions'}\n")
    print(f"pixel-iterations per pair: {per_pair['iteration'] / 1e6:.1f} M ({per_pair['iteration'] / px:.0f} "
          f"finest-scale iterations' worth); median calls x pixels {per_pair['median'] / 1e6:.2f} M; "
          f"warps x pixels {per_pair['warp'] / 1e6:.2f} M\n")
    print("| kernel | eager bytes/px (aten ops) | fused bytes/px (in + out) |\n|---|---|---|")
    for name, (eager, fused) in per_px.items():
        print(f"| {name} | {eager:.0f} | {fused:.0f} |")
    rows = {"eager": (per_px["iteration (eager: unmasked)"][0], per_px["median 5x5"][0],
                      per_px["warp + calcGradRho"][0]),
            "compiled": (per_px["iteration (compiled: masked)"][1], per_px["median 5x5"][1],
                         per_px["warp + calcGradRho"][1]),
            "compiled iteration, eager warp": (per_px["iteration (compiled: masked)"][1], per_px["median 5x5"][1],
                                               per_px["warp + calcGradRho"][0])}
    print("\n| path | MB per pair: iteration / median / warp | pairs/s at " +
          " / ".join(f"{k} {v} TB/s" for k, v in BANDWIDTH.items()) + " |\n|---|---|---|")
    for name, (it, med, warp) in rows.items():
        parts = (it * per_pair["iteration"], med * per_pair["median"], warp * per_pair["warp"])
        total = sum(parts)
        print(f"| {name} | {total / 1e6:.0f}: {' / '.join(f'{x / 1e6:.0f}' for x in parts)} | "
              + " / ".join(f"{bw * 1e12 / total:.0f}" for bw in BANDWIDTH.values()) + " |")


def p3d_bytes() -> None:
    from streams.config import TrainConfig
    from streams.p3d import build_model, count_macs
    from streams.schedule import param_groups

    shape = (16, 160, 160)
    model = build_model("p3d199", 400, 3, dropout=0.5, partial_bn=True)
    model.train()
    cfg = TrainConfig()
    groups = param_groups(model, "rgb", lr=cfg.lr, weight_decay=cfg.weight_decay)
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    x = torch.randn(1, 3, *shape)
    labels = torch.zeros(1, dtype=torch.long)
    with Traffic() as traffic:  # forward and backward: per clip
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    with Traffic() as step:  # SGD with momentum and weight decay: per batch, whatever its size
        optimizer.step()
    conv = sum(v for k, v in traffic.bytes.items() if k.startswith(("convolution", "mkldnn_convolution")))
    other = traffic.total - conv
    top = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in traffic.bytes.most_common(8))
    flops = 3 * 2 * count_macs(build_model("p3d199", 400, 3), (3, *shape))
    batch = 32
    print("\n## P3D-199 training step, 16x160x160, fp32, partial BN\n")
    print(f"FLOPs per clip {flops / 1e9:.1f} G. Forward + backward of one clip: {traffic.total / 1e9:.2f} GB, of "
          f"which convolutions {conv / 1e9:.2f} GB and everything else {other / 1e9:.2f} GB (GB by op: {top}); "
          f"the optimizer step {step.total / 1e9:.2f} GB per batch, {step.total / batch / 1e9:.3f} GB per clip "
          f"at batch {batch}")
    other += step.total / batch
    for name, bw in BANDWIDTH.items():
        print(f"- {name} ({bw} TB/s): the non-convolution traffic alone at batch {batch} allows fp32 "
              f"{bw * 1e12 / other:.0f} clips/s, bf16 (activations at half the bytes) about "
              f"{2 * bw * 1e12 / other:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=at_least(1), default=2,
                        help="SynthActions pairs solved to count the iterations")
    parser.add_argument("--video", type=Path, help="count on the first pairs of this video instead of SynthActions")
    parser.add_argument("--no-p3d", action="store_true", help="TV-L1 only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}; bytes are counted, not timed")
    tvl1_bytes(args.pairs, args.video)
    if not args.no_p3d:
        p3d_bytes()


if __name__ == "__main__":
    run(main)
