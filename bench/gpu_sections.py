"""The sections of `bench/gpu.py`, each run in a process of its own by that script (see its doc).

    python bench/gpu_sections.py NAME --out DIR --work WORK --deadline EPOCH_S [--smoke]

A section writes its rows to DIR/sections/NAME.json as each is measured (a section stopped at its
budget, or a run stopped by SIGTERM, keeps every row taken before), skips a row that cannot finish
before `--deadline` with a note, and records a raising row as failed while the others still run.
The project's own modules are imported by the sections that use them: a module that fails to
import (a dependency the GPU image lacks) costs that section alone, as one failed row naming it.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import io
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_cli import run  # bench/, the script's own folder, is on sys.path

REPO = Path(__file__).resolve().parents[1]
FLOW_TARGET = 1000.0  # pairs/s at 340x256, [flow] defaults, one H100/H200
TRAIN_TARGET = 1000.0  # P3D-199 training clips/s, 16x160x160, bf16
# NVIDIA's datasheet peaks, dense (no 2:4 sparsity), TFLOP/s: bf16 tensor cores, TF32 tensor cores.
# What MFU is also given against, beside the matmul peak measured in the same run.
DATASHEET_TFLOPS = {"H100 SXM": (989.4, 494.7), "H100 PCIe": (756.5, 378.0), "H100 NVL": (835.5, 417.5),
                    "H200 SXM": (989.4, 494.7), "H200 NVL": (835.5, 417.5)}
LOADER_PREFETCH = 4  # batches each DataLoader worker keeps ready (streams.loaders.make_loader)
# One level of the stored uint8 flow (flow.encoding, bound 20): 40 / 255 px.
BOUND = 20.0


@dataclass(frozen=True)
class Sizes:
    """What each section runs: the real sizes on a GPU, tiny ones for --smoke on a CPU."""

    frame: tuple[int, int]  # (width, height) of the flow frames
    flow_clips: int  # SynthActions clips rendered for the flow sections ...
    flow_frames: int  # ... of this many frames: clips * (frames - 1) pairs
    flow_batches: tuple[int, ...]  # in the order measured: the [flow] default batch first
    flow_min_s: float  # each flow batch is solved again until this much time has passed
    flow_sets: dict[str, Any]  # [flow] settings apart from the defaults
    opencv_pairs_per_core: int
    arch: str
    clip: tuple[int, int, int]  # (T, H, W) of the training clips
    train_batch: int  # the chosen batch: the headline rows and every "x fp32" ratio are at this batch
    train_steps: int
    batch_cap: int  # the search for the largest batch stops here
    infer_batches: tuple[int, ...]
    matmul_n: int
    matmul_min_s: float  # the matmul peak is timed over at least this long (stable clocks)
    loader_videos: int
    loader_frames: int
    loader_resize: tuple[int, int]
    loader_crop: int
    loader_clip_len: int
    loader_batch: int
    loader_workers: tuple[int, ...]  # in the order measured: the most first
    loader_min_s: float
    e2e_sets: tuple[str, ...]
    # torch.compile's backend: Inductor on a GPU; "eager" (Dynamo traces, no code generation) in
    # --smoke, so that the compiled sections' code paths run on a CPU in seconds, not minutes.
    compile_backend: str
    jobs: int  # processes for rendering, OpenCV and writing stores; 0 = one per core
    e2e_epe_videos: int = 20


FULL = Sizes(
    frame=(340, 256), flow_clips=8, flow_frames=33, flow_batches=(64, 256, 16, 4, 1), flow_min_s=1.0,
    flow_sets={}, opencv_pairs_per_core=2, arch="p3d199", clip=(16, 160, 160), train_batch=32, train_steps=10,
    batch_cap=512, infer_batches=(64,), matmul_n=8192, matmul_min_s=0.5, loader_videos=8, loader_frames=40,
    loader_resize=(182, 242), loader_crop=160, loader_clip_len=16, loader_batch=32, loader_workers=(15, 1, 4),
    loader_min_s=5.0,
    # configs/synth.toml as `make all` runs it; more loader workers than its CPU setting (a GPU
    # trains p3d_tiny faster than one worker loads): how a run executes, not what it computes.
    e2e_sets=("train.workers=6", "train.progress=false"), compile_backend="inductor", jobs=0,
)
SMOKE = Sizes(
    frame=(64, 48), flow_clips=2, flow_frames=3, flow_batches=(4, 1), flow_min_s=0.0,
    flow_sets={"warps": 1, "outer_iterations": 2}, opencv_pairs_per_core=1, arch="p3d_tiny", clip=(4, 32, 32),
    train_batch=2, train_steps=1, batch_cap=4, infer_batches=(2,), matmul_n=128, matmul_min_s=0.02,
    loader_videos=2, loader_frames=8, loader_resize=(40, 52), loader_crop=32, loader_clip_len=4, loader_batch=2,
    loader_workers=(1,), loader_min_s=0.0,
    # tests/pipeline/test_stages.py's tiny SynthActions, one clip per group
    e2e_sets=('synth.appearances=["red", "blue"]', 'synth.motions=["up", "rotate"]', "synth.groups=3",
              "synth.clips_per_group=1", "synth.frames=8", "synth.size=32", "flow.warps=1",
              "flow.outer_iterations=2", "train.clip_len=4", "train.resize=[32, 32]", "train.crop=28",
              "train.batch_size=4", "train.epochs=1", "train.workers=0", "train.progress=false",
              "train.checkpoint_every=0", "eval.clips=2", "eval.svm_clips=2", "eval.svm_folds=2", "eval.jobs=1"),
    compile_backend="eager", jobs=1, e2e_epe_videos=4,
)


# ---- recording ---------------------------------------------------------------------------------
@dataclass
class Recorder:
    """One section's figures, written to `path` after every row and note."""

    name: str
    path: Path
    deadline: float  # time.time() by which the section must have finished
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    current: str = ""  # the row being measured (named in the note when the section is stopped)

    def row(self, what: str, figure: str, *, ratio: str = "-", target: str = "-", passed: bool | None = None,
            status: str = "ok", **values: Any) -> dict[str, Any]:
        """`passed`: None where no target applies; `status`: ok, skipped or failed (the code itself)."""
        row = {"what": what, "figure": figure, "ratio": ratio, "target": target, "passed": passed,
               "status": status, **values}
        self.rows.append(row)
        print(f"[{self.name} {time.perf_counter() - self.started:5.1f} s] {what}: {figure}"
              + (f" ({ratio})" if ratio != "-" else ""), flush=True)
        self.save()
        return row

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
        from p3dbase.atomic import write_text

        write_text(self.path, json.dumps({"rows": self.rows, "notes": self.notes, "errors": self.errors,
                                          "extra": self.extra}, indent=1, default=str))

    def left(self) -> float:
        return self.deadline - time.time()

    def fits(self, what: str, need_s: float) -> bool:
        """Whether `need_s` seconds remain; if not, a skipped row says so (the row would be cut)."""
        if self.left() >= need_s:
            return True
        self.skip(what, f"{self.left():.0f} s left in the section's budget, about {need_s:.0f} s needed")
        return False

    def attempt(self, what: str, fn: Callable[[], Any]) -> Any:
        """fn(), or None with its traceback recorded as a failed row: one broken measurement does not
        cost the section's others."""
        self.current = what
        try:
            return fn()
        except Exception:
            self.fail(what, traceback.format_exc())
            return None
        finally:
            self.current = ""


