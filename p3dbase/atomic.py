"""The one way every package writes a file that a reader (or a re-run) may open at any moment.

A file is written under a hidden temporary name in its own directory (same file system, so the
rename is atomic), flushed to disk, then renamed over the final name: a reader sees the old file or
the new one, never half of one. On any error the temporary file is removed, and a full disk
(ENOSPC, EDQUOT) becomes one `DiskFullError` naming the file instead of a library traceback.

Temporary names are `.<name>.tmp-<host>-<pid>[-<n>]`: hidden (so listings of finished work skip
them), unique per machine and process sharing a directory, and recognisable by `.tmp-` so that a
re-run can delete what a killed writer left (`flow.store.Store.clean_stale` uses the same rule). A
name within TAIL_ROOM bytes of the file system's limit gives way to its start and a hash
(`temp_prefix`), so that the temporary name fits wherever the final one does.
"""
from __future__ import annotations

import errno
import functools
import glob
import hashlib
import itertools
import os
import re
import shutil
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from p3dbase.errors import P3DError, brief, path_is

TEMP_MARKER = ".tmp-"
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_counter = itertools.count()


class DiskFullError(P3DError, OSError):
    """No space (or quota) left while writing a file. A P3DError, so that the CLI prints it as one
    line and exits with 2 whichever stage hit it; an OSError, so that `errno` still says ENOSPC."""


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in _DISK_FULL


def disk_full(path: Path | str, err: OSError) -> DiskFullError:
    """The one message for a full disk; `raise disk_full(path, err) from err`."""
    full = DiskFullError(f"{path}: disk full (no space left on the device, or the quota is used up) "
                         f"while writing it; free space and re-run the same command to resume")
    full.errno = err.errno
    return full


def writer_token() -> str:
    """Unique per writing process, across the machines sharing a directory."""
    return f"{socket.gethostname()}-{os.getpid()}"


def temp_name(path: Path | str, *, unique: bool = False, keep_suffix: bool = False) -> Path:
    """The hidden temporary name for `path` in its own directory. `unique` adds a per-process
    counter (two writes of one file by two threads); `keep_suffix` repeats the extension at the end
    for writers that choose the format by it (OpenCV's VideoWriter, np.savez). It starts with
    `temp_prefix(path)`."""
    path = Path(path)
    tail = writer_token()
    if unique:
        tail += f"-{next(_counter)}"
    if keep_suffix:
        tail += path.suffix
    return path.with_name(f"{temp_prefix(path, len(os.fsencode(tail)))}{tail}")


NAME_MAX = 255  # bytes in a file name: Linux's file systems (ext4, XFS, Btrfs, NFS) and macOS's
TAIL_ROOM = 64  # bytes kept for a temporary name's `<host>-<pid>[-<n>][<suffix>]`


def temp_prefix(path: Path | str, tail: int = 0) -> str:
    """How every temporary name of `path` starts: `.<name>.tmp-`, or for a name near the file system's
    limit `.<its start>~<12 hex digits of its SHA-1>.tmp-` (the temporary name is never the one refused,
    nor the name an error line shows for a file that could be written; names sharing a long start stay
    apart). The same for any writer whose `tail` fits TAIL_ROOM, so that a re-run finds what a killed
    one left."""
    name = Path(path).name
    room = NAME_MAX - 1 - len(TEMP_MARKER) - max(TAIL_ROOM, tail)
    if len(os.fsencode(name)) > room:
        digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:12]
        while name and len(os.fsencode(name)) > room - 13:  # characters, so that no UTF-8 sequence is cut
            name = name[:-1]
        name = f"{name}~{digest}"
    return f".{name}{TEMP_MARKER}"


def name_problem(paths: Iterable[Path]) -> str:
    """Why the files `paths` cannot be written for the length of their names ("" when they can), found
    before the work that would write them: a name the file system refuses fails only at its rename."""
    for path in paths:
        limit = _name_max(path.parent)
        if len(os.fsencode(path.name)) > limit:
            return (f"file {brief(path)} would have a name of {len(os.fsencode(path.name))} bytes; the file system "
                    f"takes at most {limit}: rename the video")
    return ""


@functools.lru_cache(maxsize=256)
def _name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of `folder`, or of its nearest existing parent, takes;
    asked once per folder (a listing of 650k videos asks for a few folders)."""
    try:
        return os.pathconf(next(p for p in (folder, *folder.parents) if path_is(Path.exists, p)), "PC_NAME_MAX")
    except (OSError, ValueError, StopIteration):
        return NAME_MAX


def remove_quietly(path: Path) -> None:
    """Delete a temporary file or folder; a failure to clean up must not hide the error being raised."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def remove_dead_temps(folder: Path | str) -> int:
    """Delete the temporary files and folders under `folder` (at any depth) whose writer was a process
    of this machine that is gone (killed mid-write): a cache's leftovers, never a live writer's. Those
    of other machines sharing the folder are left, since their processes cannot be asked. Returns
    how many were removed."""
    return _remove_dead(Path(folder).rglob(f".*{TEMP_MARKER}*"))


def remove_dead_temps_of(path: Path | str) -> int:
    """`remove_dead_temps` for the temporaries of one file (beside it): what a killed writer of `path`
    left (a P3D-199 import's 260 MB), at the cost of one listing of its folder, never a walk below it."""
    path = Path(path)
    return _remove_dead(path.parent.glob(glob.escape(temp_prefix(path)) + "*"))


def _remove_dead(temps: Iterable[Path]) -> int:
    own = re.compile(rf"{re.escape(TEMP_MARKER)}{re.escape(socket.gethostname())}-(\d+)(?:-\d+)?(?:\.\w+)?$")
    removed = 0
    for path in temps:
        writer = own.search(path.name)
        if writer is not None and not _alive(int(writer[1])):
            remove_quietly(path)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path | str, *, keep_suffix: bool = False) -> Iterator[Path]:
    """Yields a temporary path for a writer that wants a file name (cv2.imwrite, a VideoWriter,
    a folder). When the block ends without error the temporary is renamed over `path`; on any error
    it is removed, and a full disk is raised as DiskFullError naming `path`."""
    path = Path(path)
    tmp = temp_name(path, unique=True, keep_suffix=keep_suffix)
    try:
        yield tmp
        if tmp.is_file():
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if tmp.is_dir() and path.is_dir() and not path.is_symlink():
            # os.replace cannot rename a folder over a non-empty one: swap, then drop the old one.
            old = path.with_name(f".{path.name}.old-{writer_token()}-{next(_counter)}")
            os.rename(path, old)
            os.rename(tmp, path)
            remove_quietly(old)
        else:
            os.replace(tmp, path)
    except BaseException as err:
        remove_quietly(tmp)
        if is_disk_full(err):
            raise disk_full(path, err) from err  # type: ignore[arg-type]
        raise


@contextmanager
def atomic_write(path: Path | str, mode: str = "wb", *, encoding: str | None = None,
                 newline: str | None = None) -> Iterator[IO[Any]]:
    """`with atomic_write(p) as f: f.write(...)`: `p` appears complete or not at all (see the
    module docstring). `mode` is "wb" or "w" (text, UTF-8 unless `encoding` says otherwise)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()


def write_bytes(path: Path | str, data: bytes) -> None:
    """Atomically replace `path` with `data`."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path: Path | str, text: str, *, encoding: str = "utf-8") -> None:
    """Atomically replace `path` with `text` (UTF-8, newlines as given)."""
    with atomic_write(path, "w", encoding=encoding, newline="") as f:
        f.write(text)
