"""What every reader shares: reading annotation lines, safe paths, duplicates, missing videos."""
from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable
from operator import attrgetter
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import NamedTuple

from flow.video import VIDEO_EXTENSIONS
from p3dbase import errors
from p3dbase.errors import NOT_REGULAR, brief, excerpt, shown, text_problem
from pipeline.datasets.records import Dataset, VideoRecord
from pipeline.errors import DatasetError

log = logging.getLogger("pipeline.datasets")
_EXTENSIONS = frozenset(VIDEO_EXTENSIONS)


def check_root(root: str, fmt: str) -> Path:
    if not root:
        raise DatasetError(f"dataset.root is not set (format {fmt}): set it to the folder the videos lie in")
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(f"dataset root {path} does not exist or is not a folder (format {fmt})")
    return path


def check_file(path: Path, what: str) -> Path:
    """`path` when it is a file to read; a FIFO named like one would block the reader for ever."""
    if not path.is_file():
        if not path.exists():
            raise DatasetError(f"{what} not found: {shown(path)}")
        raise DatasetError(f"{what} {shown(path)}: {errors.file_problem(path, what)}")
    return path


def decode(data: bytes, path: Path) -> str:
    """The UTF-8 text of an annotation file (a byte order mark dropped); one that is not names the
    line and the byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = err.object.count(b"\n", 0, err.start) + 1
        at = len(data) - len(err.object) + err.start  # in the file, byte order mark and all
        raise DatasetError(f"{shown(path)}:{line}: not UTF-8 text ({err.reason} at byte {at})") from None


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of every non-blank line; CRLF and trailing spaces go. Lines
    end at "\n" alone: str.splitlines also ends them at a form feed, \x1c-\x1e, \x85 and U+2028, and
    every later error named the wrong line (the control character is refused in its own line now)."""
    text = decode(check_file(path, "annotation file").read_bytes(), path)
    return [(n, line.strip()) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def read_list(path: Path, what: str = "videos") -> list[tuple[int, str]]:
    """read_lines of a file that must list something: an empty split list or label map is a file
    truncated or written by a failed script, never a split with nothing in it."""
    lines = read_lines(path)
    if not lines:
        raise DatasetError(f"{path}: lists no {what} (the file is empty or blank)")
    return lines


def relative_path(text: str, where: str) -> PurePosixPath:
    """A listed path as a path under the dataset root; anything that could leave the root is refused,
    and so is a control character (a NUL cannot name a file; the path becomes a video id and a line
    in reports)."""
    posix = text.replace("\\", "/")
    path = PurePosixPath(posix)
    if path.is_absolute() or PureWindowsPath(text).drive or ".." in path.parts or not path.parts:
        raise DatasetError(f"{where}: path {excerpt(text)} escapes the dataset root (must be relative, no '..')")
    problem = text_problem(text)
    if problem:
        raise DatasetError(f"{where}: path {excerpt(text)} {problem}")
    return path


def name_problem(name: str) -> str:
    """Why a file or folder name found on disk cannot name a video ("" when it can): it becomes the
    video id, a store path and a line in manifests and reports."""
    problem = text_problem(name)
    if not problem and "\\" in name:
        problem = "holds a backslash, which other tools read as a folder separator"
    return f"its name {problem}: rename it" if problem else ""


def file_problem(path: Path, root: Path) -> str:
    """Why `path` (which exists) must not be read as a video ("" when it may): nothing outside the
    dataset root is read, so a symbolic link leading out of it is refused, and special files (a
    FIFO would block the reader) are not videos."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, real_root]) != real_root:
        return f"a symbolic link to {shown(real)}, outside the dataset root {shown(real_root)}"
    mode = os.stat(real).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # rawframe folders are listed too
        return NOT_REGULAR
    return ""


def video_id_of(rel: PurePosixPath | str) -> str:
    """Relative path without a video extension (rawframe folders keep their full name)."""
    text = rel if type(rel) is str else str(rel)
    # As os.path.splitext, at a third of its cost (650,000 Kinetics clips): the extension is from the
    # last dot on, when the file name holds something other than dots before it.
    dot = text.rfind(".")
    if dot < 0 or text[dot:].lower() not in _EXTENSIONS:  # a dot in a folder's name gives no extension
        return text
    head = text[:dot]
    return head if head[head.rfind("/") + 1:].strip(".") else text


_INTEGER = re.compile(r"[+-]?[0-9]+")


def parse_int(text: str, what: str, where: str) -> int:
    """An integer written plainly, as annotation files write them ("12", "-1", "007"): int() would also
    take "1_0" (10), spaces around it and other scripts' digits (Arabic-Indic, Devanagari, ...)."""
    if not _INTEGER.fullmatch(text):
        raise DatasetError(f"{where}: {what} must be an integer, got {excerpt(text)}")
    if len(text.lstrip("+-0")) > 18:  # beyond any id or label (int() refuses 4,300 digits at all)
        raise DatasetError(f"{where}: {what} is too large, got {excerpt(text)}")
    return int(text)


def index_videos(root: Path) -> dict[str, str]:
    """File stem -> '/'-separated path under root of every video under root, for formats whose layout
    varies (Kinetics, ActivityNet): a clip is found wherever the downloader put it. On a clash the
    first path in sorted order wins, with a warning."""
    return walk_videos(root)[0]


def walk_videos(root: Path) -> tuple[dict[str, str], set[str]]:
    """`index_videos`, and the paths of those found that are not plain files (links, FIFOs): what
    `build` must look at closer. The walk sees each entry's type in its folder listing (d_type), so
    the plain files, all in folders reached without following a link, need no `stat` of their own:
    650,000 Kinetics clips in about a second. Folders are visited as os.walk visits them (sorted,
    hidden ones and links to folders skipped), files before subfolders."""
    found: dict[str, str] = {}
    irregular: set[str] = set()
    stack = [(os.fspath(root), "")]
    while stack:
        folder, under = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=attrgetter("name"))
        except OSError:  # an unreadable folder is skipped, as os.walk skips it
            continue
        subfolders = []
        for entry in entries:
            name = entry.name
            if _is_dir(entry):
                if not name.startswith(".") and not entry.is_symlink():
                    subfolders.append((entry.path, under + name + "/"))
                continue
            stem, dot, ext = name.rpartition(".")
            if not dot or name.startswith(".") or "." + ext.lower() not in _EXTENSIONS:  # ._x.mp4: macOS
                continue
            path = under + name
            if stem in found:
                log.warning("%s: %s and %s hold the same clip; using the first", root, found[stem], path)
                continue
            found[stem] = path
            if not entry.is_file(follow_symlinks=False):
                irregular.add(path)
        stack.extend(reversed(subfolders))
    return found, irregular


