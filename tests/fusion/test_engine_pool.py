"""fusion.engine.map_videos's local worker pool: results, a worker that dies, Ctrl-C in the workers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

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


def _wait_for_ever(worker: Worker, task: int) -> None:
    """Say this worker has started (its pid, a file in $P3D_TEST_STARTED), then work for ever."""
    (Path(os.environ["P3D_TEST_STARTED"]) / str(os.getpid())).touch()
    time.sleep(3600)


HOLDER = """
import sys, torch
from p3dbase.lock import try_lock
from fusion.engine import PoolSpec, map_videos
from tests.fusion.test_engine_pool import _wait_for_ever
with try_lock(sys.argv[1]):  # as eval and transfer hold their report folder's lock
    spec = PoolSpec(streams=[], batch_views=1, device=torch.device("cpu"), work=_wait_for_ever)
    list(map_videos(spec, [0, 1], jobs=2, leave=False, bar=False))
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie no one has reaped yet
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_workers_die_with_a_killed_run_and_its_lock_is_free(tmp_path):
    """kill -9 of a transfer run left its forked workers alive, idle for ever, holding the inherited
    descriptor of the run's lock: every re-run was refused as "being written by another transfer run
    (pid N)", N dead. The kernel now kills the workers with the run, and the lock goes with them."""
    from p3dbase.lock import holder_of

    started, lock = tmp_path / "started", tmp_path / ".transfer.lock"
    started.mkdir()
    env = {**os.environ, "P3D_TEST_STARTED": str(started), "PYTHONPATH": str(Path(__file__).parents[2])}
    run = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], env=env)
    try:
        give_up = time.monotonic() + 120
        while len(list(started.iterdir())) < 2:
            assert run.poll() is None and time.monotonic() < give_up, "the workers never started"
            time.sleep(0.1)
        assert holder_of(lock) == str(run.pid)
        workers = [int(p.name) for p in started.iterdir()]
    finally:
        run.kill()
        run.wait()
    give_up = time.monotonic() + 30
    while not all(map(_gone, workers)) and time.monotonic() < give_up:
        time.sleep(0.1)
    assert all(map(_gone, workers)), "a worker outlived the run"
    assert holder_of(lock) is None
