"""The Kinetics reader finds clips by walking the tree once and takes each entry's type from that
walk (no stat per clip): links, FIFOs and folders named like clips must still be told apart from
plain files exactly as a stat would, and clashes resolved in the same order as before."""
import logging
import os
from pathlib import Path, PurePosixPath

import pytest

from pipeline.datasets import DatasetConfig, read_dataset
from pipeline.datasets.files import index_videos, video_id_of, walk_videos
from pipeline.errors import DatasetError

HEADER = "label,youtube_id,time_start,time_end,split\n"


def kinetics(tmp_path: Path, rows: list[str]) -> tuple[Path, DatasetConfig]:
    root, ann = tmp_path / "k700", tmp_path / "annotations"
    ann.mkdir(parents=True)
    (ann / "train.csv").write_text(HEADER + "".join(f"{row}\n" for row in rows))
    root.mkdir()
    return root, DatasetConfig(format="kinetics", root=str(root), annotations=str(ann))


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_links_fifos_and_folders_named_like_clips_are_told_from_plain_files(tmp_path):
    ids = ["plain", "inlink", "outlink", "dangling", "fifo", "folder"]
    root, cfg = kinetics(tmp_path, [f"run,{i},0,10,train" for i in ids])
    clip = {i: f"{i}_000000_000010.mp4" for i in ids}
    touch(root / "train" / "run" / clip["plain"])
    touch(root / "elsewhere" / "target.mp4")
    (root / "train" / "run" / clip["inlink"]).symlink_to(root / "elsewhere" / "target.mp4")  # inside: fine
    outside = touch(tmp_path / "secret.mp4")
    (root / "train" / "run" / clip["outlink"]).symlink_to(outside)
    (root / "train" / "run" / clip["dangling"]).symlink_to(tmp_path / "gone.mp4")
    os.mkfifo(root / "train" / "run" / clip["fifo"])
    touch(root / "train" / "run" / clip["folder"] / "notes.txt")  # a folder where a clip would be

    data = read_dataset(cfg)

    assert [(v.video_id, v.path) for v in data.videos] == [
        (f"train/run/{clip[i][:-4]}", root / "train" / "run" / clip[i]) for i in ("plain", "inlink")]
    assert [v.path.name for v in data.videos] == [clip["plain"], clip["inlink"]]  # a real Path, parts and all
    assert data.refused == [
        (f"train/run/{clip['outlink']}", f"a symbolic link to {outside}, outside the dataset root {root}"),
        (f"train/run/{clip['dangling']}", "a dangling symbolic link"),
        (f"train/run/{clip['fifo']}", "not a regular file (a FIFO, socket or device)"),
    ]
    assert data.missing == ["folder_000000_000010"]


def test_the_walk_finds_what_os_walk_found_in_the_same_order(tmp_path, caplog):
    root = tmp_path / "root"
    for name in ["b/x.mp4", "a/x.MKV", "a/y.avi", "y.webm", "a/.hidden/z.mp4", ".cache/w.mp4", "c/._v.mp4",
                 "c/v.mp4", "c/notes.txt", "c/archive.tar", "linked/u.mp4"]:
        touch(root / name)
    (root / "d").symlink_to(root / "linked")  # a link to a folder: not followed
    (root / "c" / "link.mp4").symlink_to(root / "c" / "v.mp4")
    with caplog.at_level(logging.WARNING):
        found, irregular = walk_videos(root)
    assert found == {"y": "y.webm", "x": "a/x.MKV", "v": "c/v.mp4", "link": "c/link.mp4", "u": "linked/u.mp4"}
    assert irregular == {"c/link.mp4"}
    assert "a/y.avi" in caplog.text and "y.webm" in caplog.text  # the root's own files come first
    assert "a/x.MKV and b/x.mp4 hold the same clip" in caplog.text
    assert index_videos(root) == found


def test_an_unreadable_folder_is_skipped_like_os_walk_skips_it(tmp_path):
    root = tmp_path / "root"
    touch(root / "ok" / "a.mp4")
    touch(root / "locked" / "b.mp4")
    (root / "locked").chmod(0)
    try:
        if os.access(root / "locked", os.R_OK):
            pytest.skip("running as a user who reads any folder")
        assert walk_videos(root) == ({"a": "ok/a.mp4"}, set())
    finally:
        (root / "locked").chmod(0o755)


@pytest.mark.parametrize("rel, video_id", [
    ("train/run/a_000001_000011.mp4", "train/run/a_000001_000011"),
    ("a/b.MP4", "a/b"),
    ("x/y.tar.avi", "x/y.tar"),
    ("a..mp4", "a."),
    ("a/.mp4", "a/.mp4"),  # only dots before the extension: no extension (os.path.splitext)
    ("a/...avi", "a/...avi"),
    ("a.mp4/frames", "a.mp4/frames"),  # a rawframe folder under a dotted folder keeps its name
    ("cls/v_x", "cls/v_x"),
    ("a/b.txt", "a/b.txt"),
])
def test_video_ids_drop_only_a_video_extension(rel, video_id):
    assert video_id_of(rel) == video_id_of(PurePosixPath(rel)) == video_id


@pytest.mark.parametrize("start, end, expected", [
    ("417", "427", "abc_000417_000427"),
    ("417.0", " 427 ", "abc_000417_000427"),  # written as a float, or with spaces: the same clip
    ("0417", "0427", "abc_000417_000427"),
])
def test_clip_times_written_in_any_whole_form_name_the_same_clip(tmp_path, start, end, expected):
    root, cfg = kinetics(tmp_path, [f"run,abc,{start},{end},train"])
    touch(root / "run" / f"{expected}.mp4")
    assert [v.video_id for v in read_dataset(cfg).videos] == [f"run/{expected}"]


@pytest.mark.parametrize("row, reason", [
    ("run,abc,-3,10,train", "time_start must be a whole number of seconds >= 0, got '-3'"),
    ("run,abc,4.5,10,train", "time_start must be a whole number of seconds >= 0, got '4.5'"),
    ("run,abc,4,1e,train", "time_end must be a number of seconds, got '1e'"),
    ("run,,4,10,train", "bad youtube_id ''"),
    ("run,abc,4,10,train,extra", "expected 5 columns"),
])
def test_bad_clip_rows_are_named_by_line(tmp_path, row, reason):
    root, cfg = kinetics(tmp_path, [",,,,", "", row])  # blank rows, with or without commas, are skipped
    with pytest.raises(DatasetError, match=reason) as err:
        read_dataset(cfg)
    assert "train.csv:4:" in str(err.value)
