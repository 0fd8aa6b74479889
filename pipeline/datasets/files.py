"""What every reader shares: reading annotation lines, safe paths, duplicates, missing videos."""
from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from flow.video import VIDEO_EXTENSIONS
from p3dbase.errors import shown
from pipeline.datasets.records import Dataset, VideoRecord
from pipeline.errors import DatasetError

log = logging.getLogger("pipeline.datasets")


def check_root(root: str, fmt: str) -> Path:
    if not root:
        raise DatasetError(f"dataset.root is not set (format {fmt}): set it to the folder the videos lie in")
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(f"dataset root {path} does not exist or is not a folder (format {fmt})")
    return path


def check_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{what} not found: {path}")
    return path


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of every non-blank line; CRLF and trailing spaces go."""
    try:
        text = check_file(path, "annotation file").read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def relative_path(text: str, where: str) -> PurePosixPath:
    """A listed path as a path under the dataset root; anything that could leave the root is refused."""
    posix = text.replace("\\", "/")
    path = PurePosixPath(posix)
    if path.is_absolute() or PureWindowsPath(text).drive or ".." in path.parts or not path.parts:
        raise DatasetError(f"{where}: path {text!r} escapes the dataset root (must be relative, no '..')")
    return path


def name_problem(name: str) -> str:
    """Why a file or folder name found on disk cannot name a video ("" when it can): it becomes the
    video id, a store path and a line in manifests and reports."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8 text: rename it"
    if "\\" in name:
        return "its name holds a backslash, which other tools read as a folder separator: rename it"
    if any(ord(c) < 32 for c in name):
        return "its name holds a control character: rename it"
    return ""


def file_problem(path: Path, root: Path) -> str:
    """Why `path` (which exists) must not be read as a video ("" when it may): nothing outside the
    dataset root is read, so a symbolic link leading out of it is refused, and special files (a
    FIFO would block the reader) are not videos."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, real_root]) != real_root:
        return f"a symbolic link to {shown(real)}, outside the dataset root {shown(real_root)}"
    mode = os.stat(real).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # rawframe folders are listed too
        return "not a regular file (a FIFO, socket or device)"
    return ""


def video_id_of(rel: PurePosixPath | str) -> str:
    """Relative path without a video extension (rawframe folders keep their full name)."""
    text = str(rel)
    stem, ext = os.path.splitext(text)  # as rel.with_suffix(""), at a tenth of its cost
    return stem if ext.lower() in VIDEO_EXTENSIONS and "/" not in ext and stem[-1:] not in ("", "/") else text


def parse_int(text: str, what: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DatasetError(f"{where}: {what} must be an integer, got {text!r}") from None


def index_videos(root: Path) -> dict[str, str]:
    """File stem -> '/'-separated path under root of every video under root, for formats whose layout
    varies (Kinetics, ActivityNet): a clip is found wherever the downloader put it. On a clash the
    first path in sorted order wins, with a warning. Strings, not pathlib: 650,000 clips in seconds."""
    found: dict[str, str] = {}
    top = os.path.join(root, "")
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        under = os.path.join(folder, "")[len(top):].replace(os.sep, "/")
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in VIDEO_EXTENSIONS or name.startswith("."):  # ._x.mp4: macOS metadata
                continue
            path = under + name
            if stem in found:
                log.warning("%s: %s and %s hold the same clip; using the first", root, found[stem], path)
                continue
            found[stem] = path
    return found


class UniqueIds:
    """Fails on the second listing of a video, naming both places."""

    def __init__(self) -> None:
        self.first: dict[str, str] = {}

    def add(self, key: str, where: str) -> None:
        if key in self.first:
            raise DatasetError(f"{where}: duplicate video {key!r} (first listed at {self.first[key]})")
        self.first[key] = where


@dataclass(frozen=True, slots=True)
class Entry:
    """One listed video before it is checked against the disk."""
    rel: PurePosixPath | str  # under root, '/'-separated (a str saves a parse per video at Kinetics scale)
    labels: tuple[int, ...]
    split: str
    where: str  # "file:line", for messages
    group: str | None = None


class _FileChecks:
    """`file_problem` for many paths under one root, each folder resolved once: 650,000 Kinetics clips
    take a few seconds instead of a realpath of every component of every file (bench/scale.py)."""

    def __init__(self, root: Path):
        self.root = root
        self.real_root = os.path.realpath(root)
        self.inside = self.real_root.rstrip(os.sep) + os.sep
        self.folders: dict[str, str] = {}

    def problem(self, path: Path) -> str | None:
        """None: nothing there; "": a video to read; else why it must not be read."""
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return None
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode):  # not a link itself: inside if its folder is
            parent = os.path.dirname(path)
            folder = self.folders.get(parent)
            if folder is None:
                folder = self.folders[parent] = os.path.realpath(parent)
            if folder == self.real_root or folder.startswith(self.inside):
                return ""
        if stat.S_ISLNK(mode) and not os.path.exists(path):
            return "a dangling symbolic link"
        return file_problem(path, self.root)


def build(fmt: str, root: Path, classes: list[str], entries: list[Entry], split: str, source: str,
          skipped: list[str] | None = None, refused: list[tuple[str, str]] | None = None) -> Dataset:
    """Records for the entries that exist under root; the others are reported and skipped, together
    with `skipped` (what the reader could not place itself: clips not found, unlabelled clips).
    Entries that exist but must not be read (`file_problem`: a link out of the root, a FIFO) join
    `refused` (path, reason), what the reader refused itself (odd names); a dangling link is refused
    too, not taken for a missing video.

    Nothing found at all almost always means a wrong root, so that is an error, not a warning."""
    refused = list(refused or [])
    checks = _FileChecks(root)
    paths = [root / e.rel for e in entries]
    found = [checks.problem(path) for path in paths]
    if entries and all(p is None for p in found) and not refused:
        raise DatasetError(f"none of the {len(entries)} videos listed in {source} exist under {shown(root)} "
                           f"(e.g. {shown(root / entries[0].rel)}): is dataset.root right?")
    missing = list(skipped or [])
    videos = []
    for entry, path, problem in zip(entries, paths, found, strict=True):
        if problem:
            refused.append((shown(entry.rel), problem))
        elif problem is None:
            missing.append(str(entry.rel))
        else:
            videos.append(VideoRecord(video_id_of(entry.rel), path, entry.labels[0], entry.labels,
                                      classes[entry.labels[0]], entry.split, entry.group))
    if missing:
        log.warning("%s: %d of %d listed videos skipped (missing under %s, or unlabelled), e.g. %s",
                    source, len(missing), len(videos) + len(missing), root, ", ".join(missing[:5]))
    if refused:
        log.warning("%s: %d video(s) refused, e.g. %s", shown(source), len(refused),
                    "; ".join(f"{path}: {why}" for path, why in refused[:3]))
    return Dataset(fmt, root, classes, videos, split, missing, refused=refused)
