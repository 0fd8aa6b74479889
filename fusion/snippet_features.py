"""`features --stride`: per-snippet features of every video into a folder, resumable, shardable.

For each video (fusion.inputs: files, frame folders, directories, list files) and the snippets of
fusion.snippets (a window of the streams' clip length every `stride` frames):

    DIR/<video_id>.npy    float32 [T, D]: pool5 of each snippet, RGB then flow when both are given
                          (D = 2048 + 2048 for P3D-199); `normalised`: each stream's row signed-square-
                          rooted and L2-normalised before they are concatenated (fusion.svm.normalise)
    DIR/<video_id>.json   fps, window, stride, frame count, each snippet's start / end frame and
                          time, the streams (checkpoint, SHA-256, dimensions), the flow settings,
                          the code version, the video's signature and the settings key
    DIR/features.json     the folder's settings (what every video's features were made with)
    DIR/manifest.csv      every video of the source: done / failed (with why) / pending

A video is done when its .json (written after its .npy, both atomically) carries the folder's key
and the signature (size, mtime) of the file it came from: a killed run resumes, a changed video is
computed again. Several processes (or `--shard i/n` runs, or machines sharing the folder) can work
on one folder at once: each video is computed under an flock (p3dbase.lock) by whoever takes it
first, the others skip it, and each process rewrites the manifest from the folder as it finishes.
An existing folder of other settings (or holding something else) is refused unless `force`, which
recomputes every video of the run.
"""
from __future__ import annotations

import csv
import glob
import importlib.metadata
import io
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flow.config import FlowConfig
from flow.errors import FlowError
from flow.stage import config_flow_settings
from fusion import svm
from fusion.config import EvalConfig
from fusion.engine import PoolSpec, Stream, Worker, map_videos, open_stream
from fusion.errors import FusionError
from fusion.inputs import VideoInput, gather_inputs, input_signature
from fusion.predict import check_flow, checkpoint_flow_config, problem
from fusion.snippets import Snippets, run_snippets, snippet_plan
from p3dbase.atomic import DiskFullError, atomic_path, disk_full, is_disk_full, name_problem, temp_prefix, write_text
from p3dbase.device import resolve_device
from p3dbase.digest import settings_key
from p3dbase.errors import brief, shown
from p3dbase.lock import try_lock
from p3dbase.overwrite import OutputExistsError, output_folder
from p3dbase.progress import progress_bar
from streams.errors import StreamsError
from streams.transforms import MODALITIES

SETTINGS = "features.json"
MANIFEST = "manifest.csv"


def code_version() -> str:
    """The package version, and the git commit when the code runs from a checkout (a "+" when it has
    uncommitted changes)."""
    try:
        version = f"p3d-two-stream {importlib.metadata.version('p3d-two-stream')}"
    except importlib.metadata.PackageNotFoundError:
        version = "p3d-two-stream (not installed)"
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty=+"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version} ({commit})" if commit else version


@dataclass
class SnippetSummary:
    videos: int  # of this run (its shard)
    computed: int
    done_before: int
    busy: int  # being computed by another process
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    out: Path = Path()

    def __str__(self) -> str:
        lines = [f"features: {self.videos} videos: {self.computed} computed, {self.done_before} done before, "
                 f"{self.busy} being computed by another process, {len(self.failures)} failed "
                 f"({self.seconds:.0f} s) -> {self.out}"]
        lines += [f"features: failed {video_id}: {error}" for video_id, error in self.failures[:10]]
        if len(self.failures) > 10:
            lines.append(f"features: ... and {len(self.failures) - 10} more failures ({self.out / MANIFEST})")
        return "\n".join(lines)


@dataclass
class _Context:
    out: Path
    settings: dict
    key: str
    stride: int
    mirror: bool
    normalised: bool
    flow_cfg: FlowConfig
    batch: int
    force: bool
    frame_bars: bool  # a bar over each video's frames (one process only: bars of several would mix)


def _paths(out: Path, video_id: str) -> tuple[Path, Path, Path, Path]:
    """The video's .npy, .json, failure record and lock."""
    return (out / f"{video_id}.npy", out / f"{video_id}.json", out / ".failed" / f"{video_id}.json",
            out / ".locks" / f"{video_id}.lock")


