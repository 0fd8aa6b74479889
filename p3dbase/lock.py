"""One process at a time on a file, a folder or a video: an flock on a lock file, released when the
holder lets go or dies.

`hold_lock(path)` holds an exclusive flock on `path` for a block; with `wait=False` it says at once
that another process holds it instead. The kernel drops the lock when the holder exits, kill -9
included, so a lock is never stale (also over NFS, where Linux emulates flock with POSIX locks); the
holder deletes the file as it lets go, and a process that locked a file deleted meanwhile tries again
on the new one. The file holds a line naming the holder (a pid, or flow's `host-pid` writer token), for
the message of whoever is turned away or waits.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def hold_lock(path: Path | str, *, wait: bool = True, holder: str | None = None) -> Iterator[str | None]:
    """Yields None while this process holds the lock on `path` (created with its folder), writing
    `holder` (default: this pid) into it; with `wait=False`, when another process holds it, yields at
    once what that process wrote ("?" when unreadable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            other = os.pread(fd, 256, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            yield other
            return
        except BaseException:
            os.close(fd)
            raise
        try:
            mine, held = os.stat(path), os.fstat(fd)
            current = (mine.st_ino, mine.st_dev) == (held.st_ino, held.st_dev)
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # the previous holder deleted the file as it let go: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder if holder is not None else os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # a full disk: the lock holds all the same, only its holder's name is lost
    try:
        yield None
    finally:
        try:
            os.unlink(path)  # while still held: a process that opened it meanwhile sees it gone
        except FileNotFoundError:
            pass
        os.close(fd)


def holder_of(path: Path | str) -> str | None:
    """Who holds the lock on `path` now (what it wrote; "?" when unreadable), or None when nobody
    does or there is no such file. Opens the file read-only and neither makes nor deletes it, so it
    also asks on a folder this process cannot write (a store on a read-only share)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused while a holder has it exclusively
    except BlockingIOError:
        return os.pread(fd, 256, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)
    return None


@contextmanager
def try_lock(path: Path | str) -> Iterator[str | None]:
    """Yields None while this process holds the lock on `path`, or at once the pid written by the
    process that holds it ("?" when unreadable)."""
    with hold_lock(path, wait=False) as other:
        yield other
