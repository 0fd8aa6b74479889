"""The Sports-1M reader on a miniature of the release in its real layout, and on the real labels.txt."""
from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import pytest

from pipeline.datasets import DatasetConfig, read_dataset
from pipeline.datasets.sports1m import read_labels, youtube_id
from pipeline.errors import DatasetError

NAMES = ["boomerang", "boxing", "bowling", "candlepin bowling", "bowls", "yağlı güreş"]
URL = "https://www.youtube.com/watch?v="
TRAIN = [  # gzip-compressed, as distributed
    f"{URL}UDqivjS-lpI 1,2",  # the README's example shape: two labels
    f"{URL}a_b-c_d-e_f 0",
    f"{URL}gone_000001 3",  # never downloaded
    f"{URL}ABPsSSS2uY0 5",
    "",
    f"{URL}a_b-c_d-e_f 4",  # listed again: labels merged
]
TEST = [  # plain text
    f"{URL}test-video1 2,0,5",
    f"{URL}gone_000002 1",
    f"{URL}x 4",
]
FOLD_TRAIN = [f"{URL}ABPsSSS2uY0 5", f"{URL}UDqivjS-lpI 1"]
FOLD_TEST = [f"{URL}ABPsSSS2uY0 3", f"{URL}test-video1 2"]  # ABPsSSS2uY0: in both (as in the README)
VIDEOS = ["UDqivjS-lpI.mp4", "a_b-c_d-e_f.webm", "ABPsSSS2uY0.mkv", "test-video1.MP4", "x.avi"]


