"""Careless and hostile inputs at the CLI: each is one clear line and exit status 2, or the stage does
what it was asked with no output taken for another's."""
from pathlib import Path

from p3dbase.lock import try_lock
from pipeline.cli import main
from tests.builders import REPO

TINY_CONFIG = str(REPO / "configs" / "tiny.toml")


def test_two_evals_on_one_report_folder_turn_the_second_away(tmp_path, capsys):
    """Two evals writing one report folder renamed each other's files away (a FileNotFoundError
    traceback): the second is refused at once, naming the folder and the holder."""
    report = tmp_path / "work" / "eval"
    with try_lock(report.parent / ".eval.lock") as holder:
        assert holder is None
        assert main(["eval", "--config", TINY_CONFIG, "--set", f"work_dir={tmp_path / 'work'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert f"{report} is being written by another eval run" in err


def test_eval_out_is_where_the_report_goes_without_rgb_or_flow(tmp_path, capsys):
    """`eval --out FOLDER` of a run's own streams wrote into work_dir/eval all the same: the report (and
    its lock and log) go to FOLDER."""
    out = tmp_path / "elsewhere"
    with try_lock(tmp_path / ".elsewhere.lock"):
        assert main(["eval", "--config", TINY_CONFIG, "--set", f"work_dir={tmp_path / 'work'}",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} is being written by another eval run" in err
    assert (out / "eval.log").is_file() and not (tmp_path / "work" / "eval").exists()