def _is_dir(entry: os.DirEntry) -> bool:
    """Whether os.walk takes the entry for a folder: a link to one is, a dangling link is not."""
    try:
        return entry.is_dir()
    except OSError:
        return False


class UniqueIds:
    """Fails on the second listing of a video, naming both places."""

    def __init__(self) -> None:
        self.first: dict[str, str] = {}

    def add(self, key: str, where: str) -> None:
        if key in self.first:
            raise DatasetError(f"{where}: duplicate video {key!r} (first listed at {self.first[key]})")
        self.first[key] = where


class Entry(NamedTuple):
    """One listed video before it is checked against the disk (a named tuple: 650,000 Kinetics rows
    are made at a third of a frozen dataclass's cost)."""
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


class _ChildPaths:
    """root / rel for many '/'-separated rels: each folder's Path is made once, and each file's from
    it by Path's own child constructor (what Path.iterdir uses), which parses nothing: a fifth of the
    cost of root / rel, seconds at 650,000 Kinetics clips."""

    def __init__(self, root: Path):
        self.root = root
        self.folders: dict[str, Callable[[str], Path]] = {}

    def __call__(self, rel: PurePosixPath | str) -> Path:
        if not isinstance(rel, str):
            return self.root / rel
        folder, _, name = rel.rpartition("/")
        if name in ("", ".", ".."):  # not a plain last part: parsed as a whole
            return self.root / rel
        child = self.folders.get(folder)
        if child is None:
            parent = self.root / folder if folder else self.root
            child = self.folders[folder] = getattr(parent, "_make_child_relpath", parent.joinpath)
        return child(name)


