"""The store's index of finished videos: what each was made from, so that a re-run opens nothing.

One entry per video: its state ("done", "failed", or "damaged" as `verify` found it), what it was
made from (the store settings' digest, the source's size and mtime, its path), the stored entry's own
size and mtime (a pack that changed or vanished since is noticed by one `stat`), and the counts and
timing the manifest shows. A re-run of a finished store reads this index and stats the sources and
the packs: it reads no image, not even a pack's header.

On disk: `<store>/index/main.jsonl` plus segments `<store>/index/seg-<host>-<pid>-<n>.jsonl`, one
JSON array per line. Every file is written whole through p3dbase.atomic (a reader sees the old file
or the new one), and each writing process (a run, a shard, `verify`) writes only its own segments,
so shards running at once on a shared disk never write the same file. The latest entry of a video
wins (`_merge` says how "latest" is decided without trusting clocks). A segment is never changed
once written, so `compact` (at the
end of every run that wrote something) may fold the main file and every segment into a new main
file, then delete those segments: killed between the two, the next compaction folds the same entries
again, to the same result. While it lives, a writer holds an flock on its `.writer-<token>.lock`, so
that only the half-written files of writers that are gone are deleted.

A line that does not parse, has a field of the wrong type (a file truncated or edited by hand) or
was recorded in the future (a clock far ahead) is reported with its file and line and skipped: the
videos it listed fall back to their packs, whose headers say what they were made from (flow.stage),
so nothing is lost.
"""
from __future__ import annotations

import fcntl
import itertools
import json
import math
import operator
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from flow.errors import FlowError
from p3dbase.atomic import TEMP_MARKER, write_bytes, writer_token
from p3dbase.bulk import no_cycle_collection
from p3dbase.errors import NotRegularFileError, read_regular, shown

INDEX_DIR = "index"
MAIN_FILE = "main.jsonl"
SEGMENT_PREFIX = "seg-"
WRITER_LOCK_PREFIX = ".writer-"
STATES = ("done", "failed", "damaged")
# An entry recorded further ahead of this machine's clock than this is a damaged line, not a record: the
# clocks of machines sharing a disk differ by seconds (NTP) or minutes (none); a day more is an edit or a
# clock set wrong, whose entry would otherwise outrank every later record of its video (see _merge).
FUTURE_SLACK_NS = 24 * 3600 * 10**9
_writers = itertools.count()


@dataclass(frozen=True, slots=True)
class Origin:
    """What a stored video was made from: the store settings' digest and the source's size and
    mtime (a rawframes folder: the folder's own, which change when frames are added or removed)."""

    settings: str
    size: int
    mtime_ns: int

    def as_dict(self) -> dict[str, object]:
        return {"settings": self.settings, "size": self.size, "mtime_ns": self.mtime_ns}

    @classmethod
    def from_dict(cls, data: object) -> Origin | None:
        try:
            return cls(str(data["settings"]), int(data["size"]), int(data["mtime_ns"]))  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            return None


