"""The ground's message helpers: quoting a bad line without flooding the one-line error, and why a
path is not a readable file."""
import errno

import pytest

from p3dbase.errors import brief, excerpt, refusal, shown, utf8_text


def test_excerpt_quotes_short_text_whole_and_long_text_in_part():
    assert excerpt("a b\t1") == "'a b\\t1'"
    assert excerpt("y" * 80) == repr("y" * 80)
    assert excerpt("y" * 81) == f"{'y' * 80!r}... (81 characters)"


def test_brief_cuts_the_middle_of_long_paths_and_refusal_uses_it(tmp_path):
    assert brief("short/path") == "short/path"
    long = "/start/" + "x" * 5000 + "/end.txt"
    assert brief(long).startswith("/start/xx") and brief(long).endswith("/end.txt (5,015 characters)")
    assert len(brief(long)) < 330
    # A name too long for the file system: the error line named it whole (5,000 characters and more).
    name = tmp_path / ("n" * (5063 - len(str(tmp_path)) - 1))
    with pytest.raises(OSError) as info:
        name.mkdir()
    assert info.value.errno == errno.ENAMETOOLONG
    line = refusal(info.value)
    assert len(line) < 400 and line.startswith(str(tmp_path))
    assert line.endswith(" (5,063 characters): the name is too long")


def test_file_problem_says_why_a_path_cannot_be_read_as_a_file(tmp_path, monkeypatch):
    """import-weights /dev/null said "no such file" of a device that exists."""
    import os

    from p3dbase.errors import file_problem
    from tests.builders import deny_as_for_a_user

    (tmp_path / "w.pt").write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe")
    assert file_problem(tmp_path / "w.pt") == ""
    assert file_problem(tmp_path) == "a folder, not a file"
    assert file_problem(tmp_path / "pipe") == "not a regular file (a FIFO, socket or device)"
    assert file_problem(tmp_path / "gone") == "no such file"
    (tmp_path / "w.pt").chmod(0)
    deny_as_for_a_user(monkeypatch, tmp_path / "w.pt", os.R_OK)
    assert file_problem(tmp_path / "w.pt") == "cannot be read: no permission"


def test_shown_prints_any_text():
    assert shown("caf\udce9") == "caf\\xe9"  # a file name's undecodable byte 0xe9
    assert shown("a\ud800b") == "a\\ud800b"  # a lone surrogate from a JSON escape: it raised UnicodeEncodeError
    assert shown("plain é") == "plain é"


def test_shown_keeps_a_message_on_one_line_and_utf8_text_keeps_lines():
    """A file name holding a newline split "flow: failed c/new\\nline: refused ..." over two lines, and
    an escape sequence in a name reached the terminal. A whole file (a manifest) keeps its lines."""
    assert shown("c/new\nline\tx\x1b[31m\x7f\x85") == "c/new\\nline\\tx\\x1b[31m\\x7f\\x85"
    assert shown("U+2028 \u2028 stays") == "U+2028 \u2028 stays"  # not a control character: ids may hold it
    assert utf8_text("a,b\nc\udce9\n") == "a,b\nc\\xe9\n"
