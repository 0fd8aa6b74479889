"""The one way a stage reaches a Dask cluster (`flow.scheduler`): the flow stage's videos and the
inference engine's tasks run on it through joblib's Dask backend; the one count of local worker
processes (`local_processes`); and how a forked worker dies with the process that forked it
(`die_with`)."""
from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from p3dbase.errors import SettingError

# Worker processes per usable core, at most: each holds its own interpreter, libraries and buffers
# (100-300 MB), so `jobs = 1000` (a typo, or a cluster's count on a laptop) was a fork bomb that ended
# in the kernel's OOM killer, not an error.
MAX_PROCESSES_PER_CORE = 4
# Open files (`ulimit -n`) a stage's own process needs, and each local worker process adds to it: its
# pipes and queues, and for a DataLoader worker (persistent, in the training and the validation loader)
# every tensor of the batches in flight, each shared through a descriptor of its own (torch's
# "file_descriptor" strategy). Measured with p3d_tiny: 2 DataLoader workers need 36, 8 need 80. Short of
# them a worker's queue thread fails on EMFILE, its batch never arrives and training waited forever; a
# pool's start failed with a traceback.
FILES_BASE = 32
FILES_PER_PROCESS = 32


# The stop this process was asked for (Ctrl-C's KeyboardInterrupt, SIGTERM's pipeline.cli.Terminated),
# noted by the CLI's signal handlers as they raise it. Worker pools that see their workers die of the
# same signal (sent to the whole process group) stop as that stop: the exception itself can be lost
# where it was raised (inside a finalizer, or replaced by the pool's own error while unwinding).
_requested: list[KeyboardInterrupt] = []


def note_stop(stop: KeyboardInterrupt) -> KeyboardInterrupt:
    """Record `stop` as the stop asked of this process; returns it, to be raised."""
    _requested[:] = [stop]
    return stop


def clear_stop() -> None:
    """Forget the stop noted (the CLI, as its command ends: a next command in this process starts afresh)."""
    _requested.clear()


def requested_stop() -> KeyboardInterrupt | None:
    """A fresh copy of the stop asked of this process (note_stop), None when none was."""
    return type(_requested[0])() if _requested else None


def local_processes(jobs: int, key: str, zero: str = "one per core") -> int:
    """How many local worker processes `jobs` asks for (0: one per usable core, as joblib counts them:
    CPU affinity and a container's CPU quota included); SettingError naming `key` beyond
    MAX_PROCESSES_PER_CORE per core, or beyond what the open-files limit can hold (open_files_for).
    `zero`: what 0 means for `key`, as the message offers it (train.workers: none, in the trainer)."""
    import joblib

    cores = joblib.cpu_count()
    if jobs > MAX_PROCESSES_PER_CORE * cores:
        raise SettingError(f"{key} = {jobs} would start {jobs} worker processes on {cores} usable CPU core(s), "
                           f"each a few hundred MB: at most {MAX_PROCESSES_PER_CORE * cores} here "
                           f"({MAX_PROCESSES_PER_CORE} per core), or 0 for {zero}")
    count = jobs or cores
    if count > 1:  # one alone runs in the calling process (flow, verify, the inference engine)
        open_files_for(count, f"{key} = {jobs}")
    return count


def open_files_for(processes: int, what: str) -> None:
    """Make room for `processes` local worker processes in the open-files limit: its soft value is
    raised (up to the hard one) when short of FILES_BASE + FILES_PER_PROCESS each; SettingError naming
    `what` when even the hard limit is short."""
    need = FILES_BASE + FILES_PER_PROCESS * processes
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard == resource.RLIM_INFINITY or hard >= need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        return
    fit = (hard - FILES_BASE) // FILES_PER_PROCESS
    fewer = f" or ask for at most {fit}" if fit >= 1 else ""
    raise SettingError(f"{what}: {processes} worker process(es) need about {need} open files, but the limit is "
                       f"{hard} here (`ulimit -n`): raise it (e.g. `ulimit -n 4096`){fewer}")


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with(parent: int) -> None:
    """In a forked worker process: the kernel kills it (SIGKILL) when `parent`, the process that forked
    it, dies, kill -9 included; Linux only (elsewhere nothing). A worker left behind keeps what it
    inherited: the descriptor of the stage's flock (eval's, transfer's report lock), so every re-run was
    refused, naming the dead pid, until someone found the orphans. The kernel ties the signal to the
    thread that forked: call it in workers forked from the main thread."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def local_threads(threads: int, key: str) -> int:
    """`threads` (a per-process thread count, 0: the library's default) unless it is beyond
    MAX_PROCESSES_PER_CORE per usable core: SettingError naming `key` (100,000 torch threads was a
    MemoryError, then a segmentation fault)."""
    import joblib

    cores = joblib.cpu_count()
    if threads > MAX_PROCESSES_PER_CORE * cores:
        raise SettingError(f"{key} = {threads} torch threads on {cores} usable CPU core(s): at most "
                           f"{MAX_PROCESSES_PER_CORE * cores} here ({MAX_PROCESSES_PER_CORE} per core), or 0 for "
                           "one per core")
    return threads


SCHEDULER_PROTOCOLS = ("tcp", "tls", "ucx", "ws", "wss")  # what a Dask scheduler listens on across machines


def scheduler_problem(address: str) -> str:
    """What is wrong with a Dask scheduler's address (`tcp://host:8786`, `host:8786`), "" when
    nothing: distributed raised a ValueError traceback for one without a port."""
    protocol, sep, rest = address.rpartition("://")
    if sep and protocol not in SCHEDULER_PROTOCOLS:
        return (f"{address!r}: {protocol}:// is no protocol a scheduler on another machine listens on "
                f"({', '.join(p + '://' for p in SCHEDULER_PROTOCOLS)})")
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        return f"{address!r}: expected [protocol://]host:port, e.g. tcp://node1:8786 (dask scheduler prints it)"
    return ""


def dask_unordered(calls: Iterable[Any], scheduler: str) -> Iterator[Any]:
    """Run joblib `delayed` calls on the cluster at `scheduler` (its address), yielding results as they
    finish. SettingError naming `flow.scheduler` when dask.distributed is missing or the scheduler
    cannot be reached."""
    try:
        import joblib
        from distributed import Client
    except ImportError:
        raise SettingError(f"flow.scheduler = {scheduler!r} needs dask.distributed: "
                           "pip install 'p3d-two-stream[dist]'") from None
    if problem := scheduler_problem(scheduler):
        raise SettingError(f"flow.scheduler: {problem}")
    try:
        client = Client(scheduler)  # waits distributed.comm.timeouts.connect (dask config)
    except (OSError, TimeoutError, ValueError) as e:  # ValueError: an address distributed cannot parse
        raise SettingError(f"flow.scheduler: cannot reach the Dask scheduler at {scheduler}: {e}") from None
    with client, joblib.parallel_config(backend="dask"):
        yield from joblib.Parallel(n_jobs=-1, return_as="generator_unordered")(calls)
