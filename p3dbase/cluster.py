"""The one way a stage reaches a Dask cluster (`flow.scheduler`): the flow stage's videos and the
inference engine's tasks run on it through joblib's Dask backend; and the one count of local worker
processes (`local_processes`)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from p3dbase.errors import SettingError

# Worker processes per usable core, at most: each holds its own interpreter, libraries and buffers
# (100-300 MB), so `jobs = 1000` (a typo, or a cluster's count on a laptop) was a fork bomb that ended
# in the kernel's OOM killer, not an error.
MAX_PROCESSES_PER_CORE = 4


def local_processes(jobs: int, key: str) -> int:
    """How many local worker processes `jobs` asks for (0: one per usable core, as joblib counts them:
    CPU affinity and a container's CPU quota included); SettingError naming `key` beyond
    MAX_PROCESSES_PER_CORE per core."""
    import joblib

    cores = joblib.cpu_count()
    if jobs > MAX_PROCESSES_PER_CORE * cores:
        raise SettingError(f"{key} = {jobs} would start {jobs} worker processes on {cores} usable CPU core(s), "
                           f"each a few hundred MB: at most {MAX_PROCESSES_PER_CORE * cores} here "
                           f"({MAX_PROCESSES_PER_CORE} per core), or 0 for one per core")
    return jobs or cores


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
    try:
        client = Client(scheduler)  # waits distributed.comm.timeouts.connect (dask config)
    except (OSError, TimeoutError) as e:
        raise SettingError(f"flow.scheduler: cannot reach the Dask scheduler at {scheduler}: {e}") from None
    with client, joblib.parallel_config(backend="dask"):
        yield from joblib.Parallel(n_jobs=-1, return_as="generator_unordered")(calls)
