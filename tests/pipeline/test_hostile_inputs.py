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


def _eval_report(out: Path) -> None:
    """An evaluation report of made-up scores (fusion.report's own writer)."""
    import numpy as np

    from fusion import report

    labels = [(c,) for c in range(3) for _ in range(2)]
    scores = np.eye(3)[[c for (c,) in labels]]
    methods = [report.MethodScores("rgb", scores, "")]
    table = report.results_table(methods, labels, "t", 0)
    report.write_report(out, report.EvalReport("Evaluation: t", table, [], methods, methods,
                                               [f"C{c}/v{i}" for i, (c,) in enumerate(labels)], labels,
                                               ["a", "b", "c"], {}))


def test_a_class_without_training_videos_gets_its_report(tmp_path, capsys):
    """The SVM scores a class no training video had -inf ("no prediction", as fusion.metrics reads it):
    the report's check of scores.npz took that for a damaged file, so eval of any dataset with such a
    class ended in "'svm_rgb' holds NaN or inf scores: re-run `make eval`", every time."""
    import numpy as np

    from fusion import report

    labels = [(c,) for c in range(3) for _ in range(2)]
    svm = np.eye(3)[[c for (c,) in labels]]
    svm[:, 2] = -np.inf  # class 2 had no training video
    methods = [report.MethodScores("rgb", np.eye(3)[[c for (c,) in labels]], ""),
               report.MethodScores("svm_rgb", svm, "")]
    table = report.results_table(methods, labels, "t", 0)
    report.write_report(tmp_path / "r", report.EvalReport("Evaluation: t", table, [], methods, methods,
                                                          [f"C{c}/v{i}" for i, (c,) in enumerate(labels)], labels,
                                                          ["a", "b", "c"], {}))
    assert main(["report", str(tmp_path / "r")]) == 0, capsys.readouterr().err
    assert "svm_rgb" in (tmp_path / "r" / "report.html").read_text(encoding="utf-8")


