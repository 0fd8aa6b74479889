"""`features` under careless use: two runs on one output, two inputs of one id, a stride of 0. Each
is one clear line, or the batch goes on without the input at fault; no output mixes two runs."""
from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest

from fusion import extract
from fusion.inputs import gather_inputs
from p3dbase.lock import try_lock
from pipeline import cli
from tests.builders import save_tiny_checkpoint, write_avi

# Cheap TV-L1 and few views: these tests check what is refused and recorded, not the numbers.
FAST = ["--set", "flow.size=", "--set", "flow.nscales=2", "--set", "flow.warps=1", "--set", "flow.inner_iterations=5",
        "--set", "flow.outer_iterations=2", "--set", "flow.median_filtering=1", "--set", "eval.clips=1",
        "--set", "eval.jobs=1", "--no-progress"]


@pytest.fixture
def rgb(tmp_path):
    return save_tiny_checkpoint(tmp_path / "rgb.pt", "rgb")


def test_a_second_features_run_on_one_output_is_turned_away(tmp_path, capsys, rgb):
    """Two `features --out f.npz` runs at once shared `f.npz.parts`: the second replaced its settings and
    parts while the first still wrote, and the first's file held rows of both under one meta. The second
    is refused at once, naming the output and the holder, and writes nothing."""
    video = write_avi(tmp_path / "a.avi", frames=8)
    out = tmp_path / "f.npz"
    with try_lock(tmp_path / ".f.npz.lock") as holder:
        assert holder is None
        assert cli.main(["features", str(video), "--rgb", str(rgb), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --out {out} is being written by another features run (pid {os.getpid()}): wait for it "
                   "to finish, or give another --out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.avi", "rgb.pt"]
    assert cli.main(["features", str(video), "--rgb", str(rgb), "--out", str(out), *FAST]) == 0  # once it let go


def test_parts_of_other_settings_are_computed_again_whatever_settings_json_says(tmp_path, monkeypatch, rgb):
    """Each part was named by its video id alone and trusted once settings.json matched: parts another
    run had written under other settings (svm_clips 3 here) went into an output whose meta said
    svm_clips 2. Each part now carries its settings key and one of another key is computed again."""
    videos = tmp_path / "videos"
    write_avi(videos / "a.avi", frames=12, seed=1)
    write_avi(videos / "b.avi", frames=12, seed=2)

    def interrupted(*args):
        raise KeyboardInterrupt  # killed after every part was written, before the output

    def parts_of(svm_clips: int, out):
        monkeypatch.setattr(extract, "_write", interrupted)
        assert cli.main(["features", str(videos), "--rgb", str(rgb), "--out", str(out), *FAST,
                         "--set", f"eval.svm_clips={svm_clips}"]) == 130
        monkeypatch.undo()
        return out.with_name(out.name + ".parts")

    mine, other = parts_of(2, tmp_path / "two.npz"), parts_of(3, tmp_path / "three.npz")
    (other / "settings.json").write_bytes((mine / "settings.json").read_bytes())  # as the other run replaced it
    out = tmp_path / "three.npz"
    assert cli.main(["features", str(videos), "--rgb", str(rgb), "--out", str(out), *FAST,
                     "--set", "eval.svm_clips=2"]) == 0
    assert cli.main(["features", str(videos), "--rgb", str(rgb), "--out", str(tmp_path / "ref.npz"), *FAST,
                     "--set", "eval.svm_clips=2"]) == 0
    with np.load(out) as got, np.load(tmp_path / "ref.npz") as ref:
        assert json.loads(str(got["meta"]))["svm_clips"] == 2
        np.testing.assert_array_equal(got["rgb"], ref["rgb"])


def _videos_sharing_an_id(root):
    write_avi(root / "a.avi", frames=12, seed=1)
    write_avi(root / "b.avi", frames=12, seed=2)
    shutil.copy(write_avi(root.parent / "c.avi", frames=12, seed=3), root / "a.mkv")  # one id, "a", two videos
    return root


def test_two_inputs_of_one_id_fail_the_second_alone(tmp_path, capsys, rgb):
    """`a.avi` beside `a.mkv` ended the whole batch ("would both have the id 'a'", status 2, nothing
    computed): the first in name order is kept, as the `folder` dataset reader keeps it, the second is
    recorded as failed with why, the others are computed, and the status is 1 as for any failed video."""
    videos = _videos_sharing_an_id(tmp_path / "dup")
    out = tmp_path / "f.npz"
    assert cli.main(["features", str(videos), "--rgb", str(rgb), "--out", str(out), *FAST]) == 1
    why = f"the video id a of {videos / 'a.avi'} (ids leave out the extension): rename one"
    assert f"features: failed {videos / 'a.mkv'}: {why}" in capsys.readouterr().out
    with np.load(out) as data:
        assert list(data["ids"]) == ["a", "b"]
        assert list(data["failed_ids"]) == [str(videos / "a.mkv")] and list(data["failed_reasons"]) == [why]
        kept = data["rgb"][0]
    alone = tmp_path / "alone.npz"
    assert cli.main(["features", str(videos / "a.avi"), "--rgb", str(rgb), "--out", str(alone), *FAST]) == 0
    with np.load(alone) as data:
        np.testing.assert_array_equal(data["rgb"][0], kept)  # a's row is a.avi's, not a.mkv's


def test_inputs_of_one_id_keep_the_first_of_a_list_and_of_the_sources(tmp_path):
    """The same rule for list files and for sources given side by side; a file named twice is one video."""
    write_avi(tmp_path / "x" / "v.avi", frames=6)
    write_avi(tmp_path / "y" / "v.avi", frames=6)
    listing = tmp_path / "list.txt"
    listing.write_text("x/v.avi\nx/v.mp4 3\nx/v.avi\n")
    videos, refused = gather_inputs([listing])
    assert [(v.video_id, v.path) for v in videos] == [("x/v", tmp_path / "x" / "v.avi")]
    assert refused == [(str(tmp_path / "x" / "v.mp4"),
                        f"the video id x/v of {tmp_path / 'x' / 'v.avi'} (ids leave out the extension): rename one")]
    videos, refused = gather_inputs([tmp_path / "y" / "v.avi", tmp_path / "x" / "v.avi"])
    assert [v.path for v in videos] == [tmp_path / "y" / "v.avi"] and refused[0][0] == str(tmp_path / "x" / "v.avi")


def test_predict_fails_a_second_input_of_one_id_alone(tmp_path, capsys, rgb):
    """predict stopped the batch there too, with nothing predicted (status 2)."""
    videos = _videos_sharing_an_id(tmp_path / "dup")
    assert cli.main(["predict", str(videos), "--rgb", str(rgb), "--json", *FAST]) == 1
    got = {p["video"]: p for p in json.loads(capsys.readouterr().out)}
    assert got[str(videos / "a.mkv")]["error"] == (f"the video id a of {videos / 'a.avi'} (ids leave out the "
                                                   "extension): rename one")
    assert "error" not in got[str(videos / "a.avi")] and "error" not in got[str(videos / "b.avi")]
    assert list(got)[-1] == str(videos / "a.mkv")  # the videos in order, then the refused input
    # Every kept video broken: the reason given is theirs, not the refused second input's.
    (videos / "a.avi").write_bytes(b"not a video")
    (videos / "b.avi").unlink()
    for tool in (["predict", str(videos)], ["features", str(videos), "--out", str(tmp_path / "f.npz")]):
        assert cli.main([*tool, "--rgb", str(rgb), *FAST]) == 2
        err = capsys.readouterr().err
        assert f"{videos / 'a.avi'}: cannot open" in err and "rename one" not in err, err


@pytest.mark.parametrize("out", ["f.npz", "snippets"])
def test_features_stride_zero_is_refused_as_a_stride(tmp_path, capsys, rgb, out):
    """`--stride 0` was taken for no --stride: into a .npz it silently wrote per-video features, into a
    folder it blamed --out ("must end in .npz"). It is refused as the stride it is, before any work."""
    video = write_avi(tmp_path / "a.avi", frames=8)
    assert cli.main(["features", str(video), "--rgb", str(rgb), "--out", str(tmp_path / out), "--stride", "0",
                     *FAST]) == 2
    assert capsys.readouterr().err.strip() == "error: --stride must be >= 1, got 0"
    assert not (tmp_path / out).exists()


def test_features_window_zero_is_refused_as_a_window(tmp_path, capsys, rgb):
    """`--window 0` was taken for the default window, and without --stride silently ignored."""
    video = write_avi(tmp_path / "a.avi", frames=8)
    assert cli.main(["features", str(video), "--rgb", str(rgb), "--out", str(tmp_path / "s"), "--stride", "4",
                     "--window", "0", *FAST]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --window 0: a snippet is one clip of the streams")
    assert cli.main(["features", str(video), "--rgb", str(rgb), "--out", str(tmp_path / "f.npz"), "--window", "0",
                     *FAST]) == 2
    assert "are for per-snippet features: give --stride too" in capsys.readouterr().err


def test_predict_stride_zero_is_refused_with_or_without_timeline(tmp_path, capsys, rgb):
    """`predict --stride 0` without --timeline was silently ignored (0 was taken for no --stride); with
    --timeline it meant the clip length, where `features --stride 0` is refused: it is refused in both
    commands, and the clip length is what no --stride gives (fusion.predict.Timeline)."""
    video = write_avi(tmp_path / "a.avi", frames=12)
    assert cli.main(["predict", str(video), "--rgb", str(rgb), "--stride", "0", *FAST]) == 2
    assert "give --timeline too" in capsys.readouterr().err
    timeline = tmp_path / "timeline"
    assert cli.main(["predict", str(video), "--rgb", str(rgb), "--timeline", "--stride", "0", "--out", str(timeline),
                     *FAST]) == 2
    assert "--stride must be >= 1 frames between snippet starts (leave it out for the clip length), got 0" in (
        capsys.readouterr().err)
    assert cli.main(["predict", str(video), "--rgb", str(rgb), "--timeline", "--out", str(timeline), *FAST]) == 0
    info = json.loads((timeline / "a.timeline.json").read_text())
    assert info["stride"] == info["window"] == 4


def test_two_inputs_of_one_id_fail_the_second_alone_in_a_features_folder(tmp_path, capsys, rgb):
    """`features --stride` on `a.avi` beside `a.mkv` ended the batch with status 2 and nothing computed:
    the second is refused in manifest.csv with why, the others are computed, status 1."""
    videos = _videos_sharing_an_id(tmp_path / "dup")
    out = tmp_path / "snippets"
    assert cli.main(["features", str(videos), "--rgb", str(rgb), "--out", str(out), "--stride", "4", *FAST]) == 1
    why = f"the video id a of {videos / 'a.avi'} (ids leave out the extension): rename one"
    assert f"features: failed {videos / 'a.mkv'}: {why}" in capsys.readouterr().out
    with open(out / "manifest.csv", newline="") as f:
        rows = [(r["video_id"], r["status"], r["reason"]) for r in csv.DictReader(f)]
    assert rows == [("a", "done", ""), ("b", "done", ""), (str(videos / "a.mkv"), "failed", why)]
    assert json.loads((out / "a.json").read_text())["video"] == str(videos / "a.avi")


def test_a_frame_folder_with_a_fifo_for_an_image_is_listed_and_fails_naming_it(tmp_path):
    """A FIFO in an image's place: the folder is still a video of the inputs (it vanished from them
    without a word when scan refused it), and reading it fails naming the FIFO."""
    from flow.errors import FlowError
    from fusion.inputs import FolderReader
    from tests.builders import write_rawframes

    good = write_rawframes(tmp_path / "videos" / "a", frames=4, flows=0)
    bad = write_rawframes(tmp_path / "videos" / "b", frames=4, flows=0)
    (bad / "img_00002.jpg").unlink()
    os.mkfifo(bad / "img_00002.jpg")
    moved = tmp_path / "videos" / "c"  # every frame a link to nothing (the frames moved away)
    moved.mkdir()
    for k in (1, 2):
        (moved / f"img_{k:05d}.jpg").symlink_to(tmp_path / f"gone{k}.jpg")
    (good / "cover.jpg").symlink_to(tmp_path / "gone.jpg")  # no frame's name: not looked at
    assert [(v.video_id, v.path) for v in gather_inputs([tmp_path / "videos"])[0]] == [
        ("a", good), ("b", bad), ("c", moved)]
    assert len(FolderReader(good).files) == 4
    with pytest.raises(FlowError, match=rf"^{bad / 'img_00002.jpg'}: not a regular file \(a FIFO"):
        FolderReader(bad)
    with pytest.raises(FlowError, match=rf"^{moved / 'img_00001.jpg'}: a symbolic link that leads to no JPEG"):
        FolderReader(moved)