def is_done(out: Path, key: str, video: VideoInput) -> bool:
    """Whether the video's .json carries `key` and its source's signature, and its .npy is a whole float32
    array of the shape the .json records (its header and size only: a cut or altered file is redone)."""
    npy, meta, _, _ = _paths(out, video.video_id)
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        if not (isinstance(info, dict) and info.get("key") == key
                and info.get("source_signature") == input_signature(video.path)):
            return False
        rows = np.load(npy, mmap_mode="r", allow_pickle=False)  # reads the header; a short body fails here
        return isinstance(rows, np.ndarray) and rows.dtype == np.float32 and list(rows.shape) == info.get("shape")
    except (OSError, ValueError, EOFError):
        return False


def _open_folder(out: Path, settings: dict, key: str, force: bool) -> None:
    """Create or check the output folder (one rule for every output: an existing one of other
    settings is refused unless `force`)."""
    marker = out / SETTINGS
    if marker.is_file():
        try:
            old = json.loads(marker.read_text(encoding="utf-8")).get("key")
        except (OSError, ValueError):
            old = None
        if old != key and not force:
            raise OutputExistsError(f"--out {shown(out)} holds features made with other settings or checkpoints "
                              f"(see {SETTINGS} there): give another --out, or --force to recompute them all")
    elif out.is_dir() and any(p.name not in (".locks", ".failed") for p in out.iterdir()) and not force:
        raise OutputExistsError(f"--out {shown(out)} exists and is not a features folder (no {SETTINGS}): give another "
                          "--out, or --force to write into it")
    elif out.exists() and not out.is_dir():
        raise FusionError(f"--out {shown(out)} is a file: per-snippet features go to a folder")
    output_folder(out, "features --out")
    if force or not marker.is_file():
        write_text(marker, json.dumps({**settings, "key": key}, indent=2, sort_keys=True) + "\n")


def _work(worker: Worker, video: VideoInput) -> tuple[str, str, str]:
    """One video under its lock: (video_id, "done" | "done before" | "busy" | "failed", detail)."""
    context: _Context = worker.context
    npy, meta, failed, lock = _paths(context.out, video.video_id)
    if why := name_problem([npy, meta, lock]):  # found before the video is computed (its record cannot be kept)
        return video.video_id, "failed", f"{brief(video.path)}: its features {why}"
    if in_the_way := next((p for p in (npy, meta) if p.is_dir()), None):  # its record could not be written
        return video.video_id, "failed", f"{brief(in_the_way)} is a folder where its features file belongs: move " \
                                         "it away"
    with try_lock(lock) as holder:
        if holder is not None:
            return video.video_id, "busy", f"pid {holder}"
        if not context.force and is_done(context.out, context.key, video):
            return video.video_id, "done before", ""  # finished meanwhile by another process
        for stale in npy.parent.glob(f"{glob.escape(temp_prefix(npy))}*"):  # a killed writer's (we hold the lock)
            stale.unlink(missing_ok=True)
        started = time.monotonic()
        names = [s.name for s in worker.engine.streams]
        try:
            signature = input_signature(video.path)
            bar = progress_bar(total=None, desc=f"features: {shown(video.video_id)}", unit="frame", leave=False,
                               disable=not context.frame_bars)

            def frames(read: int, declared: int) -> None:
                if declared and bar.total != declared:
                    bar.total = declared
                bar.update(read - bar.n)

            def run(on_rows):
                return run_snippets(video.path, worker.engine, context.flow_cfg, context.stride, mirror=context.mirror,
                                    batch=context.batch, on_frames=frames, on_rows=on_rows)

            npy.parent.mkdir(parents=True, exist_ok=True)
            with bar, atomic_path(npy, keep_suffix=True) as tmp:
                got, bounds = _write_rows(tmp, run, names, context.normalised)
        except (FlowError, StreamsError, FusionError, OSError) as e:
            if isinstance(e, DiskFullError):
                raise
            reason = problem(e)
            try:
                failed.parent.mkdir(parents=True, exist_ok=True)
                write_text(failed, json.dumps({"video": shown(video.path), "reason": reason, "key": context.key})
                           + "\n")
            except OSError as record:  # the record's own name too long, say: the summary still lists the video
                if is_disk_full(record):
                    raise
            return video.video_id, "failed", reason
        times = got.times()
        info = {
            "video": shown(video.path), "video_id": video.video_id, "num_frames": got.num_frames, "fps": got.fps,
            "window": got.window, "stride": got.stride, "padded": got.padded, "shape": [len(got.starts), bounds[-1]],
            "columns": {n: [bounds[k], bounds[k + 1]] for k, n in enumerate(names)},
            "snippets": [{"start_frame": s, "end_frame": s + got.window,
                          **({"start_time": round(times[k][0], 6), "end_time": round(times[k][1], 6)} if times else {})}
                         for k, s in enumerate(got.starts)],
            "seconds": {k: round(v, 3) for k, v in got.seconds.items()},
            "source_signature": signature, "key": context.key, **context.settings,
        }
        write_text(meta, json.dumps(info, indent=1) + "\n")  # last: the video is done once this exists
        failed.unlink(missing_ok=True)
        return video.video_id, "done", f"{time.monotonic() - started:.1f} s"


