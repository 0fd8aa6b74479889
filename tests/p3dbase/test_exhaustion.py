"""A hostile environment: a full disk, too few file descriptors, under the ground's helpers."""
from __future__ import annotations

import errno
import io
import sys

import pytest

from p3dbase import runlog
from p3dbase.runlog import run_log


class _FullDisk(io.StringIO):
    """A log file on a disk that fills after `room` characters: a write past it is refused (ENOSPC) and,
    as a buffered file's, its text stays pending, so that closing refuses again."""

    def __init__(self, room: int):
        super().__init__()
        self.room = room
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        self.flush()
        return len(text)

    def flush(self) -> None:
        if len(self.getvalue()) + len(self.pending) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().write(self.pending)
        self.pending = ""

    def close(self) -> None:
        try:
            self.flush()
        finally:
            super().close()


def _terminal(monkeypatch) -> tuple[io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    return out, err


def test_a_log_that_fills_the_disk_mid_run_ends_the_log_not_the_run(tmp_path, monkeypatch):
    # Was: the first print after the disk filled raised OSError out of print() wherever the stage was,
    # and the one-line error the stage ended with became a traceback (its own print refused again).
    out, err = _terminal(monkeypatch)
    files = []
    monkeypatch.setattr(runlog, "open", lambda *a, **k: files.append(_FullDisk(200)) or files[-1], raising=False)
    log = tmp_path / "flow.log"
    with pytest.raises(RuntimeError, match="the stage's own error"), run_log(log, "python -m pipeline flow"):
        print("flow: 60 videos")
        for k in range(20):
            print(f"flow: video {k} done", file=sys.stderr)
        print("error: the stage's one line", file=sys.stderr)
        raise RuntimeError("the stage's own error")  # reaches the caller, not an OSError of the log
    assert sys.stdout is out and sys.stderr is err  # restored
    assert out.getvalue() == "flow: 60 videos\n"  # the terminal got everything
    lines = err.getvalue().splitlines()
    assert [line for line in lines if line.startswith("warning:")] == [
        f"warning: {log}: the disk is full; this run goes on without its log there"]  # said once, naming the log
    assert "error: the stage's one line" in lines and "flow: video 19 done" in lines
    assert files[0].closed


def test_a_log_that_cannot_be_opened_is_one_warning(tmp_path, monkeypatch):
    out, err = _terminal(monkeypatch)

    def refuse(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(runlog, "open", refuse, raising=False)
    with run_log(tmp_path / "train.log", "python -m pipeline train"):
        print("trained")
    assert out.getvalue() == "trained\n"
    assert err.getvalue() == (f"warning: {tmp_path / 'train.log'}: too many open files (raise `ulimit -n`); "
                              "this run goes on without its log there\n")


def test_a_full_disk_at_the_header_runs_the_stage_unlogged(tmp_path, monkeypatch):
    out, err = _terminal(monkeypatch)
    monkeypatch.setattr(runlog, "open", lambda *a, **k: _FullDisk(0), raising=False)
    with run_log(tmp_path / "eval.log", "python -m pipeline eval"):
        print("eval: report in out")
    assert out.getvalue() == "eval: report in out\n"
    assert err.getvalue().count("warning:") == 1


def _limits(monkeypatch, soft: int, hard: int) -> list[tuple[int, int]]:
    """An open-files limit of (soft, hard); the list of what it is set to."""
    from p3dbase import cluster

    set_to: list[tuple[int, int]] = []
    monkeypatch.setattr(cluster.resource, "getrlimit", lambda which: (soft, hard))
    monkeypatch.setattr(cluster.resource, "setrlimit", lambda which, limits: set_to.append(limits))
    return set_to


def test_worker_processes_the_open_files_limit_cannot_hold_are_one_line(monkeypatch):
    # Was: `ulimit -n 32` with train.workers = 2 hung for ever (a DataLoader worker's queue thread failed
    # on EMFILE and its batch never came), 20-28 were tracebacks from the workers, and flow.jobs = 2 under
    # `ulimit -n 18` blamed a joblib source file.
    import joblib

    from p3dbase.cluster import local_processes
    from p3dbase.errors import SettingError

    monkeypatch.setattr(joblib, "cpu_count", lambda: 2)
    _limits(monkeypatch, 32, 32)
    with pytest.raises(SettingError) as err:
        local_processes(2, "train.workers")
    assert str(err.value) == ("train.workers = 2: 2 worker process(es) need about 96 open files, but the limit is 32 "
                              "here (`ulimit -n`): raise it (e.g. `ulimit -n 4096`)")
    _limits(monkeypatch, 100, 100)
    monkeypatch.setattr(joblib, "cpu_count", lambda: 8)
    with pytest.raises(SettingError, match=r"^flow\.jobs = 0: 8 worker process\(es\) .* or ask for at most 2$"):
        local_processes(0, "flow.jobs")
    assert local_processes(1, "eval.jobs") == 1  # one runs in the calling process: no worker's files


def test_one_dataloader_worker_is_counted_against_the_open_files_limit(monkeypatch):
    # Was: train.workers = 1 under `ulimit -n 24` hung (local_processes counts one as the calling process,
    # but a DataLoader's one worker is a process of its own).
    from types import SimpleNamespace

    from p3dbase.errors import SettingError
    from streams.loaders import training_loaders

    _limits(monkeypatch, 24, 24)
    train_set = SimpleNamespace(store=None, modality="rgb")
    with pytest.raises(SettingError, match=r"^train\.workers = 1: 1 worker process\(es\) need about 64 open files, "
                                           r"but the limit is 24 here"):
        training_loaders(train_set, None, ctx=SimpleNamespace(), batch=2, workers=1, seed=0)


def test_a_low_soft_limit_is_raised_towards_the_hard_one(monkeypatch):
    import joblib

    from p3dbase.cluster import local_processes

    monkeypatch.setattr(joblib, "cpu_count", lambda: 2)
    set_to = _limits(monkeypatch, 40, 4096)
    assert local_processes(8, "train.workers") == 8
    assert set_to == [(32 + 32 * 8, 4096)]
    set_to = _limits(monkeypatch, 1024, 4096)
    assert local_processes(8, "train.workers") == 8 and set_to == []  # enough already: left as it is


def test_a_flow_pool_whose_manager_thread_dies_is_one_line_not_a_hang(monkeypatch, capsys):
    # Was: under `ulimit -v 600000` loky's manager thread died on "can't start new thread" (a traceback on
    # the terminal) and the flow stage waited for its results for ever.
    import threading
    from concurrent.futures import Future

    from joblib.externals import loky

    from flow import stage
    from flow.errors import FlowError

    class Pool:
        def __init__(self):
            self.shut = False

        def submit(self, fn, *args):
            def manager():
                raise RuntimeError("can't start new thread")

            thread = threading.Thread(target=manager, name="ExecutorManagerThread")
            thread.start()
            thread.join()
            return Future()  # never completes: its feeder is gone

        def shutdown(self, wait=True, kill_workers=False):
            self.shut = True

    pool = Pool()
    monkeypatch.setattr(loky, "get_reusable_executor", lambda **kwargs: pool)
    monkeypatch.setattr(stage, "POOL_POLL_S", 0.01, raising=False)
    hook = threading.excepthook
    raised: list[BaseException] = []

    def flow() -> None:
        try:
            list(stage._pool_results(["a", "b", "c"], lambda task, k: None, 2))
        except BaseException as e:
            raised.append(e)

    run = threading.Thread(target=flow, daemon=True)
    run.start()
    run.join(timeout=10)
    assert not run.is_alive(), "the flow stage waits for ever for a pool that stopped"
    assert len(raised) == 1 and isinstance(raised[0], FlowError)
    assert str(raised[0]) == ("flow: the pool of 2 worker processes stopped working (can't start new thread): too "
                              "little memory for it? (`ulimit -v`) raise the limit, or set flow.jobs = 1")
    assert pool.shut and threading.excepthook is hook  # its workers stopped, the hook put back
    assert "Traceback" not in capsys.readouterr().err


def test_a_video_that_will_not_open_under_a_memory_cap_says_memory_may_be_why(tmp_path, monkeypatch):
    # Was: under `ulimit -v 600000` every video of the flow stage was "not a video OpenCV/FFmpeg can read":
    # the reason blamed the files. With an address-space limit set, the line now names it as well.
    import resource

    from flow.errors import FlowError
    from flow.video import VideoReader

    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(FlowError) as plain:
        VideoReader(bad)
    if resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY:  # no cap, as on most machines
        assert "memory" not in str(plain.value)
    real = resource.getrlimit
    monkeypatch.setattr(resource, "getrlimit", lambda which: (600_000 * 1024, resource.RLIM_INFINITY)
                        if which == resource.RLIMIT_AS else real(which))
    with pytest.raises(FlowError, match=r"bad\.avi: cannot open \(not a video OpenCV/FFmpeg can read, or its header "
                                        r"is missing, or too little memory for the decoder: this process may use "
                                        r"0\.6 GiB \(`ulimit -v`\)\)$"):
        VideoReader(bad)
