"""`stat` of many files on the other core: a re-run of the flow stage stats every source and every
stored video (1.3 million calls at Kinetics-700 scale, each a system call of a few microseconds)
while it reads the store's index. Threads cannot overlap them: each call needs the interpreter lock
back after its system call, which the thread parsing the index holds (measured: two threads took
longer than one). A forked child process takes the calls and sends back (size, mtime_ns) pairs.

Only what the caller may re-check is taken this way: the caller stats again whatever does not match
what it expects, so a failed or killed child costs time, never a wrong answer.
"""
from __future__ import annotations

import gc
import os
import threading
from array import array
from collections.abc import Iterable

MISSING = -1  # the size of a path that could not be stat'ed (no real size is negative)


class StatsAhead:
    """(size, mtime_ns) of each of `count` paths, taken by a child process forked now. `paths` is
    iterated in the child only (a generator costs the caller nothing). `result()` waits for them."""

    def __init__(self, paths: Iterable[str], count: int):
        self.count = count
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: no exit handler, buffer flush or collection of the parent's runs here
            code = 1
            try:
                gc.disable()  # a collection would walk, and so copy, every object of the parent
                os.close(read)
                _send(write, paths)
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        self.pid, self.fd = pid, read

    def result(self) -> array | None:
        """size, mtime_ns, size, mtime_ns, ... in the order of the paths (size MISSING: no stat);
        None when the child did not finish (killed, out of memory)."""
        if self.pid < 0:
            return None
        try:
            with open(self.fd, "rb") as pipe:
                data = pipe.read()
        finally:
            status = os.waitpid(self.pid, 0)[1]
            self.pid = -1
        if status != 0 or len(data) != 16 * self.count:
            return None
        values = array("q")
        values.frombytes(data)
        return values

    def close(self) -> None:
        """Stop and reap the child if its result was not taken (the caller failed meanwhile)."""
        if self.pid < 0:
            return
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass
        os.close(self.fd)
        os.waitpid(self.pid, 0)
        self.pid = -1

    def __enter__(self) -> StatsAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def can_fork() -> bool:
    """Whether forking is safe here: a fork copies only the calling thread, so another thread's
    lock (a logging handler's, a progress bar's) could never be let go of in the child."""
    return hasattr(os, "fork") and threading.active_count() == 1


def size_mtime(path: str) -> tuple[int, int]:
    """(size, mtime_ns) of `path`; (MISSING, 0) when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return MISSING, 0
    return st.st_size, st.st_mtime_ns


def _send(fd: int, paths: Iterable[str]) -> None:
    values = array("q")
    put = values.extend
    for path in paths:
        put(size_mtime(path))
    view = memoryview(values).cast("B")
    while view:
        view = view[os.write(fd, view):]
