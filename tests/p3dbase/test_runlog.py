"""The run's own log: every printed line, progress as plain lines, appended run after run."""
from __future__ import annotations

import io
import sys

import pytest

from p3dbase import progress, runlog
from p3dbase.progress import PlainLines, plain_lines, progress_bar
from p3dbase.runlog import run_log


def test_plain_lines_drop_carriage_returns_escapes_and_blank_redraws():
    assert plain_lines("\rflow:  50%|##  | 1/2\x1b[A\r\x1b[2K\rflow: 100%|####| 2/2\n\r      \r") == [
        "flow:  50%|##  | 1/2", "flow: 100%|####| 2/2"]


def test_a_bar_into_a_file_is_plain_lines(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    for _ in progress_bar(range(3), desc="work", mininterval=0.0):
        pass
    err = capsys.readouterr().err  # captured: not a terminal
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert lines[0].startswith("work:   0%") and lines[-1].startswith("work: 100%") and "3/3" in lines[-1]
    assert len(lines) == len(set(lines))  # each state once


def test_a_bar_over_nothing_is_not_drawn(capsys):
    """A re-run with every video done printed `flow: 0video [00:00, ?video/s]`."""
    with progress_bar(total=0, desc="flow", unit="video") as bar:
        bar.update(0)
    for _ in progress_bar([], desc="features"):
        pass
    assert capsys.readouterr().err == ""
    for _ in progress_bar([1], desc="features"):
        pass
    assert "features" in capsys.readouterr().err


def test_the_log_gets_every_line_and_the_terminal_keeps_its_redraws(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal_out, terminal_err = Terminal(), Terminal()
    monkeypatch.setattr(sys, "stdout", terminal_out)
    monkeypatch.setattr(sys, "stderr", terminal_err)
    monkeypatch.setattr(runlog, "LOG_INTERVAL", 3600.0)  # of the redraws, the log gets the last state only
    log = tmp_path / "out/stage.log"
    with pytest.raises(RuntimeError), run_log(log, "python -m pipeline stage --config c.toml"):
        print("stage: read 3 videos")
        sys.stderr.write("\rbar 1/3\rbar 2/3\rbar 3/3\n")
        print("warning: one video is short", file=sys.stderr)
        sys.stdout.write("no newline at the end")
        raise RuntimeError
    assert sys.stdout is terminal_out and sys.stderr is terminal_err  # restored, also after an error
    assert terminal_err.getvalue() == "\rbar 1/3\rbar 2/3\rbar 3/3\nwarning: one video is short\n"
    text = log.read_text()
    lines = text.splitlines()
    assert lines[0].startswith("==== ") and lines[0].endswith(" python -m pipeline stage --config c.toml")
    assert lines[1:5] == ["stage: read 3 videos", "bar 3/3", "warning: one video is short", "no newline at the end"]
    assert lines[5].startswith("==== ended after ") and len(lines) == 6
    with run_log(log, "again"):
        print("second run")
    assert log.read_text().startswith(text) and "second run\n" in log.read_text()  # appended


def test_plain_lines_stream_writes_each_state_once(capsys):
    stream = PlainLines()
    stream.write("\ra 1")
    stream.write("\ra 1")
    stream.write("\ra 2\n")
    assert capsys.readouterr().err == "a 1\na 2\n"
