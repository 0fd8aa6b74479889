"""One prepared GPU run: prove every CUDA path of the project and measure it, in at most 8 minutes.

    PYTHONPATH=. python3 bench/gpu.py --out DIR        # a bare GPU machine, from the repository root
    python bench/gpu.py --out DIR                      # your own GPU, with the project installed
    python bench/gpu.py --out DIR --smoke              # every section at tiny sizes on the CPU (a test)
    python bench/gpu.py --out DIR --sections training e2e   # some sections; they share the whole time

Five sections, each in a process of its own with its own time budget: a section that raises is
recorded with its traceback, one that overruns is stopped and keeps the figures it had recorded,
and the run goes on with the next.

1. correctness: `pytest -m cuda tests/cuda` (P3D on CUDA = on the CPU, bf16 AMP, channels_last_3d,
   TV-L1 on CUDA = on the CPU and OpenCV, checkpoints across devices, one-process NCCL DDP).
2. flow: `flow.tvl1_torch` at 340x256 on SynthActions frames (exact flow: EPE), batches of 1 to 256
   pairs, eager and compiled: pairs/s, memory per pair, against OpenCV's CPU TV-L1 on every core.
3. training: P3D-199 on 16x160x160 clips, 400 classes (`streams.train.train_step`): fp32 (cuDNN's
   default TF32 convolutions), bf16 AMP, + channels_last_3d, + torch.compile: clips/s, peak memory,
   the largest batch that fits, MFU against the measured bf16 matmul peak; inference clips/s.
4. loading: a packed store made here (flow from the TV-L1 on the device), read by the training
   DataLoader (`streams.clips`, augmentation on) with 1 to 15 workers, against section 3's rate.
5. e2e: `make all`'s stages (`python -m pipeline ...`) on SynthActions, flow and training on the GPU.

Writes DIR/gpu.json (every figure), DIR/gpu.md (the table, pass/fail against issue 14's targets)
and DIR/gpu.log (what the sections printed). Scratch data goes to --work, never to DIR.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import joblib
import numpy as np
import torch
from streams_train import train_rate  # bench/streams_train.py: the training-step timer
from torch.utils.data import DataLoader

from flow.config import FlowConfig
from flow.encoding import encode
from flow.evaluate import evaluate_store, pooled
from flow.store import create_store, write_video
from flow.tvl1 import OpenCVTVL1, to_gray
from flow.tvl1_torch import TorchTVL1
from p3dbase.atomic import write_text
from pipeline.synth.config import SynthConfig
from pipeline.synth.render import render_clip
from streams.clips import ClipDataset, EpochSampler
from streams.p3d import build_model, count_macs
from streams.train import _worker_init, to_channels_last

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("correctness", "flow", "training", "loading", "e2e")
# Seconds per section when all run: 460 in all, so that the run ends inside 8 minutes with the
# processes' start-up. With --sections the whole time is shared in the same proportions.
BUDGET_S = {"correctness": 65, "flow": 95, "training": 105, "loading": 60, "e2e": 135}
TOTAL_S = 460.0
FLOW_TARGET = 1000.0  # pairs/s at 340x256, [flow] defaults, one H100/H200 (issue 14)
TRAIN_TARGET = 1000.0  # P3D-199 training clips/s, 16x160x160, bf16 (issue 14)


@dataclass(frozen=True)
class Sizes:
    """What each section runs: the real sizes on a GPU, tiny ones for --smoke on a CPU."""

    frame: tuple[int, int]  # (width, height) of the flow frames
    flow_clips: int  # SynthActions clips rendered for section 2 ...
    flow_frames: int  # ... of this many frames: clips * (frames - 1) pairs
    flow_batches: tuple[int, ...]
    flow_min_s: float  # each flow batch is solved again until this much time has passed
    flow_sets: dict[str, Any]  # [flow] settings apart from the defaults
    opencv_pairs_per_core: int
    arch: str
    clip: tuple[int, int, int]  # (T, H, W) of the training clips
    train_batch: int
    train_steps: int
    batch_cap: int  # the search for the largest batch stops here
    infer_batches: tuple[int, ...]
    loader_videos: int
    loader_frames: int
    loader_resize: tuple[int, int]
    loader_crop: int
    loader_clip_len: int
    loader_batch: int
    loader_workers: tuple[int, ...]
    loader_min_s: float
    e2e_sets: tuple[str, ...]
    compile: bool  # torch.compile rows (minutes of compiling on a CPU)
    jobs: int  # processes for rendering, OpenCV and writing stores; 0 = one per core
    total_s: float
    e2e_epe_videos: int = 20


FULL = Sizes(
    frame=(340, 256), flow_clips=8, flow_frames=33, flow_batches=(1, 4, 16, 64, 256), flow_min_s=1.0,
    flow_sets={}, opencv_pairs_per_core=2, arch="p3d199", clip=(16, 160, 160), train_batch=32, train_steps=10,
    batch_cap=512, infer_batches=(16, 64), loader_videos=8, loader_frames=40, loader_resize=(182, 242),
    loader_crop=160, loader_clip_len=16, loader_batch=32, loader_workers=(1, 15, 4), loader_min_s=2.0,
    # configs/synth.toml as `make all` runs it; more loader workers than its CPU setting (a GPU
    # trains p3d_tiny faster than one worker loads): how a run executes, not what it computes.
    e2e_sets=("train.workers=6", "train.progress=false"), compile=True, jobs=0, total_s=TOTAL_S,
)
SMOKE = Sizes(
    frame=(64, 48), flow_clips=2, flow_frames=3, flow_batches=(1, 4), flow_min_s=0.0,
    flow_sets={"warps": 1, "outer_iterations": 2}, opencv_pairs_per_core=1, arch="p3d_tiny", clip=(4, 32, 32),
    train_batch=2, train_steps=1, batch_cap=4, infer_batches=(2,), loader_videos=2, loader_frames=8,
    loader_resize=(40, 52), loader_crop=32, loader_clip_len=4, loader_batch=2, loader_workers=(1,),
    loader_min_s=0.0,
    # tests/pipeline/test_stages.py's tiny SynthActions, one clip per group
    e2e_sets=('synth.appearances=["red", "blue"]', 'synth.motions=["up", "rotate"]', "synth.groups=3",
              "synth.clips_per_group=1", "synth.frames=8", "synth.size=32", "flow.warps=1",
              "flow.outer_iterations=2", "train.clip_len=4", "train.resize=[32, 32]", "train.crop=28",
              "train.batch_size=4", "train.epochs=1", "train.workers=0", "train.progress=false",
              "train.checkpoint_every=0", "eval.clips=2", "eval.svm_clips=2", "eval.svm_folds=2", "eval.jobs=1"),
    # A cap, not an estimate: the smoke run takes about 35 CPU-seconds, but minutes on a loaded machine.
    compile=False, jobs=1, total_s=480.0, e2e_epe_videos=4,
)


# ---- recording ---------------------------------------------------------------------------------
@dataclass
class Recorder:
    """One section's figures, written to `path` after every row: a section stopped for overrunning
    its budget keeps what it had measured."""

    name: str
    path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def row(self, what: str, figure: str, *, ratio: str = "-", target: str = "-", passed: bool | None = None,
            status: str = "ok", **values: Any) -> None:
        """`passed`: None where no target applies; `status`: ok, skipped or failed (the code itself)."""
        self.rows.append({"what": what, "figure": figure, "ratio": ratio, "target": target, "passed": passed,
                          "status": status, **values})
        print(f"[{self.name} {time.perf_counter() - self.started:5.1f} s] {what}: {figure}"
              + (f" ({ratio})" if ratio != "-" else ""), flush=True)
        self.save()

    def skip(self, what: str, reason: str) -> None:
        self.row(what, f"skipped: {reason}", status="skipped")

    def fail(self, what: str, error: str, summary: str = "") -> None:
        """A failed row: `summary` (default: the error's last line) in the table, `error` in the notes."""
        self.errors.append(f"{what}:\n{error}")
        summary = summary or (error.strip().splitlines() or ["failed"])[-1]
        self.row(what, "failed: " + summary.splitlines()[0][:200], status="failed", passed=False)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"[{self.name} {time.perf_counter() - self.started:5.1f} s] {text}", flush=True)
        self.save()

    def save(self) -> None:
        write_text(self.path, json.dumps({"rows": self.rows, "notes": self.notes, "errors": self.errors,
                                          "extra": self.extra}, indent=1, default=str))

    def attempt(self, what: str, fn: Callable[[], Any]) -> Any:
        """fn(), or None with its traceback recorded as a failed row: one broken measurement does not
        cost the section's others."""
        try:
            return fn()
        except Exception:
            self.fail(what, traceback.format_exc())
            return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _cores() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _jobs(sz: Sizes, tasks: int) -> int:
    """Processes for `tasks` independent jobs: one per core, or sz.jobs (1 runs them in this process)."""
    return max(1, min(tasks, sz.jobs or _cores()))