def _write_rows(path: Path, run, names: Sequence[str], normalised: bool) -> tuple[Snippets, list[int]]:
    """`run(on_rows)` (run_snippets) with each batch's rows written to disk as they come, then `path`
    made the .npy [T, D] float32 of them, copied in blocks: a long video's rows are never all in
    memory. Returns the Snippets and the column bounds of the streams."""
    raw = path.with_suffix(".raw")  # `path`'s temporary name, as long: one that fits makes this fit
    bounds: list[int] = []
    try:
        with open(raw, "wb") as sink:
            def on_rows(batch: dict[str, np.ndarray]) -> None:
                parts = [svm.normalise(batch[n]) if normalised else batch[n] for n in names]
                if not bounds:
                    bounds.extend(int(b) for b in np.cumsum([0] + [p.shape[1] for p in parts]))
                try:
                    sink.write(np.concatenate(parts, axis=1).astype(np.float32).tobytes())
                except OSError as e:
                    if is_disk_full(e):
                        raise disk_full(path, e) from e
                    raise

            got = run(on_rows)
        rows, width = len(got.starts), bounds[-1]
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, width))
        block = max(1, (64 << 20) // (4 * width))  # 64 MB at a time
        with open(raw, "rb") as source:
            for first in range(0, rows, block):
                count = min(block, rows - first)
                block_rows = np.frombuffer(source.read(4 * width * count), np.float32)
                out[first:first + count] = block_rows.reshape(count, width)
        out.flush()
        del out
    finally:
        raw.unlink(missing_ok=True)
    return got, bounds


def write_manifest(out: Path, key: str, videos: Sequence[VideoInput],
                   refused: Sequence[tuple[str, str]] = ()) -> dict[str, int]:
    """DIR/manifest.csv from the folder as it is now: every video of the source with its status, then
    the inputs refused before any work (fusion.inputs.gather_inputs: a second input of one id), failed
    under their path with why."""
    counts = {"done": 0, "failed": 0, "pending": 0}
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["video_id", "status", "snippets", "reason"])
    for video in videos:
        npy, meta, failed, lock = _paths(out, video.video_id)
        status, snippets, reason = "pending", "", ""
        if why := name_problem([npy, meta, lock]):  # as `_work` says it: no record of it can be written
            status, reason = "failed", f"{brief(video.path)}: its features {why}"
        elif is_done(out, key, video):
            status = "done"
            try:
                snippets = str(len(json.loads(meta.read_text(encoding="utf-8"))["snippets"]))
            except (OSError, ValueError, KeyError):
                pass
        elif failed.is_file():
            try:
                record = json.loads(failed.read_text(encoding="utf-8"))
                if record.get("key") == key:
                    status, reason = "failed", record.get("reason", "")
            except (OSError, ValueError):
                pass
        counts[status] += 1
        writer.writerow([video.video_id, status, snippets, reason])
    for path, why in refused:
        counts["failed"] += 1
        writer.writerow([path, "failed", "", why])
    write_text(out / MANIFEST, text.getvalue())
    return counts


