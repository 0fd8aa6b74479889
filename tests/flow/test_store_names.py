"""Video ids the store cannot keep under their names fail one by one, and nothing of another video is
touched: a class folder named like one of the store's own files (config.toml, manifest.csv, index/),
a folder where another video's pack belongs, a video inside another's mmaction frame folder, a name
too long for the temporary names beside it, a store folder that cannot be written."""
import csv
import dataclasses

import pytest

from flow.errors import FlowError
from flow.stage import FlowJob, run_flow
from flow.store import MAX_NAME_BYTES, nested_problems, open_store, store_name_problem
from tests.builders import moving_square, write_video


def _rows(out):
    with open(out / "manifest.csv", newline="") as f:
        return {r["video_id"]: (r["status"], r["error"]) for r in csv.DictReader(f)}


@pytest.fixture
def clip(tmp_path):
    return write_video(tmp_path / "src" / "v.avi", moving_square(4, seed=1))


def test_which_ids_the_store_cannot_keep():
    assert store_name_problem("Cls/v_1", "packed") == store_name_problem("Cls/v_1", "mmaction") == ""
    for video_id in ("config.toml/v", "store.json/v", "manifest.csv/v", "index/main.jsonl", "flow.log/v",
                     "missing.txt/a/b"):
        assert "has the name of one of the store's own files" in store_name_problem(video_id, "packed")
    # A video of that name (no folder) is a pack file beside them in the packed layout, a folder in mmaction.
    assert store_name_problem("manifest.csv", "packed") == ""
    assert "own files" in store_name_problem("manifest.csv", "mmaction")
    assert store_name_problem("c/x.pack", "packed") == ""  # its pack is c/x.pack.pack
    assert store_name_problem("c/x.pack/v", "packed") == (
        "video id c/x.pack/v: its folder c/x.pack is where video c/x keeps its pack: rename that folder")
    assert store_name_problem("c/x.pack/v", "mmaction") == ""
    assert store_name_problem("c/" + "n" * MAX_NAME_BYTES, "packed") == ""
    long = store_name_problem("c/" + "é" * (MAX_NAME_BYTES // 2 + 1), "packed")  # two bytes a character
    assert f"its name is {MAX_NAME_BYTES + 2} bytes" in long and f"at most {MAX_NAME_BYTES}" in long
    assert nested_problems(["c/sub", "c/sub/v", "c/sub/w/x", "c/subway"], "packed") == {}
    assert sorted(nested_problems(["c/sub", "c/sub/v", "c/sub/w/x", "c/subway"], "mmaction")) == ["c/sub/v",
                                                                                                 "c/sub/w/x"]


def test_a_class_named_like_a_store_file_fails_its_videos_and_the_rest_finishes(clip, tmp_path, fast_cfg):
    """A class folder `config.toml` stopped every run at its start (NotADirectoryError), and one named
    `manifest.csv` after every video was computed, so the stage could never finish."""
    out = tmp_path / "flow"
    jobs = [FlowJob(video_id, clip) for video_id in ("config.toml/v", "manifest.csv/v", "c/w")]
    summary = run_flow(jobs, out, fast_cfg, config_toml="# settings\n")
    assert (summary.computed, summary.failed) == (1, 2)
    rows = _rows(out)
    assert rows["c/w"] == ("done", "")
    assert rows["config.toml/v"][0] == "failed" and "config.toml has the name of one of" in rows["config.toml/v"][1]
    assert (out / "config.toml").read_text() == "# settings\n" and (out / "manifest.csv").is_file()
    assert run_flow(jobs, out, fast_cfg).skipped == 1  # and a re-run goes through


def test_mmaction_a_video_inside_another_video_folder_fails_and_neither_is_lost(clip, tmp_path, fast_cfg):
    """`c/sub` and `c/sub/v`: finishing c/sub renamed its old folder away and deleted it with c/sub/v
    inside, which the manifest still called done; `index/main.jsonl` wrote frames into the index."""
    out = tmp_path / "flow"
    cfg = dataclasses.replace(fast_cfg, store="mmaction")
    jobs = [FlowJob(video_id, clip) for video_id in ("c/sub/v", "c/sub", "index/main.jsonl")]
    summary = run_flow(jobs, out, cfg)
    assert (summary.computed, summary.failed) == (1, 2)
    rows = _rows(out)
    assert rows["c/sub"] == ("done", "")
    assert rows["c/sub/v"] == ("failed", "video id c/sub/v lies inside the frame folder of video c/sub (the "
                                         "mmaction layout: a video is a folder): rename one")
    assert open_store(out).video_ids() == ["c/sub"] and not (out / "c" / "sub" / "v").exists()
    assert run_flow(jobs, out, cfg).skipped == 1  # the index is intact
    # A refused `c/sub` (a dangling link) is never written: it takes no folder from `c/sub/v`.
    jobs = [FlowJob("d/sub", clip.with_name("gone.avi"), error="refused: a dangling symbolic link"),
            FlowJob("d/sub/v", clip)]
    assert run_flow(jobs, tmp_path / "flow2", cfg).computed == 1


def test_a_folder_where_a_pack_belongs_is_kept_and_its_would_be_video_fails(clip, tmp_path, fast_cfg):
    """`c/x` and `c/x.pack/v`: the second's folder is where the first's pack belongs; the first failed,
    and its clean-up deleted the folder with the finished c/x.pack/v in it."""
    out = tmp_path / "flow"
    summary = run_flow([FlowJob("c/x", clip), FlowJob("c/x.pack/v", clip)], out, fast_cfg)
    assert (summary.computed, summary.failed) == (1, 1)
    assert "is where video c/x keeps its pack" in _rows(out)["c/x.pack/v"][1]
    # A folder of the user's there: the video fails naming it, and the folder and what it holds stay.
    out2 = tmp_path / "flow2"
    run_flow([FlowJob("c/w", clip)], out2, fast_cfg)
    (out2 / "c" / "y.pack").mkdir(parents=True)
    (out2 / "c" / "y.pack" / "keep.txt").write_text("mine")
    run_flow([FlowJob("c/y", clip), FlowJob("c/w", clip)], out2, fast_cfg)
    assert "is a folder where its pack belongs" in _rows(out2)["c/y"][1]
    assert (out2 / "c" / "y.pack" / "keep.txt").read_text() == "mine"
    with pytest.raises(FlowError, match=r"c/y.pack is a folder where the pack of video c/y belongs: move it out"):
        open_store(out2).remove("c/y")
    assert (out2 / "c" / "y.pack" / "keep.txt").is_file()


def test_a_name_too_long_for_the_stores_files_fails_alone(clip, tmp_path, fast_cfg):
    """A 250-byte file name is legal, but `.<name>.pack.lock` is not: the lock's ENAMETOOLONG stopped the
    whole run (every re-run too), and a 240-byte name failed with a raw OSError."""
    out = tmp_path / "flow"
    long_id = "c/" + "L" * 250
    summary = run_flow([FlowJob(long_id, clip), FlowJob("c/w", clip)], out, fast_cfg)
    assert (summary.computed, summary.failed) == (1, 1)
    assert "its name is 250 bytes" in _rows(out)[long_id][1]


def test_a_store_folder_that_cannot_be_written_fails_its_videos_only(clip, tmp_path, fast_cfg):
    """Taking a video's lock in a folder of the store it cannot be made in (here a file where the class
    folder belongs; no permission does the same) stopped the run with the videos of other folders pending."""
    out = tmp_path / "flow"
    run_flow([FlowJob("d/u", clip)], out, fast_cfg)
    (out / "c").write_text("not a folder")
    summary = run_flow([FlowJob("c/v", clip), FlowJob("e/w", clip)], out, fast_cfg)
    assert (summary.computed, summary.failed) == (1, 1)
    assert _rows(out)["c/v"] == ("failed", f"cannot write it in the store: {out / 'c'}: a file is where a folder "
                                           "should be")
    assert _rows(out)["e/w"] == ("done", "")