def _verdict(value: float | None, target: float, device: torch.device) -> bool | None:
    """Pass/fail against a GPU target; None on the CPU, where the targets do not apply."""
    if device.type != "cuda" or value is None:
        return None
    return value >= target


def _is_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return (isinstance(err, torch.cuda.OutOfMemoryError)
            or any(s in text for s in ("out of memory", "cudnn_status", "alloc_failed")))


# ---- section 1: CUDA correctness ---------------------------------------------------------------
class _TestRows:
    """A pytest plugin: one row per test as soon as it has run, so that a test that hangs (NCCL) and
    makes the section overrun its budget costs only itself and those after it."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def pytest_runtest_logreport(self, report: Any) -> None:
        name = report.nodeid.rsplit("/", 1)[-1].replace(".py::", "::")
        if report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            self.rec.fail(name if report.when == "call" else f"{name} ({report.when})", report.longreprtext,
                          getattr(crash, "message", ""))
        elif report.skipped and report.when != "teardown":
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.rec.skip(name, reason.removeprefix("Skipped: "))
        elif report.passed and report.when == "call":
            self.rec.row(name, f"passed in {report.duration:.1f} s", passed=True, seconds=report.duration)


def section_correctness(rec: Recorder, sz: Sizes, device: torch.device, args: argparse.Namespace) -> None:
    """`pytest -m cuda tests/cuda` in this process (torch is imported already), one row per test;
    the process-group tests last, where a hang can only cost themselves."""
    import pytest

    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the image's plugins are not ours to depend on
    files = sorted((REPO / "tests" / "cuda").glob("test_*.py"), key=lambda p: ("ddp" in p.name, p.name))
    # importlib mode: nothing of tests/ goes on sys.path, so no test folder can shadow a package of the
    # same name (tests/ is a package for that reason too) whether or not the project is installed.
    code = pytest.main(["-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider", "--import-mode=importlib",
                        *map(str, files)], plugins=[_TestRows(rec)])
    if code not in (0, 1):  # 1: tests failed, recorded as they ran
        rec.fail("pytest -m cuda tests/cuda", f"pytest exited with {code} (see gpu.log)")


# ---- section 2: flow on the device -------------------------------------------------------------
def render_videos(sz: Sizes, clips: int, frames: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(BGR frames [frames, H, W, 3], exact flow [frames - 1, H, W, 2]) of `clips` SynthActions clips
    at sz.frame: rendered square at the frame's width, the middle rows kept (the flow stays exact)."""
    width, height = sz.frame
    cfg = SynthConfig(size=width, frames=frames)
    classes = len(cfg.class_names())
    rendered = joblib.Parallel(n_jobs=_jobs(sz, clips))(
        joblib.delayed(render_clip)(cfg, k % classes, 1 + k // classes, 1) for k in range(clips))
    top = (width - height) // 2
    return [(np.ascontiguousarray(c.frames[:, top:top + height]), np.ascontiguousarray(c.flow[:, top:top + height]))
            for c in rendered]


def _opencv_pair(cfg: FlowConfig, i0: np.ndarray, i1: np.ndarray) -> np.ndarray:
    cv2.setNumThreads(1)  # one process per core, as the flow stage runs OpenCV
    return OpenCVTVL1(cfg).compute(np.stack([i0, i1]))[0]


def opencv_rate(cfg: FlowConfig, i0: np.ndarray, i1: np.ndarray, cores: int) -> tuple[float, np.ndarray]:
    """OpenCV's CPU DualTVL1 in `cores` processes of one thread: pairs/s and the flows."""
    with joblib.Parallel(n_jobs=cores) as pool:
        pool(joblib.delayed(_opencv_pair)(cfg, i0[k], i1[k]) for k in range(min(cores, len(i0))))  # start-up
        start = time.perf_counter()
        flows = pool(joblib.delayed(_opencv_pair)(cfg, i0[k], i1[k]) for k in range(len(i0)))
        seconds = time.perf_counter() - start
    return len(i0) / seconds, np.stack(flows)


def solve_rate(backend: TorchTVL1, i0: torch.Tensor, i1: torch.Tensor, min_s: float
               ) -> tuple[float, np.ndarray, float | None]:
    """pairs/s solving the batch (i0, i1) and bringing the flow to the host, as the flow stage does,
    repeated until `min_s` has passed; the flow [B, H, W, 2]; on CUDA the peak memory per pair beyond
    the frames already on the device."""
    device = backend.device
    _reset_peak(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    runs, start = 0, time.perf_counter()
    while True:
        flow = backend.compute_pairs(i0, i1).permute(0, 2, 3, 1).cpu().numpy()
        runs += 1
        if time.perf_counter() - start >= min_s:
            break
    seconds = time.perf_counter() - start
    per_pair = (torch.cuda.max_memory_allocated(device) - base) / len(i0) if device.type == "cuda" else None
    return runs * len(i0) / seconds, flow, per_pair


def epe(flow: np.ndarray, truth: np.ndarray) -> float:
    return float(np.linalg.norm(flow - truth, axis=-1).mean())


def within(a: np.ndarray, b: np.ndarray, px: float = 0.1) -> float:
    return float((np.linalg.norm(a - b, axis=-1) < px).mean())


def section_flow(rec: Recorder, sz: Sizes, device: torch.device, args: argparse.Namespace) -> None:
    cfg = dataclasses.replace(FlowConfig(), **sz.flow_sets, batch_pairs=max(sz.flow_batches))
    start = time.perf_counter()
    videos = render_videos(sz, sz.flow_clips, sz.flow_frames)
    grey = [to_gray(frames) for frames, _ in videos]
    i0 = np.concatenate([g[:-1] for g in grey])
    i1 = np.concatenate([g[1:] for g in grey])
    gt = np.concatenate([flow for _, flow in videos])
    width, height = sz.frame
    rec.note(f"{len(i0)} SynthActions pairs at {width}x{height} rendered in {time.perf_counter() - start:.1f} s; "
             f"[flow] defaults{' + ' + str(sz.flow_sets) if sz.flow_sets else ''}")

    reference = None
    if not hasattr(cv2, "optflow"):
        rec.skip("OpenCV DualTVL1, CPU, every core", "no cv2.optflow")
    else:
        cores = _jobs(sz, len(i0))
        n = min(len(i0), sz.opencv_pairs_per_core * cores)
        got = rec.attempt("OpenCV DualTVL1, CPU, every core", lambda: opencv_rate(cfg, i0[:n], i1[:n], cores))
        if got is not None:
            rate, reference = got
            rec.extra["opencv_pairs_s"] = rate
            rec.row(f"OpenCV DualTVL1, CPU, {cores} process{'es' if cores > 1 else ''} of one thread",
                    f"{rate:.2f} pairs/s, EPE {epe(reference, gt[:n]):.3f} px", ratio="1.00x (baseline)",
                    pairs_s=rate, epe_px=epe(reference, gt[:n]))
    base = rec.extra.get("opencv_pairs_s")

    d0, d1 = torch.from_numpy(i0).to(device), torch.from_numpy(i1).to(device)
    flows: dict[str, np.ndarray] = {}
    best = 0.0

    def verdict(modes: str) -> None:
        rec.extra["best_pairs_s"] = best
        where = "340x256, [flow] defaults" if device.type == "cuda" else "CPU, smoke sizes"
        rec.row(f"torch TV-L1, best pairs/s ({where}, {modes})", f"{best:.1f} pairs/s",
                ratio="-" if base is None else f"{best / base:.1f}x OpenCV", target=f">= {FLOW_TARGET:.0f} pairs/s",
                passed=_verdict(best, FLOW_TARGET, device))

    for compiled in (False, True):
        mode = "compiled" if compiled else "eager"
        if compiled:  # the eager verdict first: compiling may overrun the budget
            verdict("eager")
        if compiled and not sz.compile:
            rec.skip(f"torch TV-L1 {mode}", "--smoke (torch.compile takes minutes on a CPU)")
            continue
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            backend = rec.attempt(f"torch TV-L1 {mode}: build",
                                  lambda c=compiled: TorchTVL1(cfg, str(device), compiled=c))
        if backend is None:
            continue
        if compiled and not backend.compiled:
            rec.fail(f"torch TV-L1 {mode}: build", "; ".join(str(w.message) for w in caught) or "fell back to eager")
            continue
        warm = rec.attempt(f"torch TV-L1 {mode}: warm-up", lambda b=backend: solve_rate(b, d0[:2], d1[:2], 0.0))
        if warm is None:
            continue
        rec.row(f"torch TV-L1 {mode} ({device}): build + first 2 pairs", f"{time.perf_counter() - start:.1f} s")
        for batch in sz.flow_batches:
            if batch > len(i0):
                continue
            got = rec.attempt(f"torch TV-L1 {mode}, batch {batch}",
                              lambda b=backend, n=batch: solve_rate(b, d0[:n], d1[:n], sz.flow_min_s))
            if got is None:
                break
            rate, flow, per_pair = got
            best = max(best, rate)
            flows[mode] = flow
            mem = "-" if per_pair is None else f"{per_pair / 2**20:.1f} MiB/pair"
            common = 0 if reference is None else min(len(flow), len(reference))
            agree = ("" if not common
                     else f", {100 * within(flow[:common], reference[:common]):.1f}% within 0.1 px of OpenCV")
            rec.row(f"torch TV-L1 {mode} ({device}), batch {batch}",
                    f"{rate:.1f} pairs/s, {mem}, EPE {epe(flow, gt[:batch]):.3f} px{agree}",
                    ratio="-" if base is None else f"{rate / base:.1f}x OpenCV", pairs_s=rate, batch=batch,
                    mode=mode, mib_per_pair=None if per_pair is None else per_pair / 2**20,
                    epe_px=epe(flow, gt[:batch]))
    if "eager" in flows and "compiled" in flows:
        n = min(len(flows["eager"]), len(flows["compiled"]))
        diff = float(np.abs(flows["eager"][:n] - flows["compiled"][:n]).max())
        rec.row("torch TV-L1 compiled vs eager, same pairs", f"max |difference| {diff:.2e} px", max_diff_px=diff)
        verdict("eager or compiled")


# ---- section 3: training throughput ------------------------------------------------------------
def matmul_peak(device: torch.device, n: int) -> float:
    """FLOP/s of an n x n x n bf16 matrix product (the mean of 10 after 3 warm-ups): the MFU's ceiling."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync(device)
    return 10 * 2 * n**3 / (time.perf_counter() - start)


def infer_rate(model: torch.nn.Module, batch: int, shape: tuple[int, int, int], device: torch.device,
               amp: torch.dtype | None, steps: int) -> float:
    """Clips/s through features + fc in inference mode with channels_last_3d input, as
    fusion.scoring.StreamRunner runs `make eval` and `features` (fp32 there)."""
    x = torch.randn(batch, 3, *shape, device=device).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        for k in range(2 + steps):
            if k == 2:
                _sync(device)
                start = time.perf_counter()
            model.fc(model.features(x)).float()
        _sync(device)
    return steps * batch / (time.perf_counter() - start)


def section_training(rec: Recorder, sz: Sizes, device: torch.device, args: argparse.Namespace) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as streams.train does on CUDA
    n = 8192 if device.type == "cuda" else 256
    peak = matmul_peak(device, n)
    rec.extra["bf16_peak_tflops"] = peak / 1e12
    rec.row(f"bf16 matmul {n}^3 (the MFU ceiling)", f"{peak / 1e12:.3g} TFLOP/s", tflops=peak / 1e12)
    macs = count_macs(build_model(sz.arch, 400, 3), (3, *sz.clip))
    flops_per_clip = 3 * 2 * macs  # forward + backward = 3 forwards; 2 FLOPs per multiply-accumulate
    rec.note(f"{sz.arch}: {macs / 1e9:.3g} GMACs per {'x'.join(map(str, sz.clip))} clip forward; "
             f"training = 3 x forward = {flops_per_clip / 1e9:.1f} GFLOP per clip")
    shape = sz.clip

    def train(batch: int, steps: int, **kwargs: Any) -> tuple[float, float | None, float]:
        """(clips/s, peak GiB, seconds of building and warming up: cuDNN autotuning, compiling)"""
        _free(device)
        _reset_peak(device)
        start = time.perf_counter()
        rate, step_s = train_rate(sz.arch, batch, shape, device, steps, classes=400, **kwargs)
        return rate, _peak_gib(device), time.perf_counter() - start - steps * step_s

    configs = [("fp32 (on CUDA: cuDNN's default TF32 convolutions)", {}),
               ("bf16 AMP", {"amp": torch.bfloat16}),
               ("bf16 AMP + channels_last_3d", {"amp": torch.bfloat16, "channels_last": True})]
    base = None
    best_bf16 = 0.0

    def record(what: str, batch: int, got: tuple[float, float | None, float]) -> None:
        nonlocal best_bf16
        rate, peak_gib, warm_s = got
        mfu = rate * flops_per_clip / peak
        if "bf16" in what and rate > best_bf16:
            best_bf16 = rec.extra["best_train_rate"] = rate  # for section 4, even if compiling overruns
        mem = "-" if peak_gib is None else f"{peak_gib:.1f} GiB peak"
        rec.row(f"train {sz.arch} {what}, batch {batch}",
                f"{rate:.1f} clips/s, {mem}, MFU {100 * mfu:.1f}%, warm-up {warm_s:.0f} s",
                ratio="-" if base is None else f"{rate / base:.2f}x fp32", clips_s=rate, batch=batch,
                peak_gib=peak_gib, mfu=mfu, warmup_s=warm_s)

    for what, kwargs in configs:
        got = rec.attempt(f"train {what}", lambda k=kwargs: train(sz.train_batch, sz.train_steps, **k))
        if got is not None:
            record(what, sz.train_batch, got)
            base = base or got[0]

    shown = 0.0

    def verdict(what: str) -> None:  # the pass/fail row, again whenever a later row beat it
        nonlocal shown
        if best_bf16 > shown:
            shown = best_bf16
            rec.row(f"train {sz.arch}, best bf16 clips/s ({what})", f"{best_bf16:.1f} clips/s",
                    target=f">= {TRAIN_TARGET:.0f} clips/s", passed=_verdict(best_bf16, TRAIN_TARGET, device))

    verdict(f"batch {sz.train_batch}")
    model = rec.attempt("inference: build", lambda: to_channels_last(build_model(sz.arch, 400, 3).to(device).eval()))
    if model is not None:
        for batch in sz.infer_batches:
            for name, amp in (("fp32, as make eval / features run", None), ("bf16 AMP", torch.bfloat16)):
                rate = rec.attempt(f"inference {name}, batch {batch}",
                                   lambda b=batch, a=amp: infer_rate(model, b, shape, device, a, sz.train_steps))
                if rate is not None:
                    rec.row(f"inference {sz.arch} {name}, batch {batch}", f"{rate:.1f} clips/s", clips_s=rate,
                            batch=batch)
        del model
        _free(device)

    # The largest batch that fits, bf16 + channels_last_3d, doubling until out of memory.
    batch, fits = sz.train_batch * 2, sz.train_batch if base else None
    stopped = None
    while batch <= sz.batch_cap:
        try:
            got = train(batch, 2, amp=torch.bfloat16, channels_last=True)
        except Exception as err:
            if not _is_oom(err):
                rec.fail(f"train bf16 AMP + channels_last_3d, batch {batch}", traceback.format_exc())
                break
            stopped = f"batch {batch}: {str(err).splitlines()[0][:120]}"
            break
        record("bf16 AMP + channels_last_3d", batch, got)
        fits, batch = batch, batch * 2
    if fits is not None:
        rec.row("largest batch that fits (bf16 AMP + channels_last_3d)",
                f"{fits}" + (f" (next: {stopped})" if stopped else f" (>= {fits}: the search stops at {sz.batch_cap})"),
                largest_batch=fits)
    verdict("any batch")

    if not sz.compile:
        rec.skip("train bf16 AMP + channels_last_3d + torch.compile", "--smoke (torch.compile takes minutes on a CPU)")
        return
    # Last: compiling P3D-199 takes the longest, and overrunning the budget here loses nothing else.
    what = "bf16 AMP + channels_last_3d + torch.compile"
    got = rec.attempt(f"train {what}", lambda: train(sz.train_batch, sz.train_steps, amp=torch.bfloat16,
                                                     channels_last=True, compile=True))
    if got is not None:
        record(what, sz.train_batch, got)
        verdict("with torch.compile")


# ---- section 4: loading against training -------------------------------------------------------
def loader_rate(root: Path, items: list[tuple[str, int]], modality: str, workers: int, sz: Sizes,
                pin: bool) -> float:
    """Clips/s out of a training DataLoader built as streams.train builds it (augmentation on,
    pinned memory on CUDA), after its first batch (worker start-up is not loading)."""
    dataset = ClipDataset(root, items, modality, sz.loader_clip_len, train=True, resize=sz.loader_resize,
                          crop=sz.loader_crop)
    sampler = EpochSampler(len(dataset))
    loader = DataLoader(dataset, batch_size=sz.loader_batch, sampler=sampler, num_workers=workers, pin_memory=pin,
                        drop_last=True, persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                        worker_init_fn=_worker_init, generator=torch.Generator().manual_seed(0))
    done, start, epoch = 0, 0.0, 0
    try:
        while True:
            sampler.set_epoch(epoch)
            for _ in loader:
                if done == 0:
                    start = time.perf_counter()
                done += 1
                if done > 2 and time.perf_counter() - start >= sz.loader_min_s:
                    return (done - 1) * sz.loader_batch / (time.perf_counter() - start)
            epoch += 1
    finally:
        del loader


def section_loading(rec: Recorder, sz: Sizes, device: torch.device, args: argparse.Namespace) -> None:
    cfg = dataclasses.replace(FlowConfig(), **sz.flow_sets)
    width, height = sz.frame
    start = time.perf_counter()
    videos = [frames for frames, _ in render_videos(sz, sz.loader_videos, sz.loader_frames)]
    rec.note(f"{len(videos)} SynthActions videos of {sz.loader_frames} frames at {width}x{height} rendered in "
             f"{time.perf_counter() - start:.1f} s")

    backend = TorchTVL1(cfg, str(device), compiled=False)
    start = time.perf_counter()
    flows = [encode(backend.compute(to_gray(v)), cfg.bound) for v in videos]
    pairs = sum(len(f) for f in flows)
    seconds = time.perf_counter() - start
    rec.row(f"flow for the store: torch TV-L1 eager ({device}), one video at a time", f"{pairs / seconds:.1f} pairs/s",
            pairs=pairs, seconds=seconds)

    train_rate_s = args.train_rate
    items = [(f"v{k:03d}", 0) for k in range(len(videos))] * max(1, 8 * sz.loader_batch // len(videos))
    roots = {}
    for codec in ("png", "raw"):
        roots[codec] = root = args.work / f"store_{codec}"
        create_store(root, codec=codec, bound=cfg.bound, overwrite=True)
        start = time.perf_counter()
        joblib.Parallel(n_jobs=_jobs(sz, len(videos)))(
            joblib.delayed(write_video)(root, f"v{k:03d}", rgb, flow)
            for k, (rgb, flow) in enumerate(zip(videos, flows, strict=True)))
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        frames = sum(len(v) for v in videos)
        rec.row(f"packed store, {codec}: written", f"{size / frames / 1e3:.1f} kB per frame (RGB + flow), "
                f"{time.perf_counter() - start:.1f} s", bytes_per_frame=size / frames)

    # One worker first (the rate per core), then the most (the machine), then in between.
    for workers in (w for w in sz.loader_workers if w <= _cores()):
        for codec, root in roots.items():
            for modality in ("rgb", "flow"):
                rate = rec.attempt(f"load {modality} ({codec}), {workers} workers",
                                   lambda r=root, m=modality, w=workers: loader_rate(r, items, m, w, sz,
                                                                                     device.type == "cuda"))
                if rate is None:
                    continue
                rec.row(f"load {modality} ({codec}), {workers} worker{'s' if workers > 1 else ''}, "
                        f"{sz.loader_clip_len}x{sz.loader_crop}x{sz.loader_crop}, augmented",
                        f"{rate:.1f} clips/s ({rate / workers:.1f} per worker)",
                        ratio="-" if not train_rate_s else f"{rate / train_rate_s:.2f}x training",
                        target="-" if not train_rate_s else f">= {train_rate_s:.0f} clips/s (section 3)",
                        passed=None if not train_rate_s or device.type != "cuda" else rate >= train_rate_s,
                        clips_s=rate, codec=codec, modality=modality, workers=workers)
                if workers == 1 and train_rate_s:
                    rec.note(f"{modality} from {codec}: about {math.ceil(train_rate_s / rate)} workers would load "
                             f"section 3's {train_rate_s:.0f} clips/s (one worker: {rate:.1f} clips/s)")
    if not train_rate_s:
        rec.note("no training rate from section 3 (not run, or it failed): loading is not compared")


# ---- section 5: end to end ---------------------------------------------------------------------
E2E_STAGES = {"make synth": ("synth",), "make flow": ("flow",), "make train-rgb": ("train", "--stream", "rgb"),
              "make train-flow": ("train", "--stream", "flow"), "make eval": ("eval",)}


def section_e2e(rec: Recorder, sz: Sizes, device: torch.device, args: argparse.Namespace) -> None:
    from pipeline.cli import main as pipeline_main

    work = args.work / "e2e"
    shutil.rmtree(work, ignore_errors=True)  # a finished earlier run would make every stage a no-op
    on = "cuda" if device.type == "cuda" else "cpu"
    sets = [f"work_dir={work}", f"dataset.root={work / 'synth'}", "flow.backend=torch", f"flow.device={on}",
            f"train.device={on}", f"eval.device={on}", *sz.e2e_sets]
    config = REPO / "configs" / "synth.toml"
    rec.note(f"configs/synth.toml with --set {' --set '.join(sets)}")
    total = 0.0
    for name, stage in E2E_STAGES.items():
        argv = [*stage, "--config", str(config)]
        for item in sets:
            argv += ["--set", item]
        start = time.perf_counter()
        code = rec.attempt(name, lambda a=argv: pipeline_main(a))
        seconds = time.perf_counter() - start
        total += seconds
        if code is None:
            return
        if code != 0:
            rec.fail(name, f"python -m pipeline {' '.join(stage)} exited with {code}")
            return
        rec.row(f"{name} (python -m pipeline {' '.join(stage)}), {on}", f"{seconds:.1f} s", seconds=seconds)
        if stage == ("flow",):
            stats = pooled(evaluate_store(work / "flow", work / "synth" / "flow_gt", sz.e2e_epe_videos))
            rec.row(f"stored flow against the exact flow ({sz.e2e_epe_videos} videos)",
                    f"mean EPE {stats.mean_epe:.3f} px, {100 * stats.within[0]:.1f}% within 0.1 px",
                    epe_px=stats.mean_epe)
    report = work / "eval" / "results.md"
    rec.extra["report"] = report.read_text(encoding="utf-8")
    rec.row("make all on SynthActions", f"{total:.1f} s, report written", passed=True, seconds=total)


SECTION_FUNCS: dict[str, Callable[[Recorder, Sizes, torch.device, argparse.Namespace], None]] = {
    "correctness": section_correctness, "flow": section_flow, "training": section_training,
    "loading": section_loading, "e2e": section_e2e,
}


def run_worker(args: argparse.Namespace) -> int:
    """One section in this process; its figures go to args.result (see Recorder)."""
    sz = SMOKE if args.smoke else FULL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:  # busy-waiting threads stall each other on shared cores (BENCHMARKS.md, Streams)
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
    rec = Recorder(args.worker, args.result)
    rec.save()
    try:
        SECTION_FUNCS[args.worker](rec, sz, device, args)
    except Exception:
        rec.fail("section", traceback.format_exc())
        return 1
    return 0


# ---- the run: one process per section, then the report ------------------------------------------
def _environment(smoke: bool) -> dict[str, Any]:
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "opencv": cv2.__version__, "cv2.optflow": hasattr(cv2, "optflow"), "cpu_cores": _cores(),
           "device": "cpu"}
    if torch.cuda.is_available() and not smoke:  # the smoke run hides the GPU from its sections
        props = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   sms=props.multi_processor_count)
    return env


def run_section(name: str, budget: float, args: argparse.Namespace, train_rate_s: float | None,
                log: Any) -> dict[str, Any]:
    result = args.work / f"section_{name}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(args.out), "--work", str(args.work),
           "--worker", name, "--result", str(result)]
    if args.smoke:
        cmd.append("--smoke")
    if train_rate_s:
        cmd += ["--train-rate", f"{train_rate_s:.3f}"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TQDM_MININTERVAL", "10")  # progress bars, but not a log line every 0.1 s
    if args.smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the smoke run is the CPU run, on any machine
        env["OMP_NUM_THREADS"] = "1"
    log.write(f"\n===== {name} (budget {budget:.0f} s) =====\n")
    log.flush()
    start = time.perf_counter()
    # A session of its own: on overrunning, the section's own children (DataLoader workers,
    # compiler processes, pytest) are stopped with it.
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    status = "ok"
    try:
        code = proc.wait(timeout=max(budget, 1.0))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code, status = None, "timeout"
    seconds = time.perf_counter() - start
    try:
        data = json.loads(result.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {"rows": [], "notes": [], "errors": [], "extra": {}}
    if status == "ok" and (code != 0 or any(r["status"] == "failed" for r in data["rows"])):
        status = "failed"
    if code not in (0, None) and not data["errors"]:
        data["errors"].append(f"the section's process exited with {code}; see gpu.log")
    if status == "timeout":
        data["notes"].append(f"stopped after its budget of {budget:.0f} s; the figures above were taken before")
    return {"status": status, "seconds": round(seconds, 1), "budget_s": round(budget, 1), **data}


def _cell(text: Any) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"# GPU run: {env['device']}", "",
             f"`{report['command']}` on {report['started']}: torch {env['torch']} (CUDA {env['cuda']}), "
             f"Python {env['python']}, OpenCV {env['opencv']} (cv2.optflow: {'yes' if env['cv2.optflow'] else 'no'}), "
             f"{env['cpu_cores']} CPU cores; {report['seconds']:.0f} s in all.", "",
             "| section | what ran | figure | ratio | target | result |", "|---|---|---|---|---|---|"]
    verdict = {True: "**pass**", False: "**FAIL**", None: "-"}
    for name, sec in report["sections"].items():
        lines.append(f"| **{name}** | {sec['status']} in {sec['seconds']:.0f} s (budget {sec['budget_s']:.0f} s) "
                     f"| | | | {'-' if sec['status'] == 'ok' else '**' + sec['status'] + '**'} |")
        for row in sec["rows"]:
            result = "skipped" if row["status"] == "skipped" else verdict[row["passed"]]
            lines.append(f"| {name} | {_cell(row['what'])} | {_cell(row['figure'])} | {_cell(row['ratio'])} | "
                         f"{_cell(row['target'])} | {result} |")
    for name, sec in report["sections"].items():
        if sec["notes"] or sec["errors"]:
            lines += ["", f"## {name}", ""]
            lines += [f"- {n}" for n in sec["notes"]]
            for err in sec["errors"]:
                lines += ["", "```", err.strip()[-4000:], "```"]
    e2e = report["sections"].get("e2e", {}).get("extra", {}).get("report")
    if e2e:
        lines += ["", "## End to end: work/eval/results.md of this run", "", e2e.strip()]
    return "\n".join(lines) + "\n"


def run_all(args: argparse.Namespace) -> int:
    sz = SMOKE if args.smoke else FULL
    chosen = [s for s in SECTIONS if s in args.sections]
    total = args.total or sz.total_s
    weights = sum(BUDGET_S[s] for s in chosen)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "command": " ".join(["python", "bench/gpu.py", *sys.argv[1:]]),
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "smoke": args.smoke, "environment": _environment(args.smoke), "targets": {
            "flow_pairs_s": FLOW_TARGET, "train_clips_s": TRAIN_TARGET}, "sections": {}, "seconds": 0.0}
    start = time.perf_counter()
    train_rate_s = args.train_rate
    with open(args.out / "gpu.log", "w", encoding="utf-8") as log:
        for name in chosen:
            left = total - (time.perf_counter() - start)
            budget = min(total * BUDGET_S[name] / weights, left)
            if budget < 5:
                report["sections"][name] = {"status": "skipped", "seconds": 0.0, "budget_s": 0.0, "rows": [],
                                            "notes": ["no time left in the run"], "errors": [], "extra": {}}
                continue
            print(f"== {name}: budget {budget:.0f} s", flush=True)
            sec = run_section(name, budget, args, train_rate_s, log)
            report["sections"][name] = sec
            print(f"== {name}: {sec['status']} in {sec['seconds']:.0f} s", flush=True)
            if name == "training" and sec["extra"].get("best_train_rate"):
                train_rate_s = sec["extra"]["best_train_rate"]
            report["seconds"] = time.perf_counter() - start
            write_text(args.out / "gpu.json", json.dumps(report, indent=1, default=str))
            write_text(args.out / "gpu.md", markdown(report))
    report["seconds"] = time.perf_counter() - start
    write_text(args.out / "gpu.json", json.dumps(report, indent=1, default=str))
    text = markdown(report)
    write_text(args.out / "gpu.md", text)
    print(text)
    return 0 if all(s["status"] == "ok" for s in report["sections"].values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="where gpu.json, gpu.md and gpu.log go")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "p3d-gpu-bench",
                        help="scratch folder for stores and SynthActions (default: %(default)s)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (the test suite runs this)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="SECTION",
                        help=f"which sections ({', '.join(SECTIONS)}; default all)")
    parser.add_argument("--total", type=float, default=0.0,
                        help=f"seconds for the whole run (default {TOTAL_S:.0f}; {SMOKE.total_s:.0f} with --smoke)")
    parser.add_argument("--train-rate", type=float, default=None,
                        help="training clips/s that loading is compared with (default: section 3's)")
    parser.add_argument("--worker", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.out = args.out.resolve()
    if args.worker:
        return run_worker(args)
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