def extract_snippet_features(sources: Sequence[Path | str], checkpoints: dict[str, Path], out: Path | str,
                             flow_cfg: FlowConfig, cfg: EvalConfig, *, stride: int, window: int | None = None,
                             mirror: bool = False, normalised: bool = False, shard: tuple[int, int] = (0, 1),
                             force: bool = False, explicit_flow: Sequence[str] = (),
                             progress: bool | None = None) -> SnippetSummary:
    """The `features --stride` stage (see the module doc). `explicit_flow`: the `[flow]` keys given
    with --set, which override the checkpoints' flow settings (and must agree with them)."""
    started = time.monotonic()
    out = Path(out)
    try:
        flow_cfg.validate()
        cfg.validate()
    except ValueError as e:
        raise FusionError(f"settings: {e}") from None
    if stride < 1:
        raise FusionError(f"--stride must be >= 1, got {stride}")
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise FusionError(f"--shard: expected 0 <= i < n, got {i}/{n} (i is 0-based)")
    if not checkpoints or set(checkpoints) - set(MODALITIES):
        raise FusionError(f"give an RGB and/or a flow checkpoint (--rgb, --flow), got {sorted(checkpoints)}")
    streams: list[Stream] = [open_stream(name, checkpoints[name]) for name in MODALITIES if name in checkpoints]
    clip_lens = {s.clip_len for s in streams}
    if len(clip_lens) > 1:
        raise FusionError(f"the streams have different clip lengths ({sorted(clip_lens)}): their snippets would "
                          "not cover the same frames")
    clip_len = clip_lens.pop()
    if window is not None and window != clip_len:  # 0 too: not "the default", a window of no frame
        raise FusionError(f"--window {window}: a snippet is one clip of the streams, {clip_len} frames; "
                          f"give --window {clip_len} or leave it out")
    flow_cfg = checkpoint_flow_config(streams, flow_cfg, explicit_flow)
    check_flow(streams, config_flow_settings(flow_cfg), "the [flow] settings features computes flow with")
    videos, refused = gather_inputs(sources)
    mine = sorted(videos, key=lambda v: v.video_id)[i::n]
    settings = {
        "streams": [{"name": s.name, "checkpoint": shown(s.checkpoint), "sha256": s.sha256, "arch": s.info.arch,
                     "step": s.info.step, "classes": len(s.classes)} for s in streams],
        "flow": config_flow_settings(flow_cfg), "plan": snippet_plan(stride, mirror).key(), "window": clip_len,
        "normalised": normalised, "code_version": code_version(),
        "layout": "[T, D] float32, one row per snippet; columns: each stream's pool5, rgb then flow",
    }
    decisive = {k: v for k, v in settings.items() if k != "code_version"}
    decisive["streams"] = [{k: v for k, v in s.items() if k != "checkpoint"} for s in settings["streams"]]
    key = settings_key(decisive)
    _open_folder(out, settings, key, force)

    done_before = [v for v in mine if not force and is_done(out, key, v)]
    todo = [v for v in mine if v not in done_before]
    device = resolve_device(cfg.device, "eval.device")
    quiet = progress is False  # --no-progress: no bar at all, not even plain lines in a log
    if progress is None:
        progress = sys.stderr.isatty()
    context = _Context(out, settings, key, stride, mirror, normalised, flow_cfg, cfg.batch_views, force,
                       frame_bars=progress and (device.type != "cpu" or cfg.jobs == 1 or len(todo) == 1))
    # The refused inputs are every shard's to report (each run's exit status says some failed), but not
    # to count among the videos that could not be read.
    summary = SnippetSummary(len(mine) + len(refused), 0, len(done_before), 0, failures=list(refused), out=out)
    spec = PoolSpec(streams, cfg.batch_views, device, _work, context)
    try:
        for video_id, status, detail in map_videos(spec, todo, cfg.jobs, desc="features", unit="video",
                                                   scheduler=flow_cfg.scheduler, bar=not quiet):
            if status == "done":
                summary.computed += 1
            elif status == "done before":
                summary.done_before += 1
            elif status == "busy":
                summary.busy += 1
            else:
                summary.failures.append((video_id, detail))
    finally:
        write_manifest(out, key, videos, refused)
    summary.seconds = time.monotonic() - started
    print(summary, flush=True)
    unread = summary.failures[len(refused):]
    if mine and len(unread) == len(mine):
        raise FusionError(f"no video could be read, e.g. {unread[0][0]}: {unread[0][1]}")
    return summary
