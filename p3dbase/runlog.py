"""The run's own record: everything a stage prints, also written to a text log beside its output.

`with run_log(out / "flow.log", "python -m pipeline flow ..."):` tees every line written to
sys.stdout and sys.stderr in the block into the log (appended, so re-runs and resumed runs follow
each other, each under a header with the time and the command): what the stage read, its settings
warnings, progress lines, the summary, and the one-line error it ended with. The terminal keeps its
progress bars; the log gets them as plain lines (p3dbase.progress.plain_lines), a redraw at most every
LOG_INTERVAL seconds and its last state, so a log reads top to bottom.

The log is the run's record, not its work: when the system refuses it (a full disk, a quota, too many
open files) the terminal says so in one line and the run goes on unlogged, so that a log that cannot
grow never kills a stage (nor turns the one-line error the stage ends with into a traceback).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TextIO

from p3dbase.errors import refusal
from p3dbase.progress import LOG_INTERVAL, plain_lines


class _LogFile:
    """The open log; its first refusal closes it and is said once on `terminal` (see the module docstring)."""

    def __init__(self, path: Path, terminal: TextIO):
        self.path = path
        self.terminal = terminal
        self.file: IO[str] | None = None
        try:
            self.file = open(path, "a", encoding="utf-8", errors="backslashreplace", buffering=1)
        except OSError as err:
            self._refused(err)

    def write(self, text: str) -> None:
        self._do(lambda file: file.write(text))

    def flush(self) -> None:
        self._do(lambda file: file.flush())

    def _do(self, act: Callable[[IO[str]], object]) -> None:
        if self.file is None:
            return
        try:
            act(self.file)
        except OSError as err:
            self.close()
            self._refused(err)

    def close(self) -> None:
        file, self.file = self.file, None
        if file is not None:
            try:
                file.close()  # flushes what a refused write left in the buffer: refused again, and dropped
            except OSError:
                pass

    def _refused(self, err: OSError) -> None:
        err.filename = err.filename or str(self.path)
        print(f"warning: {refusal(err)}; this run goes on without its log there", file=self.terminal)


class _Tee:
    """A text stream that writes to `stream` and, as plain lines, to `log`."""

    def __init__(self, stream: TextIO, log: _LogFile):
        self.stream = stream
        self.log = log
        self._partial = ""  # text of a line not ended yet
        self._redraw = ""  # the latest state of a bar redrawn in place (ended by a carriage return)
        # Counted from the start, not from 0: time.monotonic() is the machine's uptime, so 0 would log the
        # first redraw on a machine up for longer than LOG_INTERVAL and not on a freshly booted one.
        self._logged_redraw = time.monotonic()
        self._after_return = False  # the text being collected follows a carriage return: a bar's state

    def write(self, text: str) -> int:
        self.stream.write(text)
        self._partial += text
        while True:
            cut = min((i for i in (self._partial.find("\n"), self._partial.find("\r")) if i >= 0), default=-1)
            if cut < 0:
                break
            piece, end, self._partial = self._partial[:cut], self._partial[cut], self._partial[cut + 1:]
            if end == "\r":  # a redraw: keep the latest, write one now and then
                if plain_lines(piece):
                    self._redraw = piece
                    if time.monotonic() - self._logged_redraw >= LOG_INTERVAL:
                        self._emit_redraw()
            elif self._after_return and plain_lines(piece):  # a bar's last state: it supersedes the pending one
                self._redraw = ""
                self._emit(piece)
            else:
                self._emit_redraw()
                self._emit(piece)
            self._after_return = end == "\r"
        return len(text)

    def _emit_redraw(self) -> None:
        if self._redraw:
            self._emit(self._redraw)
            self._redraw = ""
            self._logged_redraw = time.monotonic()

    def _emit(self, text: str) -> None:
        for line in plain_lines(text):
            self.log.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def close_log(self) -> None:
        self._emit_redraw()
        if self._partial:
            self._emit(self._partial)
            self._partial = ""

    def isatty(self) -> bool:  # progress bars ask the stream they draw on
        return self.stream.isatty()

    def fileno(self) -> int:  # subprocess and faulthandler want the real descriptor
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", "utf-8")


@contextmanager
def run_log(path: Path | str, command: str) -> Iterator[Path]:
    """Tee sys.stdout and sys.stderr into the log at `path` (appended, its folder created) for the block.
    Line-buffered, so a process forked inside the block (a worker pool) inherits nothing unwritten."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out, err = sys.stdout, sys.stderr
    log = _LogFile(path, err)
    try:
        log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {command}\n")
        tees = _Tee(out, log), _Tee(err, log)
        sys.stdout, sys.stderr = tees
        started = time.monotonic()
        try:
            yield path
        finally:
            sys.stdout, sys.stderr = out, err
            for tee in tees:
                tee.close_log()
            log.write(f"==== ended after {time.monotonic() - started:.0f} s\n")
    finally:
        log.close()
