"""One process at a time on a folder: an flock on a lock file, released when the holder lets go or dies.

`try_lock(path)` holds an exclusive flock on `path` for a block, or says at once that another process
holds it (nothing waits). The kernel drops the lock when the holder exits, kill -9 included, so a lock
is never stale; the holder deletes the file as it lets go, and a process that locked a file deleted
meanwhile tries again on the new one (as flow.store.Store.lock does for one video). The file holds the
holder's pid, for the message of whoever is turned away.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def try_lock(path: Path | str) -> Iterator[str | None]:
    """Yields None while this process holds the lock on `path` (created with its folder), or at once
    the pid written by the process that holds it ("?" when unreadable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            yield holder
            return
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # the previous holder deleted the file as it let go: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield None
    finally:
        try:
            os.unlink(path)  # while still held: a process that opened it meanwhile sees it gone
        except FileNotFoundError:
            pass
        os.close(fd)
