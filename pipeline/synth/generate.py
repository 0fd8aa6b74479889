"""Write SynthActions to disk in UCF101's layout, resumably (see docs/synth.md)."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from flow.formats import write_flo
from p3dbase.atomic import atomic_path, disk_full, write_text
from p3dbase.errors import shown
from p3dbase.overwrite import output_folder
from p3dbase.progress import progress_bar
from pipeline.errors import PipelineError
from pipeline.synth.config import SynthConfig
from pipeline.synth.render import render_clip

MANIFEST = "synth.json"
LOG = "synth.log"  # the run's own log (p3dbase.runlog), which the CLI starts before the stage
OUTPUTS = ("videos", "flow_gt", "annotations")
# Free bytes below which a video that did not come out whole is put down to a full disk.
DISK_MARGIN = 16 << 20


@dataclass
class SynthSummary:
    root: Path
    classes: list[str]
    videos: int
    generated: int
    skipped: int  # already complete from an earlier run
    seconds: float

    def __str__(self) -> str:
        return (f"SynthActions: {self.videos} videos in {len(self.classes)} classes at {self.root} "
                f"({self.generated} generated, {self.skipped} already complete) in {self.seconds:.1f} s")


def video_name(class_name: str, group: int, clip: int) -> str:
    return f"v_{class_name}_g{group:02d}_c{clip:02d}"


def generate(cfg: SynthConfig, out_root: Path, *, force: bool = False) -> SynthSummary:
    """Write every video, its ground-truth flow and the annotations under out_root.

    A video whose .avi exists is complete (it is renamed into place last) and is not redone, so a killed
    run resumes. force=True regenerates everything."""
    start = time.perf_counter()
    try:
        cfg.validate()
    except ValueError as err:
        raise PipelineError(f"synth.{err}") from None
    out_root = Path(out_root)
    _claim(out_root, cfg, force)
    classes = cfg.class_names()
    jobs = [(c, g, k) for c in range(len(classes)) for g in range(1, cfg.groups + 1)
            for k in range(1, cfg.clips_per_group + 1)]
    generated = 0
    for class_index, group, clip in progress_bar(jobs, desc="synth", unit="video"):
        name = video_name(classes[class_index], group, clip)
        video = out_root / "videos" / classes[class_index] / f"{name}.avi"
        if video.is_file() and video.stat().st_size > 0:  # 0 bytes: left by a version that did not read back
            continue
        rendered = render_clip(cfg, class_index, group, clip)
        if cfg.write_flow:
            _write_flows(out_root / "flow_gt" / classes[class_index] / name, rendered.flow)
        _write_video(video, rendered.frames, cfg)
        generated += 1
    _write_annotations(out_root / "annotations", cfg, classes)
    for leftover in out_root.glob("*/*/.*.tmp*"):  # from a run killed mid-write, whose clip is done now
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    summary = SynthSummary(out_root, classes, len(jobs), generated, len(jobs) - generated,
                           time.perf_counter() - start)
    tqdm.write(str(summary))
    return summary


def foreign_folder(out_root: Path) -> bool:
    """A folder with something in it that no SynthActions run wrote (no synth.json): never written
    into, its own log included (pipeline.cli.stage_log asks)."""
    return (out_root.is_dir() and not (out_root / MANIFEST).is_file()
            and any(p.name not in ("config.toml", LOG) for p in out_root.iterdir()))


def _claim(out_root: Path, cfg: SynthConfig, force: bool) -> None:
    """Refuse to mix videos of two configs in one folder, or to write into a folder that is not ours."""
    manifest = out_root / MANIFEST
    settings = dataclasses.asdict(cfg)
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text(encoding="utf-8")).get("config", {})
            if not isinstance(old, dict):
                raise ValueError("'config' is not a table")
        except (ValueError, AttributeError) as e:  # not UTF-8, not JSON, not the object generate writes
            if not force:
                raise PipelineError(f"{shown(manifest)}: damaged, not the {MANIFEST} a SynthActions run writes "
                                    f"({e}): regenerate the set with --force, or choose another dataset.root") from None
            old = {}  # --force regenerates every video whatever it says
        changed = [key for key in settings if old.get(key) != settings[key]]
        if changed and not force:
            raise PipelineError(f"{out_root} holds SynthActions made with other settings "
                                f"({', '.join('synth.' + k for k in changed)}): regenerate it with --force, "
                                "or choose another dataset.root")
    elif out_root.exists() and not out_root.is_dir():
        raise PipelineError(f"dataset.root {out_root} is a file: name the folder SynthActions is written to")
    elif foreign_folder(out_root):
        raise PipelineError(f"{out_root} is not empty and holds no SynthActions ({MANIFEST}): refusing to "
                            "write into it; choose a new folder for dataset.root")
    if force:
        for sub in OUTPUTS:
            shutil.rmtree(out_root / sub, ignore_errors=True)
    output_folder(out_root, "dataset.root")
    _write_text(manifest, json.dumps({"format": "SynthActions", "config": settings}, indent=1) + "\n")


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text)  # newlines as given: CRLF stays CRLF


def _write_flows(folder: Path, flow: np.ndarray) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder) as tmp:  # replaces a folder left by a run killed before its video was written
        tmp.mkdir()
        for i, pair in enumerate(flow, 1):  # flow_00001.flo: frame 1 -> 2, 1-based like mmaction
            write_flo(tmp / f"flow_{i:05d}.flo", pair)


def _write_video(path: Path, frames: np.ndarray, cfg: SynthConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    fourcc = cv2.VideoWriter_fourcc(*cfg.codec)
    with atomic_path(path, keep_suffix=True) as tmp:  # keeps .avi: OpenCV picks the container by it
        if cfg.codec == "MJPG":  # OpenCV's own MJPEG writer honours a quality setting; FFmpeg's does not
            writer = cv2.VideoWriter(str(tmp), cv2.CAP_OPENCV_MJPEG, fourcc, cfg.fps, (width, height))
            writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 100)
        else:
            writer = cv2.VideoWriter(str(tmp), fourcc, cfg.fps, (width, height))
        if not writer.isOpened():
            raise PipelineError(f"synth.codec: OpenCV {cv2.__version__} cannot write {cfg.codec!r} to {path}; "
                                "use FFV1 (lossless) or MJPG")
        for frame in frames:
            writer.write(frame)
        writer.release()
        check_written_video(tmp, path, len(frames))


def check_written_video(written: Path, path: Path, frames: int) -> None:
    """Read back what a cv2.VideoWriter wrote to `written` (the temporary name of `path`): OpenCV's
    writer fails silently (a full disk leaves a 0-byte or truncated file), so a video that does not
    decode to its `frames` frames is an error here, before it gets its final name. DiskFullError
    when the disk is (nearly) full, PipelineError otherwise."""
    got = 0
    capture = cv2.VideoCapture(str(written))
    try:
        while capture.isOpened() and capture.grab():
            got += 1
    finally:
        capture.release()
    if got == frames:
        return
    size = written.stat().st_size if written.exists() else 0
    if shutil.disk_usage(written.parent).free < DISK_MARGIN:
        raise disk_full(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    raise PipelineError(f"{path}: OpenCV wrote a video that decodes to {got} of its {frames} frames ({size} bytes); "
                        "nothing was kept under its name: re-run to write it again")


def _write_annotations(folder: Path, cfg: SynthConfig, classes: list[str]) -> None:
    """classInd.txt and the three splits exactly as UCF101 writes them: CRLF, 1-based class ids,
    labels in the train lists only; a split tests whole groups."""
    _write_text(folder / "classInd.txt", "".join(f"{i} {name}\r\n" for i, name in enumerate(classes, 1)))
    for split in (1, 2, 3):
        held_out = set(cfg.test_groups(split))
        train, test = [], []
        for label, name in enumerate(classes, 1):
            for group in range(1, cfg.groups + 1):
                for clip in range(1, cfg.clips_per_group + 1):
                    path = f"{name}/{video_name(name, group, clip)}.avi"
                    if group in held_out:
                        test.append(path)
                    else:
                        train.append(f"{path} {label}")
        _write_text(folder / f"trainlist0{split}.txt", "".join(f"{line}\r\n" for line in train))
        _write_text(folder / f"testlist0{split}.txt", "".join(f"{line}\r\n" for line in test))