def prior(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The `extra` figures of an earlier section of this run ({} if it did not run or record them)."""
    try:
        return json.loads((args.out / "sections" / f"{section}.json").read_text(encoding="utf-8"))["extra"]
    except (OSError, ValueError, KeyError):
        return {}


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


def form_factor(name: str) -> str | None:
    """SXM, PCIe or NVL from the device name (nvidia-smi and torch give the same name)."""
    if "NVL" in name:
        return "NVL"
    if "PCIe" in name:
        return "PCIe"
    if "SXM" in name or "HBM3" in name or "H200" in name:  # "H100 80GB HBM3" is the SXM module
        return "SXM"
    return None


def datasheet_peaks(name: str) -> tuple[float, float] | None:
    """(bf16, TF32) dense TFLOP/s of the card from NVIDIA's datasheet, None for other cards."""
    chip = "H200" if "H200" in name else "H100" if "H100" in name else None
    form = form_factor(name)
    return DATASHEET_TFLOPS.get(f"{chip} {form}") if chip and form else None


def environment(device: torch.device) -> dict[str, Any]:
    """What this section ran on: versions of torch, CUDA, cuDNN, NCCL, Triton, OpenCV, the compiler
    and the device (recorded by every section; the report shows the first)."""
    import cv2

    def version(module: str) -> str | None:
        try:
            return __import__(module).__version__
        except Exception:  # absent or broken: the report says so rather than the section failing
            return None

    def nccl() -> str | None:
        try:
            v = torch.cuda.nccl.version()
            return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception:
            return None

    cc = shutil.which("cc") or shutil.which("gcc")
    compiler = None
    if cc:
        try:
            compiler = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=10).stdout
            compiler = compiler.splitlines()[0] if compiler else None
        except (OSError, subprocess.SubprocessError):
            compiler = None
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "nccl": nccl() if device.type == "cuda" else None, "triton": version("triton"),
           "opencv": cv2.__version__, "cv2.optflow": hasattr(cv2, "optflow"), "compiler": compiler,
           "cpu_cores": _cores(), "device": "cpu",
           # the packages the project imports beyond the GPU image's usual set, each lazily with a
           # fallback or in one section only: absent ones are wheels to carry (docs/gpu.md)
           "optional": {m: version(m) or ("present" if _importable(m) else None)
                        for m in ("jinja2", "simplejpeg", "pyarrow")}}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = torch.cuda.get_device_name(device)
        env.update(device=name, form_factor=form_factor(name), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   sms=props.multi_processor_count, capability=f"{props.major}.{props.minor}")
    return env


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# ---- section: CUDA correctness ------------------------------------------------------------------
class _TestRows:
    """A pytest plugin: one row per test as soon as it has run, so that a test that hangs (NCCL) and
    makes the section overrun its budget costs only itself and those after it."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self.rec.current = nodeid.rsplit("/", 1)[-1]

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


# The order the CUDA tests run in: the quick numerical ones first, the process group next (its own
# 45 s timeout bounds a hang), compiling last (slowest; what it compiles stays in the caches under
# --work for the compiled sections).
CUDA_TEST_ORDER = ("test_p3d_cuda.py", "test_tvl1_cuda.py", "test_checkpoint_cuda.py", "test_ddp_nccl.py",
                   "test_compile_cuda.py")


def section_correctness(rec: Recorder, sz: Sizes, device: torch.device, args: argparse.Namespace) -> None:
    """`pytest -m cuda tests/cuda` in this process (torch is imported already), one row per test."""
    import pytest

    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the image's plugins are not ours to depend on
    files = sorted((REPO / "tests" / "cuda").glob("test_*.py"),
                   key=lambda p: (CUDA_TEST_ORDER.index(p.name) if p.name in CUDA_TEST_ORDER else 3, p.name))
    # importlib mode: nothing of tests/ goes on sys.path, so no test folder can shadow a package of the
    # same name (tests/ is a package for that reason too) whether or not the project is installed.
    code = pytest.main(["-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider", "--import-mode=importlib",
                        *map(str, files)], plugins=[_TestRows(rec)])
    if code not in (0, 1):  # 1: tests failed, recorded as they ran
        rec.fail("pytest -m cuda tests/cuda", f"pytest exited with {code} (see gpu.log)")


# ---- sections: flow on the device, eager and compiled -------------------------------------------
def render_videos(sz: Sizes, clips: int, frames: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(BGR frames [frames, H, W, 3], exact flow [frames - 1, H, W, 2]) of `clips` SynthActions clips
    at sz.frame: rendered square at the frame's width, the middle rows kept (the flow stays exact)."""
    import joblib

    from pipeline.synth.config import SynthConfig
    from pipeline.synth.render import render_clip

    width, height = sz.frame
    cfg = SynthConfig(size=width, frames=frames)
    classes = len(cfg.class_names())
    rendered = joblib.Parallel(n_jobs=_jobs(sz, clips))(
        joblib.delayed(render_clip)(cfg, k % classes, 1 + k // classes, 1) for k in range(clips))
    top = (width - height) // 2
    return [(np.ascontiguousarray(c.frames[:, top:top + height]), np.ascontiguousarray(c.flow[:, top:top + height]))
            for c in rendered]


def flow_pairs(rec: Recorder, sz: Sizes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1 uint8 [N, H, W], exact flow [N, H, W, 2]) of the SynthActions pairs both flow
    sections solve."""
    from flow.tvl1 import to_gray

    start = time.perf_counter()
    videos = render_videos(sz, sz.flow_clips, sz.flow_frames)
    grey = [to_gray(frames) for frames, _ in videos]
    i0 = np.concatenate([g[:-1] for g in grey])
    i1 = np.concatenate([g[1:] for g in grey])
    gt = np.concatenate([flow for _, flow in videos])
    width, height = sz.frame
    rec.note(f"{len(i0)} SynthActions pairs at {width}x{height} rendered in {time.perf_counter() - start:.1f} s; "
             f"[flow] defaults{' + ' + str(sz.flow_sets) if sz.flow_sets else ''}")
    return i0, i1, gt


def _opencv_pair(cfg: Any, i0: np.ndarray, i1: np.ndarray) -> np.ndarray:
    import cv2

    from flow.tvl1 import OpenCVTVL1

    cv2.setNumThreads(1)  # one process per core, as the flow stage runs OpenCV
    return OpenCVTVL1(cfg).compute(np.stack([i0, i1]))[0]


def opencv_rate(cfg: Any, i0: np.ndarray, i1: np.ndarray, cores: int) -> tuple[float, np.ndarray]:
    """OpenCV's CPU DualTVL1 in `cores` processes of one thread: pairs/s and the flows."""
    import joblib

    with joblib.Parallel(n_jobs=cores) as pool:
        pool(joblib.delayed(_opencv_pair)(cfg, i0[k], i1[k]) for k in range(min(cores, len(i0))))  # start-up
        start = time.perf_counter()
        flows = pool(joblib.delayed(_opencv_pair)(cfg, i0[k], i1[k]) for k in range(len(i0)))
        seconds = time.perf_counter() - start
    return len(i0) / seconds, np.stack(flows)


@dataclass
class Solved:
    """One timed batch of TV-L1 solves."""

    solve_pairs_s: float  # pairs/s of the solver alone (the flow left on the device)
    host_pairs_s: float  # pairs/s with the flow brought to the host, as the flow stage does
    flow: np.ndarray  # [B, H, W, 2]
    mib_per_pair: float | None  # peak memory per pair beyond the frames on the device (CUDA)
    runs: int


def solve_rate(backend: Any, i0: torch.Tensor, i1: torch.Tensor, min_s: float) -> Solved:
    """Solve the batch (i0, i1) until `min_s` has passed; each run's solve is timed to a device sync,
    then the copy of its flow to the host separately, so that both rates come from the same runs."""
    device = backend.device
    _reset_peak(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    runs, solve_s, copy_s = 0, 0.0, 0.0
    while True:
        start = time.perf_counter()
        flow = backend.compute_pairs(i0, i1)
        _sync(device)
        mid = time.perf_counter()
        host = flow.permute(0, 2, 3, 1).cpu().numpy()
        copy_s += time.perf_counter() - mid
        solve_s += mid - start
        runs += 1
        if solve_s + copy_s >= min_s:
            break
    per_pair = (torch.cuda.max_memory_allocated(device) - base) / len(i0) / 2**20 if device.type == "cuda" else None
    pairs = runs * len(i0)
    return Solved(pairs / solve_s, pairs / (solve_s + copy_s), host, per_pair, runs)


def epe(flow: np.ndarray, truth: np.ndarray) -> float:
    return float(np.linalg.norm(flow - truth, axis=-1).mean())


def within(a: np.ndarray, b: np.ndarray, px: float = 0.1) -> float:
    return float((np.linalg.norm(a - b, axis=-1) < px).mean())


def flow_row(rec: Recorder, mode: str, device: torch.device, batch: int, got: Solved, gt: np.ndarray,
             base: float | None, **extra: Any) -> dict[str, Any]:
    mem = "-" if got.mib_per_pair is None else f"{got.mib_per_pair:.1f} MiB/pair"
    return rec.row(f"torch TV-L1 {mode} ({device}), batch {batch}",
                   f"{got.solve_pairs_s:.1f} pairs/s solving, {got.host_pairs_s:.1f} with the flow copied to the "
                   f"host; {mem}, EPE {epe(got.flow, gt[:batch]):.3f} px",
                   ratio="-" if base is None else f"{got.host_pairs_s / base:.1f}x OpenCV",
                   pairs_s=got.host_pairs_s, solve_pairs_s=got.solve_pairs_s, batch=batch, mode=mode,
                   mib_per_pair=got.mib_per_pair, epe_px=epe(got.flow, gt[:batch]), runs=got.runs, **extra)


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    from p3dbase.atomic import write_bytes

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def verdict_flow(rec: Recorder, best: float, device: torch.device, modes: str, base: float | None) -> None:
    where = "340x256, [flow] defaults" if device.type == "cuda" else "CPU, smoke sizes"
    rec.row(f"torch TV-L1, best pairs/s with the copy to the host ({where}, {modes})", f"{best:.1f} pairs/s",
            ratio="-" if base is None else f"{best / base:.1f}x OpenCV", target=f">= {FLOW_TARGET:.0f} pairs/s",
            passed=_verdict(best, FLOW_TARGET, device), best_pairs_s=best)


def section_flow(rec: Recorder, sz: Sizes, device: torch.device, args: argparse.Namespace) -> None:
    """The eager torch TV-L1: the [flow] default batch first (and its verdict), then OpenCV's CPU rate
    (the baseline of the ratios, filled into the rows above it too), then the other batches. The
    pairs and the eager flow go to --work for flow_compiled's criterion."""
    from flow.config import FlowConfig
    from flow.tvl1_torch import TorchTVL1

    cfg = dataclasses.replace(FlowConfig(), **sz.flow_sets, batch_pairs=max(sz.flow_batches))
    i0, i1, gt = flow_pairs(rec, sz)
    d0, d1 = torch.from_numpy(i0).to(device), torch.from_numpy(i1).to(device)
    backend = TorchTVL1(cfg, str(device), compiled=False)
    if rec.attempt("torch TV-L1 eager: warm-up", lambda: solve_rate(backend, d0[:2], d1[:2], 0.0)) is None:
        return  # (CUDA's kernels load on first use: not part of any timed batch)
    rows: list[dict[str, Any]] = []
    best, eager = 0.0, np.zeros((0,), np.float32)
    batches = [b for b in sz.flow_batches if b <= len(i0)]
    for k, batch in enumerate(batches):
        if k == 1:
            opencv_baseline(rec, sz, cfg, i0, i1, gt, rows, eager)
        if rows:  # seconds per pair of the fastest batch so far, twice over: a warm-up and the timed runs
            need = 2 * batch * min(r["batch"] / r["pairs_s"] for r in rows) + sz.flow_min_s
            if not rec.fits(f"torch TV-L1 eager, batch {batch}", need):
                continue
        got = rec.attempt(f"torch TV-L1 eager, batch {batch}",
                          lambda n=batch: solve_rate(backend, d0[:n], d1[:n], sz.flow_min_s))
        if got is None:
            continue
        rows.append(flow_row(rec, "eager", device, batch, got, gt, rec.extra.get("opencv_pairs_s")))
        best = rec.extra["best_pairs_s"] = max(best, got.host_pairs_s)
        if len(got.flow) > len(eager):
            eager = got.flow
            save_arrays(args.work / "flow_pairs.npz", i0=i0, i1=i1, gt=gt, eager=eager)
            rec.extra["eager_batch"] = batch
        if k == 0:  # the verdict at once: the batch the flow stage runs by default
            verdict_flow(rec, best, device, f"eager, batch {batch}", rec.extra.get("opencv_pairs_s"))
    if len(batches) == 1:
        opencv_baseline(rec, sz, cfg, i0, i1, gt, rows, eager)
    if len(rows) > 1:
        verdict_flow(rec, best, device, "eager, any batch", rec.extra.get("opencv_pairs_s"))


def opencv_baseline(rec: Recorder, sz: Sizes, cfg: Any, i0: np.ndarray, i1: np.ndarray, gt: np.ndarray,
                    rows: list[dict[str, Any]], eager: np.ndarray) -> None:
    """OpenCV's DualTVL1 on every core (one process of one thread each, as the flow stage runs it):
    the baseline of the "x OpenCV" ratios, and the share of the eager flow within 0.1 px of it."""
    import cv2

    what = "OpenCV DualTVL1, CPU, every core"
    if not hasattr(cv2, "optflow"):
        rec.skip(what, "no cv2.optflow (docs/gpu.md: the contrib wheel to carry)")
        return
    cores = _jobs(sz, len(i0))
    n = min(len(i0), sz.opencv_pairs_per_core * cores)
    if not rec.fits(what, 10.0):
        return
    got = rec.attempt(what, lambda: opencv_rate(cfg, i0[:n], i1[:n], cores))
    if got is None:
        return
    rate, reference = got
    rec.extra["opencv_pairs_s"] = rate
    for r in rows:
        r["ratio"] = f"{r['pairs_s'] / rate:.1f}x OpenCV"
    m = min(n, len(eager))
    agree = "" if not m else f"; torch eager within 0.1 px of it: {100 * within(eager[:m], reference[:m]):.1f}%"
    rec.row(f"OpenCV DualTVL1, CPU, {cores} process{'es' if cores > 1 else ''} of one thread, {n} pairs",
            f"{rate:.2f} pairs/s, EPE {epe(reference, gt[:n]):.3f} px{agree}", ratio="1.00x (baseline)",
            opencv_pairs_s=rate, epe_px=epe(reference, gt[:n]))


def section_flow_compiled(rec: Recorder, sz: Sizes, device: torch.device, args: argparse.Namespace) -> None:
    """The torch TV-L1 through torch.compile (iteration, median, warp): building it (compiling), the
    two largest batches, and the criterion: its uint8 flow (what the store keeps) within one level of
    the eager flow of the flow section."""
    from flow.config import FlowConfig
    from flow.encoding import encode
    from flow.tvl1_torch import TorchTVL1

    saved = args.work / "flow_pairs.npz"
    if saved.is_file():
        with np.load(saved) as data:
            i0, i1, gt, eager = data["i0"], data["i1"], data["gt"], data["eager"]
    else:
        rec.note("no eager flow from the flow section (not run, or cut): the criterion cannot be checked")
        (i0, i1, gt), eager = flow_pairs(rec, sz), np.zeros((0,), np.float32)
    cfg = dataclasses.replace(FlowConfig(), **sz.flow_sets, batch_pairs=max(sz.flow_batches))
    cache = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR", args.work / "inductor"))
    warm_cache = cache.is_dir() and any(cache.iterdir())  # the correctness section's CUDA test compiled first
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = rec.attempt("torch TV-L1 compiled: build", lambda: TorchTVL1(cfg, str(device), compiled=True))
    if backend is None:
        return
    if not backend.compiled:
        rec.fail("torch TV-L1 compiled: build", "; ".join(str(w.message) for w in caught) or "fell back to eager")
        return
    d0, d1 = torch.from_numpy(i0).to(device), torch.from_numpy(i1).to(device)
    if rec.attempt("torch TV-L1 compiled: warm-up", lambda: solve_rate(backend, d0[:2], d1[:2], 0.0)) is None:
        return
    build_s = time.perf_counter() - start
    rec.row(f"torch TV-L1 compiled ({device}): build + first 2 pairs (compiling, backend {sz.compile_backend})",
            f"{build_s:.1f} s, torch's compile cache {'warm' if warm_cache else 'cold'}", seconds=build_s,
            warm_cache=warm_cache)
    base = prior(args, "flow").get("opencv_pairs_s")
    eager_best = prior(args, "flow").get("best_pairs_s")
    best = 0.0
    for batch in sorted((b for b in sz.flow_batches if b <= len(i0)), reverse=True)[:2]:
        if best and not rec.fits(f"torch TV-L1 compiled, batch {batch}", 2 * batch / best + sz.flow_min_s):
            continue
        got = rec.attempt(f"torch TV-L1 compiled, batch {batch}",
                          lambda n=batch: solve_rate(backend, d0[:n], d1[:n], sz.flow_min_s))
        if got is None:
            continue
        n = min(len(got.flow), len(eager))
        extra: dict[str, Any] = {}
        if n:
            # The criterion on what the store keeps: uint8 levels of 40/255 px. A fused kernel rounds
            # differently (fused multiply-adds), and TV-L1 carries a last-bit difference across a
            # threshold at a few pixels, so 99.9% of components, not every one.
            diff = np.abs(encode(got.flow[:n], BOUND).astype(np.int16) - encode(eager[:n], BOUND).astype(np.int16))
            share = float((diff <= 1).mean())
            extra = {"within_one_level": share, "max_levels": int(diff.max()),
                     "max_diff_px": float(np.abs(got.flow[:n] - eager[:n]).max())}
        row = flow_row(rec, "compiled", device, batch, got, gt, base, **extra)
        if n:
            row["figure"] += (f"; uint8 flow vs eager: {100 * extra['within_one_level']:.2f}% within one level, "
                              f"max {extra['max_levels']} levels ({extra['max_diff_px']:.2e} px)")
            row["target"] = ">= 99.9% within one level of eager"
            row["passed"] = extra["within_one_level"] >= 0.999
            if eager_best:
                row["ratio"] += f", {got.host_pairs_s / eager_best:.2f}x eager's best"
            rec.save()
        else:
            row["figure"] += "; not compared with eager (no eager flow)"
            rec.save()
        best = rec.extra["best_pairs_s"] = max(best, got.host_pairs_s)
    if best:
        verdict_flow(rec, max(best, eager_best or 0.0), device, "eager or compiled", base)


# ---- sections: training throughput, eager and compiled ------------------------------------------
def matmul_peak(device: torch.device, n: int, dtype: torch.dtype, min_s: float) -> float:
    """FLOP/s of n x n x n matrix products in `dtype` (float32: TF32 tensor cores on CUDA), timed with
    CUDA events over at least `min_s` after 3 warm-ups: clocks settle over tenths of a second."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        _sync(device)
        count = 0
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            while True:
                for _ in range(10):
                    a @ b
                count += 10
                end.record()
                end.synchronize()
                seconds = start.elapsed_time(end) / 1e3
                if seconds >= min_s:
                    break
        else:
            begin = time.perf_counter()
            while True:
                a @ b
                count += 1
                seconds = time.perf_counter() - begin
                if seconds >= min_s:
                    break
        return count * 2 * n**3 / seconds
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


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


@dataclass
class Trainer:
    """Times training steps of sz.arch (bench/streams_train.py's train_rate: streams.train.train_step
    on a fixed batch, partial BN as the official nets train: every BN but the first frozen) and
    records them with MFU against the measured and the datasheet peaks."""

    rec: Recorder
    sz: Sizes
    device: torch.device
    flops_per_clip: float
    peaks: dict[str, float]  # "bf16" / "tf32": measured FLOP/s
    datasheet: tuple[float, float] | None  # (bf16, TF32) TFLOP/s

    def train(self, batch: int, steps: int, **kwargs: Any) -> tuple[float, float | None, float, float]:
        """(clips/s, peak GiB, seconds of building and warming up (cuDNN autotuning, compiling), wall s)"""
        from streams_train import train_rate  # bench/streams_train.py

        _free(self.device)
        _reset_peak(self.device)
        start = time.perf_counter()
        rate, step_s = train_rate(self.sz.arch, batch, self.sz.clip, self.device, steps, classes=400, **kwargs)
        wall = time.perf_counter() - start
        return rate, _peak_gib(self.device), wall - steps * step_s, wall

    def record(self, what: str, batch: int, got: tuple[float, float | None, float, float], *, precision: str,
               steps: int, **values: Any) -> dict[str, Any]:
        rate, peak_gib, warm_s, _ = got
        mfu = rate * self.flops_per_clip / self.peaks[precision]
        sheet = None if self.datasheet is None else self.datasheet[0 if precision == "bf16" else 1] * 1e12
        mfu_text = f"MFU {100 * mfu:.1f}% of the measured {precision} matmul peak"
        if sheet:
            mfu_text += f", {100 * rate * self.flops_per_clip / sheet:.1f}% of the datasheet's"
        mem = "-" if peak_gib is None else f"{peak_gib:.1f} GiB peak"
        return self.rec.row(f"train {self.sz.arch} {what}, batch {batch}, {steps} steps",
                            f"{rate:.1f} clips/s, {mem}, {mfu_text}, warm-up {warm_s:.0f} s",
                            clips_s=rate, batch=batch, peak_gib=peak_gib, mfu=mfu, precision=precision,
                            mfu_datasheet=None if not sheet else rate * self.flops_per_clip / sheet, warmup_s=warm_s,
                            steps=steps, **values)


def trainer(rec: Recorder, sz: Sizes, device: torch.device, peaks: dict[str, float] | None = None) -> Trainer:
    """The matmul peaks (measured here unless given) and P3D's FLOPs per training clip."""
    from streams.p3d import build_model, count_macs

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as streams.train does on CUDA
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    sheet = datasheet_peaks(name)
    if peaks is None:
        peaks = {}
        for precision, dtype in (("bf16", torch.bfloat16), ("tf32", torch.float32)):
            peaks[precision] = matmul_peak(device, sz.matmul_n, dtype, sz.matmul_min_s)
            datasheet = "" if sheet is None else \
                f", {100 * peaks[precision] / 1e12 / sheet[0 if precision == 'bf16' else 1]:.0f}% of the datasheet's"
            timer = "CUDA events" if device.type == "cuda" else "wall clock"
            rec.row(f"{precision} matmul {sz.matmul_n}^3, >= {sz.matmul_min_s} s ({timer}): the MFU ceiling",
                    f"{peaks[precision] / 1e12:.3g} TFLOP/s{datasheet}", tflops=peaks[precision] / 1e12)
        rec.extra["peaks"] = peaks
    macs = count_macs(build_model(sz.arch, 400, 3), (3, *sz.clip))
    flops_per_clip = 3 * 2 * macs  # forward + backward = 3 forwards; 2 FLOPs per multiply-accumulate
    rec.note(f"{sz.arch}: {macs / 1e9:.3g} GMACs per {'x'.join(map(str, sz.clip))} clip forward; training = "
             f"3 x forward = {flops_per_clip / 1e9:.1f} GFLOP per clip. Datasheet peaks (dense): "
             + ("unknown for this device" if sheet is None else f"{sheet[0]} bf16, {sheet[1]} TF32 TFLOP/s")
             + ". Training rows use partial BN as the official nets train: every BN but the first is frozen "
             "(eval mode: running statistics, no batch statistics), which compiling can fold into the convolutions")
    return Trainer(rec, sz, device, flops_per_clip, peaks, sheet)


def verdict_train(rec: Recorder, sz: Sizes, device: torch.device, rate: float, what: str) -> None:
    rec.row(f"train {sz.arch}, bf16 clips/s at batch {sz.train_batch} ({what})", f"{rate:.1f} clips/s",
            target=f">= {TRAIN_TARGET:.0f} clips/s", passed=_verdict(rate, TRAIN_TARGET, device), best_clips_s=rate)


def section_training(rec: Recorder, sz: Sizes, device: torch.device, args: argparse.Namespace) -> None:
    """Eager training, by value: bf16 AMP + channels_last_3d at the chosen batch (the headline and its
    verdict), bf16 contiguous, inference, the largest batch that fits (2-step fit checks, never the
    headline), fp32 last (the "x fp32" ratios of the rows at the same batch are filled in then)."""
    from streams.builder import to_channels_last
    from streams.p3d import build_model

    t = trainer(rec, sz, device)
    batch, steps = sz.train_batch, sz.train_steps
    bf16_cl = {"amp": torch.bfloat16, "channels_last": True}
    first = rec.attempt("train bf16 AMP + channels_last_3d", lambda: t.train(batch, steps, **bf16_cl))
    if first is None:
        return
    t.record("bf16 AMP + channels_last_3d", batch, first, precision="bf16", steps=steps)
    rec.extra["eager_bf16_cl_clips_s"] = rec.extra["best_train_rate"] = first[0]
    verdict_train(rec, sz, device, first[0], "eager, bf16 AMP + channels_last_3d")
    wall = first[3]  # seconds a configuration takes here: the estimate for the rows that follow

    if rec.fits("train bf16 AMP, contiguous", 1.5 * wall):
        got = rec.attempt("train bf16 AMP, contiguous", lambda: t.train(batch, steps, amp=torch.bfloat16))
        if got is not None:
            t.record("bf16 AMP, contiguous", batch, got, precision="bf16", steps=steps)
            if got[0] > rec.extra["best_train_rate"]:
                rec.extra["best_train_rate"] = got[0]
                verdict_train(rec, sz, device, got[0], "eager, bf16 AMP contiguous")

    model = rec.attempt("inference: build", lambda: to_channels_last(build_model(sz.arch, 400, 3).to(device).eval()))
    if model is not None:
        for b in sz.infer_batches:
            for name, amp in (("fp32, as make eval / features run", None), ("bf16 AMP", torch.bfloat16)):
                if not rec.fits(f"inference {name}, batch {b}", wall / 2):
                    continue
                rate = rec.attempt(f"inference {name}, batch {b}",
                                   lambda b=b, a=amp: infer_rate(model, b, sz.clip, device, a, steps))
                if rate is not None:
                    rec.row(f"inference {sz.arch} {name}, batch {b}", f"{rate:.1f} clips/s", clips_s=rate, batch=b)
        del model
        _free(device)

    # The largest batch that fits: bf16 + channels_last_3d, doubling until out of memory. Two steps
    # each, enough to know it fits, not a rate: these rows never make a verdict.
    fits, size, stopped = batch, batch * 2, None
    per_clip = wall / ((2 + steps) * batch)
    while size <= sz.batch_cap:
        what = f"fit check: bf16 AMP + channels_last_3d, batch {size}"
        if not rec.fits(what, 4 * size * per_clip + 2 * wall / (2 + steps) + 5):
            stopped = "out of time"
            break
        try:
            got = t.train(size, 2, **bf16_cl)
        except Exception as err:
            if not _is_oom(err):
                rec.fail(what, traceback.format_exc())
                stopped = "failed"
                break
            stopped = f"batch {size}: {str(err).splitlines()[0][:120]}"
            break
        rec.row(what + " (2 steps: a fit check, not a rate)",
                f"fits, {'-' if got[1] is None else f'{got[1]:.1f} GiB peak'}, ~{got[0]:.0f} clips/s", batch=size,
                fit_check=True, peak_gib=got[1])
        fits, size = size, size * 2
    rec.row("largest batch that fits (bf16 AMP + channels_last_3d)",
            f"{fits}" + (f" (next: {stopped})" if stopped else f" (>= {fits}: the search stops at {sz.batch_cap})"),
            largest_batch=fits)

    if not rec.fits("train fp32", 3 * wall):
        return
    got = rec.attempt("train fp32", lambda: t.train(batch, steps))
    if got is None:
        return
    fp32 = got[0]
    t.record("fp32 (on CUDA: cuDNN's default TF32 convolutions)", batch, got, precision="tf32", steps=steps,
             ratio="1.00x (baseline)")
    for r in rec.rows:
        if r.get("batch") == batch and r.get("clips_s") and "steps" in r and r.get("precision") == "bf16":
            r["ratio"] = f"{r['clips_s'] / fp32:.2f}x fp32 (batch {batch})"
    rec.extra["fp32_clips_s"] = fp32
    rec.save()


def section_train_compiled(rec: Recorder, sz: Sizes, device: torch.device, args: argparse.Namespace) -> None:
    """bf16 AMP + channels_last_3d + torch.compile at the chosen batch, as train.compile runs it:
    compiling (minutes cold for P3D-199's 1,400 ops per step; torch's caches are under --work) and
    clips/s against the eager rate of the training section at the same batch."""
    earlier = prior(args, "training")
    t = trainer(rec, sz, device, earlier.get("peaks"))
    batch, steps = sz.train_batch, sz.train_steps
    what = "bf16 AMP + channels_last_3d + torch.compile"
    got = rec.attempt(f"train {what}", lambda: t.train(batch, steps, amp=torch.bfloat16, channels_last=True,
                                                       compile=True))
    if got is None:
        return
    eager = earlier.get("eager_bf16_cl_clips_s")
    row = t.record(f"{what} (backend {sz.compile_backend})", batch, got, precision="bf16", steps=steps)
    if eager:
        row["ratio"] = f"{got[0] / eager:.2f}x eager (batch {batch})"
        if earlier.get("fp32_clips_s"):
            row["ratio"] += f", {got[0] / earlier['fp32_clips_s']:.2f}x fp32"
        rec.save()
    rec.extra["compiled_clips_s"] = got[0]
    rec.extra["best_train_rate"] = max(got[0], earlier.get("best_train_rate") or 0.0)
    verdict_train(rec, sz, device, got[0], "compiled")
    if eager:
        wins = got[0] > eager
        rec.row("train.compile on CUDA (the default where it wins)",
                f"compiled {'wins' if wins else 'loses'}: {got[0]:.1f} against {eager:.1f} clips/s eager",
                target="compiled > eager", passed=wins if device.type == "cuda" else None, compile_wins=wins)


# ---- section: loading against training ----------------------------------------------------------
def loader_rate(root: Path, items: list[tuple[str, int]], modality: str, workers: int, sz: Sizes, pin: bool
                ) -> tuple[float, int]:
    """(clips/s, batches timed) out of the training DataLoader (streams.loaders.make_loader, as
    train_stream builds it: augmentation on, prefetch 4, pinned memory on CUDA), timed from its first
    batch (worker start-up is not loading) over at least sz.loader_min_s. An epoch holds workers x
    prefetch x 4 batches, so that the pipeline never drains at an epoch's end inside the timed window.
    OpenCV on one thread around the fork, as train_stream does (a forked worker of a process whose
    OpenCV pool ran can hang)."""
    from flow.video import opencv_single_thread
    from streams.clips import ClipDataset, EpochSampler
    from streams.loaders import make_loader

    epoch_batches = max(workers, 1) * LOADER_PREFETCH * 4
    items = (items * math.ceil(epoch_batches * sz.loader_batch / len(items)))[:epoch_batches * sz.loader_batch]
    dataset = ClipDataset(root, items, modality, sz.loader_clip_len, train=True, resize=sz.loader_resize,
                          crop=sz.loader_crop)
    sampler = EpochSampler(len(dataset))
    with opencv_single_thread():
        loader = make_loader(dataset, batch=sz.loader_batch, workers=workers, seed=0, pin_memory=pin,
                             sampler=sampler, drop_last=True)
        done, start, epoch = 0, 0.0, 0
        try:
            while True:
                sampler.set_epoch(epoch)
                for _ in loader:
                    if done == 0:
                        start = time.perf_counter()
                    done += 1
                    if done > 2 and time.perf_counter() - start >= sz.loader_min_s:
                        return (done - 1) * sz.loader_batch / (time.perf_counter() - start), done - 1
                epoch += 1
        finally:
            del loader


def section_loading(rec: Recorder, sz: Sizes, device: torch.device, args: argparse.Namespace) -> None:
    """Packed stores (png, raw) of SynthActions videos with their exact flow, read by the training
    DataLoader: the most workers first (the machine's rate), then one (the rate per core), then 4."""
    import joblib

    from flow.encoding import encode
    from flow.store import create_store, write_video

    width, height = sz.frame
    start = time.perf_counter()
    videos = render_videos(sz, sz.loader_videos, sz.loader_frames)
    rec.note(f"{len(videos)} SynthActions videos of {sz.loader_frames} frames at {width}x{height} rendered in "
             f"{time.perf_counter() - start:.1f} s; the stores hold their exact flow (not TV-L1's: the flow "
             "section measures that), which PNG compresses somewhat better than a solver's flow")
    train_rate_s = max((prior(args, s).get("best_train_rate") or 0.0 for s in ("training", "train_compiled")),
                       default=0.0) or args.train_rate
    items = [(f"v{k:03d}", 0) for k in range(len(videos))]
    roots = {}
    for codec in ("png", "raw"):
        roots[codec] = root = args.work / f"store_{codec}"
        create_store(root, codec=codec, bound=BOUND, overwrite=True)
        start = time.perf_counter()
        joblib.Parallel(n_jobs=_jobs(sz, len(videos)))(
            joblib.delayed(write_video)(root, f"v{k:03d}", rgb, encode(flow, BOUND))
            for k, (rgb, flow) in enumerate(videos))
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        frames = sum(len(v) for v, _ in videos)
        rec.row(f"packed store, {codec}: written", f"{size / frames / 1e3:.1f} kB per frame (RGB + flow), "
                f"{time.perf_counter() - start:.1f} s", bytes_per_frame=size / frames, codec=codec)

    for workers in (w for w in sz.loader_workers if w <= _cores()):
        for codec, root in roots.items():
            for modality in ("rgb", "flow"):
                what = f"load {modality} ({codec}), {workers} worker{'s' if workers > 1 else ''}"
                if not rec.fits(what, sz.loader_min_s + 5):
                    continue
                got = rec.attempt(what, lambda r=root, m=modality, w=workers: loader_rate(
                    r, items, m, w, sz, device.type == "cuda"))
                if got is None:
                    continue
                rate, batches = got
                rec.row(f"{what}, {sz.loader_clip_len}x{sz.loader_crop}x{sz.loader_crop}, augmented",
                        f"{rate:.1f} clips/s ({rate / workers:.1f} per worker, {batches} batches timed)",
                        ratio="-" if not train_rate_s else f"{rate / train_rate_s:.2f}x training",
                        target="-" if not train_rate_s else f">= {train_rate_s:.0f} clips/s (training)",
                        passed=None if not train_rate_s or device.type != "cuda" else rate >= train_rate_s,
                        clips_s=rate, codec=codec, modality=modality, workers=workers, batches=batches,
                        epoch_batches=max(workers, 1) * LOADER_PREFETCH * 4)
                if workers == 1 and train_rate_s:
                    rec.note(f"{modality} from {codec}: about {math.ceil(train_rate_s / rate)} workers would load "
                             f"{train_rate_s:.0f} clips/s (one worker: {rate:.1f} clips/s)")
    if not train_rate_s:
        rec.note("no training rate from the training sections (not run, or failed): loading is not compared")
    if device.type == "cuda" and rec.fits("nvJPEG", 20):  # bench/loader.py: decoding finished on the GPU
        from loader import device_decode_rate

        jpeg_root = args.work / "store_jpeg"
        create_store(jpeg_root, codec="jpeg", bound=BOUND, overwrite=True)
        for k, (rgb, flow) in enumerate(videos):
            write_video(jpeg_root, f"v{k:03d}", rgb, encode(flow, BOUND))
        for decode, name, what in (("cuda", "nvJPEG", "nvJPEG decode"),  # imports torchvision (the extra) there
                                   ("hybrid", "hybrid", "entropy decoding on the CPU, the rest of the decode")):
            if not rec.fits(name, 20):
                continue
            got = rec.attempt(name, lambda d=decode: device_decode_rate(
                jpeg_root, [v for v, _ in items], device, d, clip_len=sz.loader_clip_len,
                resize=tuple(sz.loader_resize), crop=sz.loader_crop))
            if got is not None:
                rec.row(f"load rgb (jpeg), {what} + resize, crop, flip on the GPU, main process",
                        f"{got['clips_s']:.1f} clips/s", ratio=f"{got['ratio']:.1f}x one CPU core",
                        clips_s_gpu=got["clips_s"], cpu_core_clips_s=got["cpu_core_clips_s"], decode=decode)


# ---- section: end to end ------------------------------------------------------------------------
E2E_STAGES = {"make synth": ("synth",), "make flow": ("flow",), "make train-rgb": ("train", "--stream", "rgb"),
              "make train-flow": ("train", "--stream", "flow"), "make eval": ("eval",)}


def section_e2e(rec: Recorder, sz: Sizes, device: torch.device, args: argparse.Namespace) -> None:
    from flow.evaluate import evaluate_store, pooled
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
    "train_compiled": section_train_compiled, "flow_compiled": section_flow_compiled, "loading": section_loading,
    "e2e": section_e2e,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("section", choices=list(SECTION_FUNCS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--deadline", type=float, required=True, help="time.time() by which to finish")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--train-rate", type=float, default=None)
    args = parser.parse_args()
    sz = SMOKE if args.smoke else FULL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:  # busy-waiting threads stall each other on shared cores (BENCHMARKS.md, Streams)
        import cv2

        torch.set_num_threads(1)
        cv2.setNumThreads(1)
    if sz.compile_backend != "inductor":  # --smoke: every torch.compile of the project traces only
        torch.compile = functools.partial(torch.compile, backend=sz.compile_backend)
    (args.out / "sections").mkdir(parents=True, exist_ok=True)  # run directly, not by gpu.py: nothing made it
    rec = Recorder(args.section, args.out / "sections" / f"{args.section}.json", args.deadline)

    def stopped(signum: int, _frame: Any) -> None:  # the runner stops a section at its budget this way
        rec.note(f"stopped by {signal.Signals(signum).name}" + (f" while measuring: {rec.current}" if rec.current
                                                               else ""))
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stopped)
    if sys.platform.startswith("linux"):  # SIGTERM too when the runner dies (kill -9 of the whole run)
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    rec.extra["environment"] = environment(device)
    rec.save()
    try:
        SECTION_FUNCS[args.section](rec, sz, device, args)
    except Exception:
        rec.fail("section", traceback.format_exc())
        return 1
    return 0


if __name__ == "__main__":
    run(main)