def source_origin(path: Path, settings: str) -> Origin | None:
    """The origin of a source as it is now; None when it cannot be stat'ed (its run fails it)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return Origin(settings, st.st_size, st.st_mtime_ns)


def entry_stat(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of a stored video (its pack, or its mmaction folder); None when absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class IndexEntry(NamedTuple):
    """One line of the index. `stored` is (size, mtime_ns) of the video's pack or folder as written.
    A named tuple, not a dataclass: 650,000 of them are built in a second and take half the memory."""

    video_id: str
    state: str
    settings: str = ""
    source_size: int = 0
    source_mtime_ns: int = 0
    stored_size: int = 0
    stored_mtime_ns: int = 0
    frames: int = 0
    flows: int = 0
    declared_frames: int = 0
    seconds: str = ""
    recorded_ns: int = 0
    source: str = ""  # the source's path, as shown in messages
    note: str = ""  # why a video is "failed" or "damaged"

    @property
    def origin(self) -> Origin:
        return Origin(self.settings, self.source_size, self.source_mtime_ns)

    def line(self) -> str:
        return json.dumps(tuple(self), ensure_ascii=True, separators=(",", ":"))


_FIELDS = len(IndexEntry._fields)
_intern = sys.intern


_new_tuple = tuple.__new__
_STATES = {state: state for state in STATES}
_TYPES = [str, str, str, int, int, int, int, int, int, int, str, int, str, str]  # IndexEntry's fields, exactly
assert len(_TYPES) == _FIELDS


def _entry(row: object, horizon: float) -> IndexEntry | None:
    """An entry of a parsed line; None when it has the wrong shape, a field of the wrong type (a
    string for a count, a float, a bool: a hand edit that verify would later blame on the video), a
    negative size or count (times may be: files dated before 1970), an unknown state, or a time after
    `horizon` (see FUTURE_SLACK_NS)."""
    # The types by one C-level map: 650,000 lines are read on every re-run (0.4 us a line).
    if (type(row) is not list or [*map(type, row)] != _TYPES or row[3] < 0 or row[5] < 0 or row[7] < 0
            or row[8] < 0 or row[9] < 0 or not 0 <= row[11] <= horizon):
        return None
    state = _STATES.get(row[1])
    if state is None:
        return None
    row[1], row[2] = state, _intern(row[2])  # few distinct values
    return _new_tuple(IndexEntry, row)  # IndexEntry._make without its checks: the length is known


def _horizon() -> int:
    """The latest `recorded_ns` taken as a record (later: a damaged line)."""
    return time.time_ns() + FUTURE_SLACK_NS


@dataclass
class IndexRead:
    """The merged index: the latest entry of each video, and one line per damaged line found."""

    entries: dict[str, IndexEntry]
    problems: list[str]
    exists: bool  # False for a store written before it kept an index


class StoreIndex:
    """The index of the store at `root` (see the module docstring)."""

    def __init__(self, root: Path):
        self.dir = Path(root) / INDEX_DIR

    def _segments(self) -> list[Path]:
        try:
            names = [e.name for e in os.scandir(self.dir)]
        except FileNotFoundError:
            return []
        return sorted(self.dir / n for n in names if n.startswith(SEGMENT_PREFIX) and n.endswith(".jsonl"))

    def read(self) -> IndexRead:
        """Every video's latest entry. Segments are read before the main file: a segment that a
        compaction folds away meanwhile is then in the main file read after it."""
        with no_cycle_collection():  # 650,000 entries: no cycles among them
            return self._read()

    def _read(self) -> IndexRead:
        if not self.dir.is_dir():
            if os.path.lexists(self.dir):
                raise self._not_a_folder()
            return IndexRead({}, [], False)
        entries: dict[str, IndexEntry] = {}
        problems: list[str] = []
        texts = [(path, data) for path in self._segments() if (data := self._read_file(path)) is not None]
        main = self.dir / MAIN_FILE
        data = self._read_file(main)
        if data is not None:
            texts.insert(0, (main, data))
        for path, data in texts:
            _merge(entries, _parse(path, data, problems))
        return IndexRead(entries, problems, True)

    def _not_a_folder(self) -> FlowError:
        return FlowError(f"{shown(self.dir)}: not a folder, where the store keeps its index of finished videos: "
                         "move it out of the store and re-run (the index is rebuilt from the stored videos)")

    def _read_file(self, path: Path) -> bytes | None:
        """The bytes of an index file; None when it is gone (a segment folded by a compaction meanwhile).
        Opened without blocking and read only when it is a regular file: a FIFO in its place made every
        `flow` and `verify` wait for a writer for ever."""
        try:
            return read_regular(path)
        except FileNotFoundError:
            return None
        except (IsADirectoryError, NotRegularFileError) as e:
            what = "a folder" if isinstance(e, IsADirectoryError) else "not a regular file"
            raise FlowError(f"{shown(path)}: {what}, where the store's index keeps a file: move it out of "
                            f"{shown(self.dir)} and re-run (its videos are checked from the stored videos)") from None

    def _make_folder(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file (or a dangling link) where the folder belongs
            raise self._not_a_folder() from None

    def writer(self) -> IndexWriter:
        return IndexWriter(self)

    def compact(self, own: str = "", *, rewrite: bool = False) -> None:
        """Fold the main file and every segment into a new main file (one compaction at a time;
        `own` is the calling writer's token). What writers that are gone left (their lock files,
        half-written segments) is deleted; a live writer's are not. Damaged lines are left out;
        `rewrite`: also when there is no segment to fold (a read found damaged lines: they are named
        once, not on every run)."""
        self._make_folder()
        fd = os.open(self.dir, os.O_RDONLY)  # the folder's own flock: no lock file to leave behind
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another process compacts right now: its result includes ours or the next does
            alive = {t: t != own and _writer_alive(self.dir, t) for t in _writers_in(self.dir)}
            for name in os.listdir(self.dir):
                token = _temp_writer(name)
                if token is not None and not alive.get(token, False):
                    (self.dir / name).unlink(missing_ok=True)
            folded = self._segments()  # written once, never changed: safe to fold even from a live writer
            if not folded and not rewrite:
                return
            entries: dict[str, IndexEntry] = {}
            problems: list[str] = []
            for path in [self.dir / MAIN_FILE, *folded]:
                data = self._read_file(path)
                if data is not None:
                    _merge(entries, _parse(path, data, problems))
            write_bytes(self.dir / MAIN_FILE, _format(entries[k] for k in sorted(entries)))
            for path in folded:
                path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _merge(entries: dict[str, IndexEntry], new: list[IndexEntry]) -> None:
    """Each video's latest entry of `entries` and `new`, decided so that no clock can hide damage:

    * A "damaged" mark and a "done" entry of the same stored file (its size and mtime) describe the
      same bytes: the mark wins whatever their times. "done" only says what a file was made from (a
      re-run that re-indexes a pack reads no image), the mark says that those very bytes are bad; a
      redone video is a new file, with another mtime, and its "done" entry is not about those bytes.
    * Otherwise the larger `recorded_ns` wins (the later one read on a tie). Writers stamp an entry
      after the one they read for that video (IndexWriter.add's `after`: a Lamport clock), so a record
      made after reading an entry outranks it even when that entry came from a clock running ahead;
      entries more than FUTURE_SLACK_NS ahead are not read at all (_parse).

    Shards (the documented concurrent use) write disjoint videos, so they never compete here. Two runs
    on one video take turns under its lock and both record the file they found; verify and a run at
    once: a mark of the file verify read beats a "done" of that file, and against a redone file the
    later record wins, which at worst redoes a video once more. A merge is order-independent apart
    from ties, so compaction (which folds the same entries) gives what a reader gives."""
    if not entries:  # the first file read: one dict at C speed when it names every video once (a compacted main file)
        entries.update(zip(map(_video_id, new), new, strict=True))
        if len(entries) == len(new):
            return
        entries.clear()
    for entry in new:
        old = entries.get(entry.video_id)
        if old is None:
            entries[entry.video_id] = entry
        elif entry.state != old.state and entry.state in _MARKED and old.state in _MARKED \
                and entry.stored_size == old.stored_size and entry.stored_mtime_ns == old.stored_mtime_ns:
            if entry.state == "damaged":
                entries[entry.video_id] = entry
        elif entry.recorded_ns >= old.recorded_ns:
            entries[entry.video_id] = entry


_MARKED = ("done", "damaged")  # the states of which "damaged" outranks "done" for the same stored file


_video_id = operator.itemgetter(0)


def _parse(path: Path, data: bytes, problems: list[str]) -> list[IndexEntry]:
    text = data.decode("ascii", errors="replace")
    del data
    lines = text.splitlines()
    horizon = _horizon()
    entries: list[IndexEntry | None] = []
    try:  # one parse per 50,000 lines: fast, and the text is not copied whole again
        for k in range(0, len(lines), 50_000):
            entries += map(_entry, json.loads("[" + ",".join(lines[k: k + 50_000]) + "]"), itertools.repeat(horizon))
        if None not in entries and text.endswith("\n"):
            return entries  # type: ignore[return-value]
    except (ValueError, RecursionError):  # RecursionError: json recurses per nesting level ([[[[...)
        pass
    del entries
    good = []  # damaged somewhere: line by line, naming each bad line
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row = None
        entry = _entry(row, horizon)
        if entry is None or (number == len(lines) and not text.endswith("\n")):
            ahead = entry is None and _entry(row, math.inf) is not None  # whole, but from the future
            what = "index entry recorded in the future (a clock far ahead?)" if ahead else "damaged index entry"
            problems.append(f"{shown(path)}, line {number}: {what}, skipped (its video is checked from its pack)")
        else:
            good.append(entry)
    return good


def _format(entries: Iterable[IndexEntry]) -> bytes:
    return "".join(e.line() + "\n" for e in entries).encode("ascii")


def _writer_of(segment: Path) -> str:
    """The writer token (`host-pid`) of a segment `seg-<host>-<pid>-<n>.jsonl`."""
    return segment.name[len(SEGMENT_PREFIX):-len(".jsonl")].rpartition("-")[0]


def _writers_in(folder: Path) -> set[str]:
    """Tokens of the writers that left segments, lock files or temporary files in `folder`."""
    tokens = set()
    for name in os.listdir(folder):
        if name.startswith(SEGMENT_PREFIX) and name.endswith(".jsonl"):
            tokens.add(_writer_of(folder / name))
        elif name.startswith(WRITER_LOCK_PREFIX) and name.endswith(".lock"):
            tokens.add(name[len(WRITER_LOCK_PREFIX):-len(".lock")])
    return tokens


def _temp_writer(name: str) -> str | None:
    """For a file that dead writers may leave (a writer's lock file, a half-written segment, a
    half-written main file): whose it is (a main file's: "", as only compactions write it)."""
    if name.startswith(WRITER_LOCK_PREFIX) and name.endswith(".lock"):
        return name[len(WRITER_LOCK_PREFIX):-len(".lock")]
    if name.startswith(".") and TEMP_MARKER in name:
        base = name[1:].partition(TEMP_MARKER)[0]
        if base.startswith(SEGMENT_PREFIX):
            return _writer_of(Path(base))
        if base == MAIN_FILE:
            return ""
    return None


def _writer_alive(folder: Path, token: str) -> bool:
    try:
        fd = os.open(folder / f"{WRITER_LOCK_PREFIX}{token}.lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class IndexWriter:
    """This process's additions to the index: `add` entries, `flush` them as a new segment (written
    atomically), `close` flushes and compacts. Use as a context manager."""

    def __init__(self, index: StoreIndex):
        self.index = index
        self.pending: list[IndexEntry] = []
        self._count = 0
        self.token = f"{writer_token()}-w{next(_writers)}"  # two writers of one process do not share a lock
        self._lock_path = index.dir / f"{WRITER_LOCK_PREFIX}{self.token}.lock"
        self._fd = -1  # taken at the first flush: a run that records nothing writes nothing

    def _take_lock(self) -> None:
        if self._fd < 0:
            self.index._make_folder()
            self._fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # ours alone

    def add(self, entry: IndexEntry, after: int = 0) -> None:
        """Record `entry`; unless it carries its own time, it is stamped now, and after `after`: the
        `recorded_ns` of the video's entry the caller read and acts upon, which it must outrank even
        when a clock running ahead wrote it (see _merge)."""
        if not entry.recorded_ns:
            entry = entry._replace(recorded_ns=max(time.time_ns(), after + 1))
        self.pending.append(entry)

    def flush(self) -> None:
        """Write what was added since the last flush as one new segment (a full disk raises
        p3dbase.atomic.DiskFullError; the entries stay pending)."""
        if not self.pending:
            return
        self._take_lock()
        name = f"{SEGMENT_PREFIX}{self.token}-{time.time_ns()}{self._count:06d}.jsonl"
        write_bytes(self.index.dir / name, _format(self.pending))
        self._count += 1
        self.pending = []

    def close(self, *, compact: bool = True) -> None:
        try:
            self.flush()
            if compact and self._count:
                self.index.compact(own=self.token)
        finally:
            if self._fd >= 0:
                try:
                    self._lock_path.unlink(missing_ok=True)
                finally:
                    os.close(self._fd)
                    self._fd = -1

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(compact=exc_type is None)