def write(path: Path, lines: list[str], gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(f"{line}\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.fixture
def release(tmp_path: Path) -> tuple[Path, Path]:
    ann = tmp_path / "sports-1m-dataset"
    write(ann / "labels.txt", NAMES)
    write(ann / "original/train_partition.txt.gz", TRAIN, gz=True)
    write(ann / "original/test_partition.txt", TEST)
    write(ann / "cross-validation/sports0_train.txt.gz", FOLD_TRAIN, gz=True)
    write(ann / "cross-validation/sports0_test.txt", FOLD_TEST)
    root = tmp_path / "videos"
    root.mkdir()
    for name in VIDEOS:
        (root / name).write_bytes(b"")
    (root / ".gone_000001.mp4").write_bytes(b"")  # hidden (a partial download): not a video
    (root / "gone_000002.part").write_bytes(b"")  # not a container
    return ann, root


def read(ann: Path, root: Path, split: str = "1"):
    return read_dataset(DatasetConfig(format="sports1m", root=str(root), annotations=str(ann), split=split))


def test_original_partitions_plain_and_gz(release, caplog):
    ann, root = release
    with caplog.at_level(logging.WARNING, logger="pipeline.datasets"):
        data = read(ann, root)
    by_id = {v.video_id: v for v in data.videos}
    assert data.classes == NAMES
    assert sorted(by_id) == ["ABPsSSS2uY0", "UDqivjS-lpI", "a_b-c_d-e_f", "test-video1", "x"]
    assert by_id["UDqivjS-lpI"].labels == (1, 2) and by_id["UDqivjS-lpI"].label == 1
    assert by_id["UDqivjS-lpI"].class_name == "boxing"
    assert by_id["a_b-c_d-e_f"].labels == (0, 4)  # the repeated line's label merged in
    assert by_id["test-video1"].labels == (2, 0, 5)  # order as listed
    assert by_id["ABPsSSS2uY0"].class_name == "yağlı güreş"
    assert [v.split for v in data.videos] == ["train", "train", "train", "test", "test"]
    assert by_id["test-video1"].path == root / "test-video1.MP4"
    assert by_id["a_b-c_d-e_f"].path == root / "a_b-c_d-e_f.webm"
    assert data.missing == ["gone_000001", "gone_000002"]
    assert data.refused == []
    # the unavailable videos are one summary line, not a line each
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "5 videos found (3 train, 2 test)" in lines[0]
    assert "2 of 7 listed videos are not under" in lines[0] and "1 repeated line(s) merged" in lines[0]


def test_fold_is_a_split_and_a_video_in_both_lists_is_test_only(release):
    ann, root = release
    data = read(ann, root, "fold0")
    assert data.split == "fold0"
    assert [(v.video_id, v.labels, v.split) for v in data.videos] == [
        ("UDqivjS-lpI", (1,), "train"), ("ABPsSSS2uY0", (3,), "test"), ("test-video1", (2,), "test")]


def test_fold_split_names_are_checked(release):
    ann, root = release
    with pytest.raises(DatasetError, match=r"split: must be one of 1, all, fold0.*fold9 for format sports1m, "
                                           r"got 'fold10'"):
        read(ann, root, "fold10")
    with pytest.raises(DatasetError, match="sports1_train.txt"):  # fold 1 is not in the miniature
        read(ann, root, "fold1")


@pytest.mark.parametrize(("line", "message"), [
    (f"{URL}UDqivjS-lpI 1, 2", r"train_partition.txt:3: expected 'URL label\[,label...\]'"),
    (f"{URL}UDqivjS-lpI", r"train_partition.txt:3: expected 'URL label\[,label...\]'"),
    (f"{URL}UDqivjS-lpI 1,x", r"train_partition.txt:3: label must be an integer, got 'x'$"),
    (f"{URL}UDqivjS-lpI 1_0", r"train_partition.txt:3: label must be an integer, got '1_0'$"),  # int(): 10
    (f"{URL}UDqivjS-lpI 0,\u0661", r"train_partition.txt:3: label must be an integer, got '\u0661'$"),  # int(): 1
    (f"{URL}UDqivjS-lpI 6", r"train_partition.txt:3: label 6 is outside 0..5 \(labels.txt has 6 names\)"),
    (f"{URL}UDqivjS-lpI -1", r"train_partition.txt:3: label -1 is outside 0..5"),
    ("https://www.youtube.com/watch?v=a/b 1", r"train_partition.txt:3: no YouTube video id in"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    ann = tmp_path / "rel"
    write(ann / "labels.txt", NAMES)
    write(ann / "original/train_partition.txt", [f"{URL}a 0", f"{URL}b 1", line])
    write(ann / "original/test_partition.txt", [f"{URL}c 0"])
    (tmp_path / "v").mkdir()
    with pytest.raises(DatasetError, match=message):
        read(ann, tmp_path / "v")


def test_truncated_gz_names_the_file(release):
    ann, root = release
    path = ann / "original/train_partition.txt.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DatasetError, match=r"train_partition.txt.gz: cannot be read"):
        read(ann, root)


def test_a_damaged_gz_body_names_the_file(release):
    """A gzip header followed by a broken deflate stream raised zlib.error, a traceback."""
    ann, root = release
    path = ann / "original/train_partition.txt.gz"
    path.write_bytes(gzip.compress(b"x")[:10] + b"\xff" * 40)
    with pytest.raises(DatasetError) as err:
        read(ann, root)
    assert str(err.value) == f"{path}: cannot be read (Error -3 while decompressing data: invalid block type)"


def test_a_class_name_with_a_control_character_is_refused(release):
    ann, root = release
    write(ann / "labels.txt", ["boomerang", "box\x07ing"])
    with pytest.raises(DatasetError) as err:
        read(ann, root)
    assert str(err.value) == f"{ann / 'labels.txt'}:2: class name 'box\\x07ing' holds a control character"


def test_missing_release_file_and_folder(release, tmp_path):
    ann, root = release
    (ann / "original/test_partition.txt").unlink()
    with pytest.raises(DatasetError, match=r"test_partition.txt \(nor test_partition.txt.gz\)"):
        read(ann, root)
    with pytest.raises(DatasetError, match="must be the Sports-1M release folder"):
        read(ann / "labels.txt", root)
    with pytest.raises(DatasetError, match="annotations: required for format sports1m"):
        read_dataset(DatasetConfig(format="sports1m", root=str(root)))


def test_no_video_found_is_a_wrong_root(release, tmp_path):
    ann, _ = release
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"none of the 7 videos listed in .* exist under .*empty .*"
                                           r"<root>/<youtube id>.<ext>.*is dataset.root right\?"):
        read(ann, tmp_path / "empty")


def test_two_files_of_one_video_and_links(release, tmp_path, caplog):
    ann, root = release
    (root / "x.mp4").write_bytes(b"")  # x.avi and x.mp4: the first in sorted order
    os.mkfifo(root / "x.webm")  # a third file of x, a FIFO: not the one taken, so not refused either
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"")
    (root / "UDqivjS-lpI.mp4").unlink()
    os.symlink(outside, root / "UDqivjS-lpI.mp4")  # a link out of the root is refused, not read
    os.mkfifo(root / "test-video1.webm")
    (root / "test-video1.MP4").unlink()
    with caplog.at_level(logging.WARNING, logger="pipeline.datasets"):
        data = read(ann, root)
    by_id = {v.video_id: v for v in data.videos}
    assert by_id["x"].path == root / "x.avi"
    assert "UDqivjS-lpI" not in by_id and "test-video1" not in by_id
    assert [name for name, _ in data.refused] == ["UDqivjS-lpI.mp4", "test-video1.webm"]
    assert "outside the dataset root" in data.refused[0][1] and "FIFO" in data.refused[1][1]
    assert any("1 video id(s) have more than one file (e.g. x)" in r.getMessage() for r in caplog.records)


def test_youtube_ids():
    assert youtube_id(f"{URL}UDqivjS-lpI") == "UDqivjS-lpI"
    assert youtube_id("https://www.youtube.com/watch?feature=player&v=a-b_c&t=10") == "a-b_c"
    assert youtube_id("https://youtu.be/a-b_c") == "a-b_c"
    assert youtube_id("a-b_c") == "a-b_c"
    for bad in (f"{URL}a/b", f"{URL}", "https://example.com/a.mp4", "../x"):
        assert youtube_id(bad) == ""


def test_training_items_keep_every_label(release):
    from pipeline.datasets import items

    ann, root = release
    data = read(ann, root)
    assert items(data.train()) == [("UDqivjS-lpI", (1, 2)), ("a_b-c_d-e_f", (0, 4)), ("ABPsSSS2uY0", 5)]


def test_real_labels_txt(shared_data):
    names = read_labels(shared_data / "sports1m" / "labels.txt")
    assert len(names) == 487
    assert names[0] == "boomerang" and names[486] == "model aircraft"  # the README's first and last
    assert names[49] == "trampolining" and names[26] == "tumbling (gymnastics)"  # the README's fold example
    assert "yağlı güreş" in names  # UTF-8, as the release says


def test_flow_train_eval_on_a_tiny_sports1m(tmp_path, capsys):
    """configs/sports1m.toml end to end on SynthActions videos renamed as YouTube ids: the flow stage
    lists the unavailable videos in one file, the RGB stream trains on multi-label videos for the
    configured number of iterations, eval scores seeded random clips and sets the paper's table beside ours."""
    import csv
    import shutil

    from pipeline.cli import main
    from streams.checkpoint import read_checkpoint
    from tests.builders import REPO, TINY

    synth = tmp_path / "synth"
    assert main(["synth", "--config", str(REPO / "configs/synth.toml"), "--set", f"dataset.root={synth}",
                 *[x for item in TINY if item.startswith("synth.") for x in ("--set", item)]]) == 0
    sources = sorted(p for p in synth.rglob("*_c01.avi") if "_g02_" not in p.name)  # 4 train (g01), 4 test (g03)
    classes = sorted({p.parent.name for p in sources})  # 4 classes: appearance x motion
    root = tmp_path / "videos"
    root.mkdir()
    lines = {"train": [], "test": []}
    for k, path in enumerate(sources):
        video = f"v{k:02d}-{path.stem[-7:]}_x"  # ids with '-' and '_'
        shutil.copy(path, root / f"{video}.avi")
        label = str(classes.index(path.parent.name))
        if k % 3 == 0:
            label += f",{(int(label) + 1) % len(classes)}"  # a multi-label video
        lines["test" if "g03" in path.stem else "train"].append(f"{URL}{video} {label}")
    lines["train"].append(f"{URL}not_online1 0")
    ann = tmp_path / "release"
    write(ann / "labels.txt", classes)
    write(ann / "original/train_partition.txt.gz", lines["train"], gz=True)
    write(ann / "original/test_partition.txt.gz", lines["test"], gz=True)
    work = tmp_path / "work"
    tiny = [x for item in TINY if not item.startswith(("synth.", "eval.clips", "train.epochs"))
            for x in ("--set", item)]
    sets = ["--config", str(REPO / "configs/sports1m.toml"), "--set", f"work_dir={work}", "--set",
            f"dataset.root={root}", "--set", f"dataset.annotations={ann}", "--set", "model.arch=p3d_tiny",
            "--set", "model.pretrained=", "--set", "train.iterations=2", "--set", "train.lr_steps=[1.0]",
            "--set", "eval.clips=3", *tiny]
    assert main(["flow", *sets]) == 0
    assert (work / "flow/missing.txt").read_text() == "not_online1\n"
    assert main(["train", "--stream", "rgb", *sets]) == 0
    ckpt = read_checkpoint(work / "train/rgb/split1/last.pt")
    assert ckpt.step == 2 and ckpt.classes == classes
    evaluate = ["eval", "--rgb", str(work / "train/rgb/split1"), "--out", str(work / "eval")]
    assert main([*evaluate, *sets]) == 0
    rows = list(csv.DictReader(open(work / "eval/results.csv")))
    assert [r["method"] for r in rows] == ["rgb"] and rows[0]["videos"] == "4"
    assert "3 random (seed 0) clips x center crop" in rows[0]["details"]
    results = (work / "eval/results.md").read_text()
    assert "| P3D ResNet (paper) | 47.9 | 66.4 | 87.4 |" in results and "| ours: rgb |" in results
    first = (work / "eval/scores.csv").read_bytes()
    shutil.rmtree(work / "eval/cache")  # computed again, not read back: the same random clips again
    assert main([*evaluate, *sets]) == 0
    assert (work / "eval/scores.csv").read_bytes() == first


@pytest.mark.parametrize("reverse", [False, True])
def test_the_file_taken_for_a_video_does_not_depend_on_directory_order(tmp_path, monkeypatch, reverse):
    import contextlib

    from pipeline.datasets import sports1m

    for name in ("x.avi", "x.mp4", "y.mp4"):
        (tmp_path / name).write_bytes(b"")
    os.mkfifo(tmp_path / "x.webm")  # a FIFO of x that is not the file taken: nothing to look at closer
    os.symlink(tmp_path / "y.mp4", tmp_path / "z.mkv")
    real = os.scandir

    @contextlib.contextmanager
    def scandir(path):  # the directory's entries in a chosen order
        with real(path) as entries:
            yield iter(sorted(entries, key=lambda e: e.name, reverse=reverse))

    monkeypatch.setattr(sports1m.os, "scandir", scandir)
    found, closer = sports1m.scan_videos(tmp_path)
    assert found == {"x": "x.avi", "y": "y.mp4", "z": "z.mkv"}
    assert closer == {"z"}
