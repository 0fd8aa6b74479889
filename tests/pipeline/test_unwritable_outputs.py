"""Outputs that cannot be written: every command says so in one line, before any work, naming the
folder and why; and an OSError that escapes a stage (a disk that fills, a file that vanishes) is one
line too, not a traceback."""
import errno
import os

import pytest

from p3dbase.errors import refusal
from p3dbase.overwrite import OutputFolderError, output_folder
from pipeline.cli import main
from tests.builders import REPO, save_tiny_checkpoint, write_avi

TINY_CONFIG = str(REPO / "configs" / "tiny.toml")


@pytest.fixture
def blocked(tmp_path):
    """A regular file where the outputs' folder would be."""
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def _commands(tmp_path, blocked):
    rgb = save_tiny_checkpoint(tmp_path / "rgb.pt", "rgb")
    video = str(write_avi(tmp_path / "v.avi"))
    cfg = ["--config", TINY_CONFIG, "--set", f"work_dir={tmp_path / 'work'}"]
    return {
        "synth": (["synth", *cfg, "--set", f"dataset.root={blocked / 'synth'}"],
                  f"dataset.root {blocked / 'synth'}"),
        "eval": (["eval", *cfg, "--out", str(blocked / "eval")], f"the eval report folder {blocked / 'eval'}"),
        "features": (["features", *cfg, "--rgb", str(rgb), "--out", str(blocked / "f.npz"), video],
                     f"--out's folder {blocked}"),
        "snippet features": (["features", *cfg, "--rgb", str(rgb), "--stride", "4", "--out", str(blocked / "s"),
                              video], f"features --out {blocked / 's'}"),
        "predict --timeline": (["predict", *cfg, "--rgb", str(rgb), "--timeline", "--out", str(blocked / "t"),
                                video], f"predict --timeline --out {blocked / 't'}"),
        "export": (["export", str(rgb), "--out", str(blocked / "e")], f"export --out {blocked / 'e'}"),
        "import-weights": (["import-weights", str(rgb), "--out", str(blocked / "x.pt")],
                           f"import-weights --out's folder {blocked}"),
    }


@pytest.mark.parametrize("command", ["synth", "eval", "features", "snippet features", "predict --timeline", "export",
                                     "import-weights"])
def test_an_output_folder_under_a_file_is_one_line_before_any_work(tmp_path, blocked, capsys, command):
    """These were NotADirectoryError / FileExistsError tracebacks (synth, eval, features) or a per-video
    failure after the model was loaded (predict --timeline)."""
    argv, named = _commands(tmp_path, blocked)[command]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {named}: a file is in the way") and err.count("\n") == 1
    assert "move it away or choose another work_dir / --out" in err
    assert blocked.read_text() == "not a folder"


def test_a_folder_that_cannot_be_made_says_why(tmp_path, monkeypatch):
    """mkdir refused (permissions, a read-only file system): the folder, the refusing path, the reason."""
    from pathlib import Path

    def refuse(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(OutputFolderError) as caught:
        output_folder(tmp_path / "out", "the flow store")
    assert str(caught.value) == (f"the flow store {tmp_path / 'out'} cannot be made: {tmp_path / 'out'}: the file "
                                 "system is read-only: choose another work_dir / --out")


def test_an_existing_folder_without_write_permission_is_refused(tmp_path, monkeypatch):
    """An existing folder the process cannot write: refused at once, not at the first write an hour later.
    os.access answers for this process (root writes anywhere), so it is asked as a user would be."""
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(OutputFolderError, match=r"the eval report folder .*/out cannot be written: no permission"):
        output_folder(tmp_path / "out", "the eval report folder")


def test_a_read_only_folder_is_refused_for_a_user(tmp_path):
    """The same with real permissions, where the tests do not run as root (root writes anywhere)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who writes any folder (root)")
        with pytest.raises(OutputFolderError, match="cannot be written: no permission"):
            output_folder(folder, "x")
        with pytest.raises(OutputFolderError, match=r"cannot be made: .*/ro/sub: no permission"):
            output_folder(folder / "sub", "x")
    finally:
        folder.chmod(0o755)


def test_an_os_error_escaping_a_stage_is_one_line(tmp_path, monkeypatch, capsys):
    """A refusal no stage turned into a P3DError (here: the file system turning read-only mid-run) is
    `error: <file>: <reason>` and exit status 2; P3D_TRACEBACK=1 lets the traceback through."""
    from pipeline import stages

    def fail(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "work" / "x"))

    monkeypatch.setattr(stages, "synth_stage", fail)
    argv = ["synth", "--config", TINY_CONFIG, "--set", f"dataset.root={tmp_path / 'synth'}"]
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'work' / 'x'}: the file system is read-only "
                                       "(P3D_TRACEBACK=1 shows where)\n")
    monkeypatch.setenv("P3D_TRACEBACK", "1")
    with pytest.raises(OSError):
        main(argv)


@pytest.mark.parametrize("err, line", [
    (OSError(errno.ENOSPC, "No space left on device", "/d/f"), "/d/f: the disk is full"),
    (OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"), "/a -> /b: Invalid cross-device link"),
    (OSError(errno.EMFILE, "Too many open files"), "too many open files (raise `ulimit -n`)"),
    (PermissionError(errno.EACCES, "Permission denied", "/x/\udce9"), "/x/\\xe9: no permission"),
])
def test_refusal_names_the_files_and_the_reason(err, line):
    assert refusal(err) == line


def test_make_flow_on_a_finished_read_only_store_is_done_not_refused(tmp_path, monkeypatch, capsys):
    """`make all` with work_dir/flow on a read-only share: `flow` was refused as an output it cannot
    write, so make stopped before training; a finished store is now reported done, writing nothing."""
    from tests.builders import deny_as_for_a_user, moving_square, write_video

    write_video(tmp_path / "videos" / "Cls" / "a.avi", moving_square(5))
    args = ["flow", "--set", f"work_dir={str(tmp_path / 'work')!r}", "--set", "dataset.format='folder'",
            "--set", f"dataset.root={str(tmp_path / 'videos')!r}", "--set", "flow.jobs=1", "--set", "flow.size=''",
            "--set", "flow.nscales=2", "--set", "flow.warps=1", "--set", "flow.outer_iterations=2"]
    assert main(args) == 0
    store = tmp_path / "work" / "flow"
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    store.chmod(0o555)
    try:
        deny_as_for_a_user(monkeypatch, store, os.W_OK)
        capsys.readouterr()
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "flow: 1 videos: 0 computed, 1 already done, 0 failed" in out and "is read-only: nothing" in out
        assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == before
        # its video turned into a dangling link: kept there too, as on a store that can be written
        (tmp_path / "videos" / "Cls" / "a.avi").unlink()
        (tmp_path / "videos" / "Cls" / "a.avi").symlink_to(tmp_path / "gone.avi")
        assert main([*args, "--strict"]) == 0
        out = capsys.readouterr().out
        assert "its source is refused (refused: a dangling symbolic link): the stored video is kept" in out
        assert "flow: 1 videos: 0 computed, 1 already done, 0 failed" in out
    finally:
        store.chmod(0o755)
