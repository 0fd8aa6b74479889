"""The ground's message helpers: quoting a bad line without flooding the one-line error, and why a
path is not a readable file."""
from p3dbase.errors import excerpt


def test_excerpt_quotes_short_text_whole_and_long_text_in_part():
    assert excerpt("a b\t1") == "'a b\\t1'"
    assert excerpt("y" * 80) == repr("y" * 80)
    assert excerpt("y" * 81) == f"{'y' * 80!r}... (81 characters)"


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
