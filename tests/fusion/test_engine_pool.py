"""fusion.engine.map_videos's local worker pool: results, a worker that dies, Ctrl-C in the workers."""
from __future__ import annotations

import os
import signal
from contextlib import contextmanager

import pytest
import torch

from fusion.engine import PoolSpec, Worker, map_videos, run_one
from fusion.errors import FusionError


def _square(worker: Worker, task: int) -> tuple[int, int]:
    return task, task * task


def _die_on_three(worker: Worker, task: int) -> int:
    if task == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer ends a worker
    return task


def _torch_threads(worker: Worker, task: int) -> int:
    return torch.get_num_threads()


def _interrupted_worker(worker: Worker, task: int) -> bool:
    """Whether Ctrl-C, sent to this worker, left it working (the main process handles it)."""
    os.kill(os.getpid(), signal.SIGINT)
    return True


@contextmanager
def deadline(seconds: int = 60):
    """TimeoutError instead of a hang: the faults these tests guard against made the run wait for ever."""
    def expired(signum, frame):
        raise TimeoutError(f"still waiting after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _spec(work) -> PoolSpec:
    return PoolSpec(streams=[], batch_views=1, device=torch.device("cpu"), work=work)


def test_every_task_gives_its_result_once_in_two_workers():
    got = sorted(map_videos(_spec(_square), list(range(12)), jobs=2, leave=False))
    assert got == [(k, k * k) for k in range(12)]


def test_a_worker_that_dies_is_one_error_naming_the_setting_not_a_hang():
    """multiprocessing.Pool replaced a killed worker and waited for its task's result for ever."""
    with deadline(), pytest.raises(FusionError, match=r"a worker process of the 2 \(eval\.jobs\) died \(killed, "
                                                      r"e\.g\. by the kernel for lack of memory, or crashed\): re-run"):
        list(map_videos(_spec(_die_on_three), list(range(8)), jobs=2, leave=False))


def test_workers_leave_ctrl_c_to_the_main_process():
    """Ctrl-C reaches every process of the terminal's group: each pool worker raised KeyboardInterrupt
    inside its task and printed a traceback of its own; now they go on, and the main process stops the run."""
    with deadline():
        assert list(map_videos(_spec(_interrupted_worker), list(range(4)), jobs=2, leave=False)) == [True] * 4


def test_a_dask_task_runs_torch_on_one_thread_as_a_local_worker_does():
    """A Dask worker runs as many tasks at once as it has threads: each at torch's default thread count
    (every core) oversubscribed the machine, and its features differed from the local run's by ~1e-5."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert run_one(_spec(_torch_threads), 0) == 1
        assert sorted(map_videos(_spec(_torch_threads), [0, 1], jobs=2, leave=False)) == [1, 1]
    finally:
        torch.set_num_threads(before)


def test_the_caller_gets_its_thread_count_back_after_a_dask_map(monkeypatch):
    """An in-process Dask cluster runs its tasks in the caller's process, and where torch's thread pool
    is process-wide (not OpenMP's per-thread count) the tasks' one thread stayed the caller's."""
    def one_thread_here(spec, tasks, scheduler):
        for task in tasks:
            torch.set_num_threads(1)  # as run_one does, in this thread: process-wide on any build
            yield spec.work(None, task)

    monkeypatch.setattr("fusion.engine._dask_map", one_thread_here)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert sorted(map_videos(_spec(_square), [1, 2], scheduler="tcp://in-process", leave=False)) == [(1, 1), (2, 4)]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
