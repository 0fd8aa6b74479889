"""A large re-run takes its stats in a forked child process (flow.stat_ahead) while it reads the
index: it must decide exactly what a re-run taking them itself decides, for every way a source or a
stored video can change, and fall back to its own stats when the child does not deliver."""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

import flow.stage
from flow.stage import FlowJob, run_flow
from flow.stat_ahead import MISSING, StatsAhead, can_fork
from flow.store import open_store
from tests.builders import moving_square, write_video

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this system")


def jobs_in(folder: Path) -> list[FlowJob]:
    return [FlowJob(f"Cls/{p.stem}", p) for p in sorted(folder.iterdir())]


@pytest.fixture
def finished(tmp_path, fast_cfg):
    """Four videos, flowed once: (videos folder, store folder)."""
    folder = tmp_path / "videos"
    for k, name in enumerate("abcd"):
        write_video(folder / f"{name}.avi", moving_square(5, seed=k))
    run_flow(jobs_in(folder), tmp_path / "flow", fast_cfg)
    return folder, tmp_path / "flow"


def test_the_child_gives_each_paths_size_and_mtime(tmp_path):
    paths = [tmp_path / "a", tmp_path / "gone", tmp_path]
    paths[0].write_bytes(b"12345")
    os.utime(paths[0], ns=(1, 1_234_567_891_234))
    stats = StatsAhead((str(p) for p in paths), len(paths))
    values = stats.result()
    st = os.stat(tmp_path)
    assert list(values) == [5, 1_234_567_891_234, MISSING, 0, st.st_size, st.st_mtime_ns]
    stats.close()  # after result(): nothing left to reap


def test_a_child_that_dies_gives_no_result(tmp_path):
    def stuck():
        yield str(tmp_path)
        threading.Event().wait()  # never ends: the child is killed below

    stats = StatsAhead(stuck(), 1)
    os.kill(stats.pid, 9)
    assert stats.result() is None


def test_no_fork_while_another_thread_runs():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert not can_fork()
    finally:
        stop.set()
        thread.join()


def rerun_decisions(videos: Path, store: Path, cfg, monkeypatch, capsys, ahead: bool):
    """The summary, the lines and the index of a re-run of a copy of the store, with or without the child."""
    copy = store.parent / f"copy-{ahead}"
    shutil.copytree(store, copy, symlinks=True)
    monkeypatch.setattr(flow.stage, "STAT_AHEAD_MIN", 1 if ahead else 10**9)
    monkeypatch.setattr(flow.stage, "can_fork", lambda: True)  # the first run's progress bar left its monitor thread
    forked = []
    real = flow.stage.StatsAhead
    monkeypatch.setattr(flow.stage, "StatsAhead", lambda *a: forked.append(1) or real(*a))
    capsys.readouterr()
    summary = run_flow(jobs_in(videos), copy, cfg)
    lines = "".join(line for line in capsys.readouterr().out.replace(str(copy), "<store>").splitlines(True)
                    if " pairs/s)" not in line)  # everything but the timing
    assert forked == ([1] if ahead else [])
    failures = sorted((video, error.replace(str(copy), "<store>")) for video, error in summary.failures)
    return ((summary.computed, summary.skipped, summary.failed), failures, lines,
            open_store(copy).video_ids())


def test_every_change_is_seen_as_when_the_run_stats_itself(finished, fast_cfg, monkeypatch, capsys):
    videos, store = finished
    os.utime(videos / "a.avi", ns=(1, 5_000_000_000))  # touched: same bytes, other mtime
    (store / "Cls" / "b.pack").unlink()  # its pack removed
    (store / "Cls" / "c.pack").unlink()
    (store / "Cls" / "c.pack").mkdir()  # a folder in place of its pack
    (videos / "d.avi").unlink()
    (videos / "d.avi").symlink_to(videos / "gone.avi")  # the source now a dangling link

    forked = rerun_decisions(videos, store, fast_cfg, monkeypatch, capsys, ahead=True)
    alone = rerun_decisions(videos, store, fast_cfg, monkeypatch, capsys, ahead=False)

    assert forked == alone
    counts, failures, lines, stored = forked
    assert counts == (2, 1, 1)  # a and b computed again; c failed; d's source is gone, its pack kept
    assert [video for video, _ in failures] == ["Cls/c"]
    assert "is a folder where its pack belongs" in failures[0][1] and "gone.avi" not in lines
    assert "video Cls/a: " in lines and "changed since it was made (size or time): redone" in lines
    assert "video Cls/d: its source " in lines and "d.avi is gone: the stored video is kept" in lines
    assert stored == ["Cls/a", "Cls/b", "Cls/d"]


def test_a_finished_store_is_found_done_without_opening_a_pack(finished, fast_cfg, monkeypatch):
    videos, store = finished
    monkeypatch.setattr(flow.stage, "STAT_AHEAD_MIN", 1)
    monkeypatch.setattr(flow.stage, "can_fork", lambda: True)
    monkeypatch.setattr(type(open_store(store)), "open", lambda *a, **k: pytest.fail("a pack was opened"))
    summary = run_flow(jobs_in(videos), store, fast_cfg)
    assert (summary.computed, summary.skipped, summary.failed) == (0, 4, 0)


def test_a_child_that_fails_leaves_the_run_to_stat_itself(finished, fast_cfg, monkeypatch):
    videos, store = finished
    os.utime(videos / "b.avi", ns=(1, 7_000_000_000))
    monkeypatch.setattr(flow.stage, "STAT_AHEAD_MIN", 1)
    monkeypatch.setattr(flow.stage, "can_fork", lambda: True)
    monkeypatch.setattr(StatsAhead, "result", lambda self: (StatsAhead.close(self), None)[1])
    summary = run_flow(jobs_in(videos), store, fast_cfg)
    assert (summary.computed, summary.skipped, summary.failed) == (1, 3, 0)