NO_LABEL = " (no label)"  # how a reader marks a skipped video it found no label for



def build(fmt: str, root: Path, classes: list[str], entries: list[Entry], split: str, source: str,
          *, skipped: list[str] | None = None, refused: list[tuple[str, str]] | None = None,
          irregular: set[str] | None = None, absent: list[Entry] | None = None) -> Dataset:
    """Records for the entries that exist under root; the others are reported and skipped, together
    with `skipped` (what the reader could not place itself: clips not found, unlabelled clips).
    Entries that exist but must not be read (`file_problem`: a link out of the root, a FIFO) join
    `refused` (path, reason), what the reader refused itself (odd names); a dangling link is refused
    too, not taken for a missing video.

    `irregular`, when the entries' paths were found by `walk_videos`: those of them that are not plain
    files. Only these are checked on disk; the others are plain files inside the root, as the walk saw.

    `absent`: labelled entries the reader looked up in its own index of the root and did not find
    (Kinetics, ActivityNet; `rel` their name without extension): missing, and kept as records with
    their role and labels (Dataset.absent), as build's own missing entries are.

    Nothing found at all almost always means a wrong root, so that is an error, not a warning."""
    refused = list(refused or [])
    checks = _FileChecks(root)
    paths = list(map(_ChildPaths(root), [e.rel for e in entries]))
    if irregular is None:
        found = [checks.problem(path) for path in paths]
    else:
        found = [checks.problem(path) if e.rel in irregular else "" for e, path in zip(entries, paths, strict=True)]
    if entries and all(p is None for p in found) and not refused:
        raise DatasetError(f"none of the {len(entries)} videos listed in {source} exist under {shown(root)} "
                           f"(e.g. {shown(root / entries[0].rel)}): is dataset.root right?")
    missing = list(skipped or [])
    def record(entry: Entry, path: Path) -> VideoRecord:
        return VideoRecord(video_id_of(entry.rel), path, entry.labels[0], entry.labels, classes[entry.labels[0]],
                           entry.split, entry.group)

    videos: list[VideoRecord] = []
    gone: list[VideoRecord] = []
    for entry, path, problem in zip(entries, paths, found, strict=True):
        if problem:
            refused.append((shown(entry.rel), problem))
        elif problem is None:
            missing.append(str(entry.rel))
            gone.append(record(entry, path))
        else:
            videos.append(record(entry, path))
    for entry in absent or ():
        missing.append(str(entry.rel))
        gone.append(record(entry, root / entry.rel))
    # Test videos without a label (Kinetics', ActivityNet's: their labels are not published) are expected;
    # said apart from videos missing under the root, which are worth a look.
    unlabelled = [m for m in missing if m.endswith(NO_LABEL)]
    not_found = [m for m in missing if not m.endswith(NO_LABEL)]
    listed = len(videos) + len(missing)
    if not_found:
        log.warning("%s: %d of %d listed videos skipped: not found under %s, e.g. %s", source, len(not_found),
                    listed, root, ", ".join(brief(m, 100) for m in not_found[:5]))  # a 100,000-character path
    if unlabelled:
        log.warning("%s: %d of %d listed videos have no label: not used (as expected of test videos, whose labels "
                    "are not published), e.g. %s", source, len(unlabelled), listed,
                    ", ".join(brief(m, 100) for m in unlabelled[:3]))
    if refused:
        log.warning("%s: %d video(s) refused, e.g. %s", shown(source), len(refused),
                    "; ".join(f"{path}: {why}" for path, why in refused[:3]))
    return Dataset(fmt, root, classes, videos, split, missing, refused=refused, absent=gone)
