"""The one way a stage reaches a Dask cluster (`flow.scheduler`): the flow stage's videos and the
inference engine's tasks run on it through joblib's Dask backend."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from p3dbase.errors import SettingError


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
