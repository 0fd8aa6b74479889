"""p3dbase.atomic: whole file or none, temp files removed on every error, a full disk in one line."""
from __future__ import annotations

import errno
import os

import pytest

from p3dbase import atomic
from p3dbase.atomic import DiskFullError, atomic_path, atomic_write, temp_name, write_bytes, write_text
from p3dbase.errors import P3DError


def test_replaces_the_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    write_bytes(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    write_text(tmp_path / "b.txt", "x\r\ny\n")
    assert (tmp_path / "b.txt").read_bytes() == b"x\r\ny\n"  # newlines written as given
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt"]


def test_an_error_inside_the_block_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(path) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_clear_error_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")
    monkeypatch.setattr(atomic.os, "fsync", _full_disk)
    with pytest.raises(DiskFullError) as info:
        write_bytes(path, b"new")
    err = info.value
    assert isinstance(err, P3DError) and isinstance(err, OSError) and err.errno == errno.ENOSPC
    assert str(err).startswith(f"{path}: disk full") and "\n" not in str(err)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_a_full_disk_raised_by_the_writer_itself(tmp_path):
    path = tmp_path / "x.png"
    with pytest.raises(DiskFullError, match="x.png: disk full"):
        with atomic_path(path, keep_suffix=True) as tmp:
            assert tmp.suffix == ".png" and tmp.name.startswith(".x.png.tmp-")
            tmp.write_bytes(b"part")
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
    assert list(tmp_path.iterdir()) == []


def test_temp_names_are_hidden_unique_and_in_the_same_folder(tmp_path):
    path = tmp_path / "sub" / "f.csv"
    a, b = temp_name(path, unique=True), temp_name(path, unique=True)
    assert a != b and a.parent == path.parent
    assert a.name.startswith(".f.csv.tmp-") and str(os.getpid()) in a.name
    assert temp_name(path) == temp_name(path)  # without `unique`: one name per process


def test_a_folder_is_swapped_whole(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "old.csv").write_text("old")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "new.csv").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.csv"]
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_only_binary_and_text_modes():
    with pytest.raises(ValueError, match="mode"):
        with atomic_write("x", "ab"):
            pass


def test_remove_dead_temps_removes_what_dead_writers_of_this_machine_left(tmp_path):
    """A killed eval left `.<id>.npz.tmp-<host>-<pid>-<n>.npz` in its cache for ever."""
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    host = socket.gethostname()
    folder = tmp_path / "cache" / "rgb-0123" / "Cls"
    folder.mkdir(parents=True)
    names = {"dead_file": f".v1.npz.tmp-{host}-{dead}-3.npz", "dead_folder": f".v2.tmp-{host}-{dead}",
             "live": f".v3.npz.tmp-{host}-{os.getpid()}-0.npz", "other_host": f".v4.npz.tmp-elsewhere-{dead}-1.npz",
             "done": "v5.npz"}
    for key, name in names.items():
        (folder / name).mkdir() if key == "dead_folder" else (folder / name).write_bytes(b"x")
    assert atomic.remove_dead_temps(tmp_path / "cache") == 2
    assert sorted(p.name for p in folder.iterdir()) == sorted([names["live"], names["other_host"], names["done"]])
    assert atomic.remove_dead_temps(tmp_path / "missing") == 0