def test_report_skips_a_damaged_report_rebuilds_the_rest_and_says_which(tmp_path, capsys):
    """`report WORK_DIR` with one cut report_inputs.json said there was no report at all (or, for a
    transfer report whose results.csv lacks columns, a KeyError traceback) and rebuilt nothing: now each
    damaged report is a line, the others are rebuilt, and the exit status is 2."""
    for name in ("good", "cut", "transfer"):
        _eval_report(tmp_path / name)
    (tmp_path / "cut" / "report_inputs.json").write_text('{"kind": "ev', encoding="utf-8")
    (tmp_path / "transfer" / "report_inputs.json").write_text(
        '{"kind": "transfer", "stand_ins": [], "classes": {}, "paper_of": {}}', encoding="utf-8")
    (tmp_path / "transfer" / "results.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    (tmp_path / "good" / "report.html").unlink()
    assert main(["report", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert (tmp_path / "good" / "report.html").is_file()
    assert f"report: skipped {tmp_path / 'cut'}: {tmp_path / 'cut' / 'report_inputs.json'}: damaged" in captured.out
    assert f"report: skipped {tmp_path / 'transfer'}: {tmp_path / 'transfer'}: not a complete transfer report" \
        in captured.out
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1
    assert captured.err.startswith("error: 2 of 3 reports could not be rebuilt")


def test_a_set_that_replaces_a_section_is_blamed_on_the_set_item(tmp_path, capsys):
    """`--set flow=3` was blamed on the config file ("configs/tiny.toml: [flow] must be a table")."""
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    for item, message in (("flow=3", "--set flow=3: [flow] is a section: set its keys one at a time"),
                          ("benchmark=3", "--set benchmark=3: [benchmark] is a section: set its keys one at a time")):
        try:
            load_config(TINY_CONFIG, [item])
        except ConfigError as err:
            assert str(err).startswith(message)
        else:
            raise AssertionError(f"--set {item} was accepted")


def test_a_fifo_as_config_is_named_as_such_not_missing(tmp_path, capsys):
    import os

    fifo = tmp_path / "settings.toml"
    os.mkfifo(fifo)
    assert main(["config", "--config", str(fifo)]) == 2  # and no hang reading it
    err = capsys.readouterr().err
    assert err == f"error: --config {fifo}: not a regular file (a FIFO, socket or device); give a TOML file\n"


def test_eval_out_that_is_a_file_is_one_line_and_the_file_is_kept(tmp_path, capsys):
    """`eval --out FILE` was a NotADirectoryError traceback from the cache writer of a worker."""
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    assert main(["eval", "--config", TINY_CONFIG, "--set", f"work_dir={tmp_path / 'work'}", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: eval --out {out} is a file; the report is a folder: give a folder name\n"
    assert out.read_text() == "mine"


def test_a_file_where_a_stage_makes_its_folder_is_one_line(tmp_path, capsys):
    """work_dir/flow (or train/..., transfer, show-flow) being a file was a FileExistsError or
    NotADirectoryError traceback from deep in the stage."""
    from tests.builders import TINY

    work = tmp_path / "work"
    sets = [f"work_dir={work}", f"dataset.root={work / 'synth'}", *TINY]
    args = [x for item in sets for x in ("--set", item)]
    assert main(["synth", "--config", str(REPO / "configs" / "synth.toml"), *args]) == 0
    (work / "flow").write_text("not a store")
    capsys.readouterr()
    assert main(["flow", "--config", str(REPO / "configs" / "synth.toml"), *args]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: the flow store {work / 'flow'}: a file is in the way, where a folder is to be made: "
                   "move it away or choose another work_dir / --out\n")
    assert (work / "flow").read_text() == "not a store"


def test_an_activitynet_entry_that_is_no_object_is_named_as_such(tmp_path):
    """`{"database": {"x": 5}}` was reported as "subset must be training, validation or testing, got 5"."""
    import pytest

    from pipeline.datasets.activitynet import read_activitynet
    from pipeline.datasets.config import DatasetConfig
    from pipeline.errors import PipelineError

    (tmp_path / "videos").mkdir()
    (tmp_path / "an.json").write_text('{"database": {"x": 5}}', encoding="utf-8")
    cfg = DatasetConfig(format="activitynet", root=str(tmp_path / "videos"), annotations=str(tmp_path / "an.json"))
    with pytest.raises(PipelineError, match=r"an.json: database\['x'\]: must be an object with 'subset' and "
                                            r"'annotations', got 5$"):
        read_activitynet(cfg, "val")


def test_a_missing_benchmark_flow_store_is_named_by_its_key(tmp_path, capsys):
    """A `benchmark.NAME.flow_store` pointing nowhere said only "run make flow": the key is named, before any work."""
    config = str(REPO / "configs" / "tiny_transfer.toml")
    assert main(["transfer", "--config", config, "--set", f"work_dir={tmp_path / 'work'}",
                 "--set", f"benchmark.synth.flow_store={tmp_path / 'nowhere'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: benchmark.synth.flow_store: no flow store at {tmp_path / 'nowhere'}")
    assert not (tmp_path / "work" / "transfer").exists() or not any((tmp_path / "work" / "transfer").rglob("*.npz"))


def test_refused_files_of_a_computed_video_id_do_not_stop_the_flow_stage(tmp_path, capsys):
    """`v.mp4` beside `v.avi` (or beside a dangling `v.avi`): the refused file's manifest row had the kept
    video's id, and "video id 'c/v' appears twice" stopped the stage before any video. Now the kept
    video and the rest are computed and the refused file is named; two refused files of one id are one
    failed row with both reasons."""
    import csv

    from tests.builders import moving_square, write_video

    root = tmp_path / "videos"
    for name in ("c/v.avi", "c/v.mp4", "c/w.mp4"):
        write_video(root / name, moving_square(4, seed=1))
    (root / "c" / "x.mp4").symlink_to(tmp_path / "gone.mp4")
    (root / "c" / "x.mkv").symlink_to(tmp_path / "gone.mkv")
    config = tmp_path / "flow.toml"
    config.write_text('[dataset]\nformat = "folder"\n[flow]\nsize = ""\nwarps = 1\nouter_iterations = 2\n'
                      'nscales = 2\njobs = 1\n', encoding="utf-8")
    assert main(["flow", "--config", str(config), "--set", f"dataset.root={root}",
                 "--set", f"work_dir={tmp_path / 'work'}"]) == 0
    out = capsys.readouterr().out
    assert ("flow: 1 refused file(s) share the id of a video computed here, so the manifest has no row of "
            "theirs: c/v.mp4: the video id c/v of c/v.avi (ids leave out the extension): rename one") in out
    with open(tmp_path / "work" / "flow" / "manifest.csv", newline="") as f:
        rows = {r["video_id"]: (r["status"], r["error"]) for r in csv.DictReader(f)}
    assert rows["c/v"] == rows["c/w"] == ("done", "")
    assert rows["c/x"] == ("failed", "refused: c/x.mkv: a dangling symbolic link; c/x.mp4: a dangling symbolic link")



def _flow_on_folder(tmp_path: Path, root: Path, *sets: str) -> int:
    """`flow` on a folder dataset at `root` with cheap TV-L1, the store under tmp_path/work."""
    config = tmp_path / "flow.toml"
    config.write_text('[dataset]\nformat = "folder"\n[flow]\nsize = ""\nwarps = 1\nouter_iterations = 2\n'
                      'nscales = 2\njobs = 1\n', encoding="utf-8")
    return main(["flow", "--config", str(config), "--set", f"dataset.root={root}",
                 "--set", f"work_dir={tmp_path / 'work'}", *(a for s in sets for a in ("--set", s))])


def test_a_finished_video_whose_file_turns_into_a_dangling_link_is_kept(tmp_path, capsys):
    """Its pack is whole: it is kept as a video whose source is gone, with one line (docs/flow.md).
    Was: a failed row (so `--strict` stopped, and the video left the mmaction2 lists)."""
    from flow.manifest import read_manifest
    from tests.builders import moving_square, write_video

    root = tmp_path / "videos"
    for name, seed in (("c/v.avi", 1), ("c/w.avi", 2)):
        write_video(root / name, moving_square(4, seed=seed))
    assert _flow_on_folder(tmp_path, root) == 0
    store = tmp_path / "work" / "flow"
    pack = (store / "c" / "w.pack").read_bytes()
    (root / "c" / "w.avi").rename(tmp_path / "w.avi")
    (root / "c" / "w.avi").symlink_to(tmp_path / "gone.avi")
    capsys.readouterr()
    assert main(["flow", "--strict", "--config", str(tmp_path / "flow.toml"), "--set", f"dataset.root={root}",
                 "--set", f"work_dir={tmp_path / 'work'}"]) == 0
    out = capsys.readouterr().out
    assert "flow: video c/w: its source is refused (refused: a dangling symbolic link): the stored video is kept" in out
    assert "2 videos: 0 computed, 2 already done, 0 failed" in out.replace("flow: ", "")
    rows = read_manifest(store / "manifest.csv")
    assert (rows["c/w"].status, rows["c/w"].frames, rows["c/w"].flow_pairs) == ("done", 4, 3)
    assert (store / "c" / "w.pack").read_bytes() == pack


def test_ids_with_whitespace_are_left_out_of_the_mmaction_lists_by_name(tmp_path, capsys):
    """mmaction2 splits a list's line at whitespace: `arm wrestling/v 4 0` read back as a video
    `arm` of `wrestling/v` frames. Those ids stay in the store and out of the lists, named once."""
    from tests.builders import moving_square, write_video

    root = tmp_path / "videos"
    for name, seed in (("arm wrestling/v.avi", 1), ("c/w.avi", 2)):
        write_video(root / name, moving_square(4, seed=seed))
    assert _flow_on_folder(tmp_path, root, "flow.store=mmaction") == 0
    out = capsys.readouterr().out
    assert ("flow: 1 video id(s) hold whitespace, which splits a line of mmaction2's lists: left out of them "
            "(rename their folders, e.g. spaces to _ as Kinetics' tools do): arm wrestling/v") in out
    store = tmp_path / "work" / "flow"
    assert (store / "folder_train_split_1_rawframes.txt").read_text() == "c/w 4 1\n"
    assert (store / "folder_train_split_1_rawframes_flow.txt").read_text() == "c/w 3 1\n"
    assert (store / "arm wrestling" / "v" / "img_00004.jpg").is_file()


def test_eval_out_into_a_folder_of_other_files_is_refused_and_they_are_kept(tmp_path, capsys):
    """`eval --out` into a folder of the user's replaced its results.md and deleted its features/ whole.
    A folder holding a report, or only what a killed eval leaves, is still written."""
    from pipeline.stages import not_a_report_folder

    out = tmp_path / "mine"
    (out / "features").mkdir(parents=True)
    (out / "results.md").write_text("keep")
    (out / "features" / "mine.npz").write_text("keep too")
    assert main(["eval", "--config", TINY_CONFIG, "--set", f"work_dir={tmp_path / 'work'}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: eval --out {out} holds files no evaluation wrote (features, results.md) and no report: a "
                   "report's files would replace or delete them (results.md, features/, ...); give a new or empty "
                   "folder\n")
    assert (out / "results.md").read_text() == "keep" and (out / "features" / "mine.npz").read_text() == "keep too"
    assert not (out / "eval.log").exists()  # no log of a refused run among the user's files
    killed = tmp_path / "killed"
    for name in ("cache/rgb", "split1/cache", ".report.tmp-x"):
        (killed / name).mkdir(parents=True)
    (killed / "eval.log").write_text("")
    assert not_a_report_folder(killed) == "" and not_a_report_folder(tmp_path / "new") == ""
    _eval_report(tmp_path / "done" / "split2")
    (tmp_path / "done" / "notes.txt").write_text("a user's note beside a report")
    assert not_a_report_folder(tmp_path / "done") == ""
    # A report killed while its files moved in (report.json removed first): its re-run repairs it.
    moving = tmp_path / "moving"
    _eval_report(moving)
    assert not (moving / ".report-moving").exists()

    import os
    real_replace = os.replace

    def killed_mid_move(source, target, *args, **kwargs):  # the kill as results.md moves in
        if Path(target) == moving / "results.md":
            raise KeyboardInterrupt
        return real_replace(source, target, *args, **kwargs)

    import pytest

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("fusion.report.os.replace", killed_mid_move)
        with pytest.raises(KeyboardInterrupt):
            _eval_report(moving)
    assert not (moving / "report.json").exists() and (moving / "results.md").is_file()  # the last run's
    assert not_a_report_folder(moving) == ""
    (moving / ".report-moving").unlink()
    assert not_a_report_folder(moving) != ""  # the same files, no marker: not taken for a report's
