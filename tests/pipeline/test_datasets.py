"""Dataset readers against annotation files written byte for byte the way the real ones are."""
import json
import logging
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest

from p3dbase.errors import shown
from pipeline.datasets import DatasetConfig, VideoRecord, items, read_dataset
from pipeline.errors import DatasetError
from tests.builders import deny_as_for_a_user


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def touch(root: Path, *names: str) -> None:
    for name in names:
        write(root / name, b"")


# --- UCF101 -----------------------------------------------------------------------------------------

CLASS_IND = b"1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n3 YoYo\r\n"
TRAIN1 = (b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
          b"HandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\n"
          b"YoYo/v_YoYo_g25_c04.avi 3\r\n")
TEST1 = b"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\nHandstandPushups/v_HandStandPushups_g01_c03.avi\r\n"
UCF_VIDEOS = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "HandstandPushups/v_HandStandPushups_g08_c01.avi",
              "YoYo/v_YoYo_g25_c04.avi", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
              "HandstandPushups/v_HandStandPushups_g01_c03.avi"]


@pytest.fixture
def ucf(tmp_path):
    root, ann = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    write(ann / "classInd.txt", CLASS_IND)
    for n in (1, 2, 3):
        write(ann / f"trainlist0{n}.txt", TRAIN1)
        write(ann / f"testlist0{n}.txt", TEST1)
    # Split 2 swaps the roles of two videos, so "all" and .splits() can be told apart.
    write(ann / "trainlist02.txt", b"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\r\n"
                                   b"HandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\n")
    write(ann / "testlist02.txt", b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi\r\n")
    touch(root, *UCF_VIDEOS)
    return DatasetConfig(format="ucf101", root=str(root), annotations=str(ann))


def test_ucf101_records(ucf):
    data = read_dataset(ucf)
    root = Path(ucf.root)
    assert data.classes == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    assert data.videos == [
        VideoRecord("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01", root / UCF_VIDEOS[0], 0, (0,), "ApplyEyeMakeup",
                    "train", "g08"),
        VideoRecord("HandstandPushups/v_HandStandPushups_g08_c01", root / UCF_VIDEOS[1], 1, (1,),
                    "HandstandPushups", "train", "g08"),
        VideoRecord("YoYo/v_YoYo_g25_c04", root / UCF_VIDEOS[2], 2, (2,), "YoYo", "train", "g25"),
        VideoRecord("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01", root / UCF_VIDEOS[3], 0, (0,), "ApplyEyeMakeup",
                    "test", "g01"),
        VideoRecord("HandstandPushups/v_HandStandPushups_g01_c03", root / UCF_VIDEOS[4], 1, (1,),
                    "HandstandPushups", "test", "g01"),
    ]
    assert [v.video_id for v in data.test()] == [UCF_VIDEOS[3][:-4], UCF_VIDEOS[4][:-4]]
    assert items(data.train())[1] == ("HandstandPushups/v_HandStandPushups_g08_c01", 1)
    assert data.missing == [] and data.splits() == {"1": data}


def test_ucf101_all_splits(ucf):
    data = read_dataset(ucf, "all")
    assert len(data.videos) == 5 and {v.split for v in data.videos} == {"unused"}
    per = data.splits()
    assert list(per) == ["1", "2", "3"]
    assert [v.video_id for v in per["2"].train()] == [UCF_VIDEOS[3][:-4], UCF_VIDEOS[1][:-4]]
    assert [v.video_id for v in per["2"].test()] == [UCF_VIDEOS[0][:-4]]


def test_ucf101_missing_video_is_skipped_and_reported(ucf, caplog):
    (Path(ucf.root) / UCF_VIDEOS[2]).unlink()
    with caplog.at_level(logging.WARNING):
        data = read_dataset(ucf)
    assert data.missing == [UCF_VIDEOS[2]]
    assert len(data.videos) == 4 and "YoYo/v_YoYo_g25_c04.avi" in caplog.text and "1 of 5" in caplog.text


def test_ucf101_wrong_root_is_an_error(ucf, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="none of the 5 videos .* is dataset.root right"):
        read_dataset(DatasetConfig(format="ucf101", root=str(tmp_path / "empty"), annotations=ucf.annotations))
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(DatasetConfig(format="ucf101", root=str(tmp_path / "nope"), annotations=ucf.annotations))


HSP = b"HandstandPushups/v_HandStandPushups_g08_c01.avi"


@pytest.mark.parametrize("name, line, text, reason", [
    ("trainlist01.txt", 2, HSP + b" two\r\n", "class id must be an integer"),
    ("trainlist01.txt", 2, HSP + b" 7\r\n", "class id 7 is not in"),
    ("trainlist01.txt", 2, HSP + b" 3\r\n", "disagrees with the folder"),
    ("trainlist01.txt", 2, b"../secret/v_X_g01_c01.avi 2\r\n", "escapes the dataset root"),
    ("trainlist01.txt", 2, b"/etc/v_X_g01_c01.avi 2\r\n", "escapes the dataset root"),
    ("trainlist01.txt", 2, b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n", "duplicate video"),
    ("trainlist01.txt", 2, b"Juggling/v_Juggling_g08_c01.avi 2\r\n", "is not a class in"),
    ("trainlist01.txt", 2, HSP + b"\r\n", "expected '<Class>/<video>.avi"),
    ("testlist01.txt", 2, b"v_HandStandPushups_g01_c03.avi\r\n", "expected a '<Class>/<video>' path"),
    ("classInd.txt", 2, b"2\r\n", "expected '<id> <ClassName>'"),
])
def test_ucf101_bad_line_names_file_and_line(ucf, name, line, text, reason):
    path = Path(ucf.annotations) / name
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line - 1] = text
    path.write_bytes(b"".join(lines))
    with pytest.raises(DatasetError, match=reason) as err:
        read_dataset(ucf)
    assert f"{path}:{line}:" in str(err.value)


def test_a_damaged_line_is_quoted_in_part_with_its_length(ucf):
    """A 100 kB line (a binary file glued to the list, a missing newline across a dump) was quoted whole:
    a 100 kB "one line" error. Now its first 80 characters and its length."""
    path = Path(ucf.annotations) / "trainlist01.txt"
    path.write_bytes(path.read_bytes() + b"x" * 100_000 + b"\n")
    with pytest.raises(DatasetError) as err:
        read_dataset(ucf)
    assert str(err.value).endswith(f"got {'x' * 80!r}... (100,000 characters)") and len(str(err.value)) < 400


def test_ucf101_class_ids_must_be_1_to_n(ucf):
    write(Path(ucf.annotations) / "classInd.txt", b"1 ApplyEyeMakeup\r\n3 HandstandPushups\r\n")
    with pytest.raises(DatasetError, match="class ids must be 1..2"):
        read_dataset(ucf)


def test_ucf101_class_lookup_ignores_case(ucf):
    # A list written with the file name's spelling of the folder still gets the classInd label.
    path = Path(ucf.annotations) / "testlist01.txt"
    path.write_bytes(b"HandStandPushups/v_HandStandPushups_g01_c03.avi\r\n")
    Path(ucf.root, "HandStandPushups").mkdir()
    touch(Path(ucf.root), "HandStandPushups/v_HandStandPushups_g01_c03.avi")
    (record,) = read_dataset(ucf).test()
    assert (record.label, record.class_name, record.video_id) == (
        1, "HandstandPushups", "HandStandPushups/v_HandStandPushups_g01_c03")


def test_missing_annotation_file(ucf):
    (Path(ucf.annotations) / "testlist03.txt").unlink()
    with pytest.raises(DatasetError, match="annotation file not found: .*testlist03.txt"):
        read_dataset(ucf, "3")


@pytest.mark.parametrize("text", [b"", b"\r\n  \r\n"])
def test_an_empty_split_list_is_an_error_not_a_split_without_videos(ucf, text):
    # A truncated trainlist used to pass: flow ran on the test videos alone and train failed later.
    path = write(Path(ucf.annotations) / "trainlist01.txt", text)
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}: lists no videos \(the file is empty"):
        read_dataset(ucf)
    assert len(read_dataset(ucf, "2").videos) == 3  # the other splits' files are read as before


# --- HMDB51 ------------------------------------------------------------------------------------------

@pytest.fixture
def hmdb(tmp_path):
    root, ann = tmp_path / "hmdb51", tmp_path / "testTrainMulti_7030_splits"
    videos = {"brush_hair": ["April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
                             "Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi",
                             "brushing_hair_brush_hair_u_cm_np1_fr_goo_1.avi"],
              "cartwheel": ["Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8.avi"]}
    roles = {1: [1, 2, 0], 2: [2, 1, 1], 3: [0, 1, 2]}
    for split, role in roles.items():
        for cls, names in videos.items():
            lines = "".join(f"{name} {role[i]} \n" for i, name in enumerate(names))  # trailing space: real
            write(ann / f"{cls}_test_split{split}.txt", lines)
            touch(root, *(f"{cls}/{name}" for name in names))
    return DatasetConfig(format="hmdb51", root=str(root), annotations=str(ann))


def test_hmdb51_records(hmdb):
    data = read_dataset(hmdb)
    root = Path(hmdb.root)
    assert data.classes == ["brush_hair", "cartwheel"]
    name = "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0"
    assert data.videos[0] == VideoRecord(name, root / f"{name}.avi", 0, (0,), "brush_hair", "train", "April_09")
    # The group is the source video (the clips of one source share actor and scene: the SVM's folds and
    # held-out groups keep them together); it was None, and siblings fell on both sides of the C folds.
    assert [v.group for v in data.videos] == ["April_09", "Blonde_being_brushed", "brushing_hair",
                                              "Acrobacias_de_un_fenomeno"]
    assert [v.split for v in data.videos] == ["train", "test", "unused", "train"]
    assert [v.label for v in data.videos] == [0, 0, 0, 1]
    assert [v.split for v in read_dataset(hmdb, "3").videos] == ["unused", "train", "test", "unused"]


@pytest.mark.parametrize("stem, cls, source", [
    ("April_09_brush_hair_u_nm_np1_ba_goo_0", "brush_hair", "April_09"),
    ("April_09_brush_hair_u_nm_np1_ba_goo_1", "brush_hair", "April_09"),  # a sibling: the same group
    ("April_09_cartwheel_f_cm_np2_le_bad_0", "cartwheel", "April_09"),  # the same source in another class
    ("Finding_Forrester_3_fall_floor_f_nm_np1_ri_med_12", "fall_floor", "Finding_Forrester_3"),
    ("April_09_brush_hair_u_nm_np1_ba_goo_0", "cartwheel", None),  # the class is not in the name
    ("April_09_brush_hair_u_xx_np1_ba_goo_0", "brush_hair", None),  # not HMDB51's tags
    ("my_clip", "brush_hair", None),  # renamed: its own group
])
def test_hmdb51_groups_are_source_videos(stem, cls, source):
    from pipeline.datasets.hmdb51 import source_of

    assert source_of(stem, cls) == source


def test_hmdb51_bad_inputs(hmdb):
    ann = Path(hmdb.annotations)
    write(ann / "cartwheel_test_split1.txt", "Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8.avi 3 \n")
    with pytest.raises(DatasetError, match=r"cartwheel_test_split1.txt:1: split id must be 0 \(unused\)"):
        read_dataset(hmdb)
    write(ann / "cartwheel_test_split1.txt", "\nAcrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8.avi\n")
    with pytest.raises(DatasetError, match=r"cartwheel_test_split1.txt:2: expected '<video>.avi <0\|1\|2>'"):
        read_dataset(hmdb)
    write(ann / "cartwheel_test_split1.txt", "\n")
    with pytest.raises(DatasetError, match=r"cartwheel_test_split1.txt: lists no videos"):
        read_dataset(hmdb)
    (ann / "cartwheel_test_split2.txt").unlink()
    with pytest.raises(DatasetError, match="cartwheel_test_split2.txt is missing"):
        read_dataset(hmdb, "2")


# --- Kinetics ----------------------------------------------------------------------------------------

@pytest.fixture
def kinetics(tmp_path):
    root, ann = tmp_path / "kinetics400", tmp_path / "annotations"
    write(ann / "train.csv", "label,youtube_id,time_start,time_end,split\n"
                             "abseiling,0wR5jVB-WPk,417,427,train\n"
                             "\"passing American football (in game)\",-2dbDSt7KG0,6,16,train\n"
                             "abseiling,missing_clip,10,20,train\n")
    write(ann / "validate.csv", "label,youtube_id,time_start,time_end,split\r\n"
                                "\"passing American football (in game)\",zzz_val_id,0,10,val\r\n")
    write(ann / "test.csv", "youtube_id,time_start,time_end,split\ntest_only_1,30,40,test\n")
    # Three layouts at once: the crawler's root/<split>/<label>/, mmaction2's renamed labels, flat.
    touch(root, "train/abseiling/0wR5jVB-WPk_000417_000427.mp4",
          "videos_train/passing_American_football_in_game/-2dbDSt7KG0_000006_000016.mp4",
          "val/zzz_val_id_000000_000010.mkv", "test/test_only_1_000030_000040.mp4")
    return DatasetConfig(format="kinetics", root=str(root), annotations=str(ann))


def test_kinetics_records_missing_and_unlabelled(kinetics, caplog):
    with caplog.at_level(logging.WARNING):
        data = read_dataset(kinetics)
    root = Path(kinetics.root)
    assert data.classes == ["abseiling", "passing American football (in game)"]
    football = "passing American football (in game)"
    assert data.videos == [  # in the order of the rows, files sorted by name
        VideoRecord("train/abseiling/0wR5jVB-WPk_000417_000427",
                    root / "train/abseiling/0wR5jVB-WPk_000417_000427.mp4", 0, (0,), "abseiling", "train"),
        VideoRecord("videos_train/passing_American_football_in_game/-2dbDSt7KG0_000006_000016",
                    root / "videos_train/passing_American_football_in_game/-2dbDSt7KG0_000006_000016.mp4",
                    1, (1,), football, "train"),
        VideoRecord("val/zzz_val_id_000000_000010", root / "val/zzz_val_id_000000_000010.mkv", 1, (1,),
                    football, "val"),
    ]
    assert data.missing == ["test_only_1_000030_000040 (no label)", "missing_clip_000010_000020"]
    # Said apart: a video not found is worth a look, a test video without a label is expected.
    assert "1 of 5 listed videos skipped: not found under " in caplog.text
    assert "missing_clip_000010_000020" in caplog.text
    assert "1 of 5 listed videos have no label: not used (as expected of test videos, whose labels are not " \
        "published), e.g. " \
           "test_only_1_000030_000040 (no label)" in caplog.text


def test_a_missing_video_with_a_huge_name_makes_a_short_warning(kinetics, caplog):
    """A listed path of 100,000 characters went whole into the one warning line."""
    csv = Path(kinetics.annotations) / "train.csv"
    csv.write_text(csv.read_text() + f"abseiling,{'y' * 100_000},0,10,train\n")  # under the 128 kB cell cap
    with caplog.at_level(logging.WARNING):
        read_dataset(kinetics)
    (line,) = [r.getMessage() for r in caplog.records if "not found under" in r.getMessage()]
    assert len(line) < 1000 and "yyyy..." in line


@pytest.mark.parametrize("row, reason", [
    ("abseiling,abc,4x,10,train", "time_start must be a number of seconds"),
    ("abseiling,abc,4,10,dev", "split must be train, val or test"),
    ("abseiling,abc,4,10", "expected 5 columns"),
    ("abseiling,0wR5jVB-WPk,417,427,train", "duplicate video '0wR5jVB-WPk_000417_000427'"),
    ("abseiling,abc,427,417,train", r"time_end \(417\) must be after time_start \(427\)"),  # was accepted
    ("abseiling,abc,10,10,train", r"time_end \(10\) must be after time_start \(10\)"),
])
def test_kinetics_bad_rows(kinetics, row, reason):
    path = Path(kinetics.annotations) / "train.csv"
    path.write_text(path.read_text() + row + "\n")
    with pytest.raises(DatasetError, match=reason) as err:
        read_dataset(kinetics)
    assert f"{path}:5:" in str(err.value)


def test_kinetics_header_and_nothing_found(kinetics, tmp_path):
    write(Path(kinetics.annotations) / "test.csv", "id,start,end\n")
    with pytest.raises(DatasetError, match="test.csv:1: missing column"):
        read_dataset(kinetics)
    # a column given twice was read from its first copy, whatever the second held
    write(Path(kinetics.annotations) / "test.csv", "label,youtube_id,youtube_id,time_start,time_end,split\n")
    with pytest.raises(DatasetError, match=r"test.csv:1: column\(s\) youtube_id given twice, in "
                                           r"'label,youtube_id,youtube_id,time_start"):
        read_dataset(kinetics)
    (tmp_path / "elsewhere").mkdir()
    one = DatasetConfig(format="kinetics", root=str(tmp_path / "elsewhere"),
                        annotations=str(Path(kinetics.annotations) / "train.csv"))
    with pytest.raises(DatasetError, match="none of the 3 clips"):
        read_dataset(one)


# --- ActivityNet -------------------------------------------------------------------------------------

ANET = {
    "version": "VERSION 1.3",
    "taxonomy": [{"nodeId": 1, "nodeName": "Root", "parentId": None, "parentName": None},
                 {"nodeId": 2, "nodeName": "Archery", "parentId": 1, "parentName": "Root"},
                 {"nodeId": 3, "nodeName": "Shoveling snow", "parentId": 1, "parentName": "Root"}],
    "database": {
        "abc": {"subset": "training", "duration": 100.0, "url": "https://www.youtube.com/watch?v=abc",
                "annotations": [{"segment": [1.5, 10.0], "label": "Shoveling snow"},
                                {"segment": [20.0, 30.0], "label": "Archery"},
                                {"segment": [40.0, 45.0], "label": "Shoveling snow"}]},
        "-def": {"subset": "validation", "duration": 50.0, "url": "u",
                 "annotations": [{"segment": [0, 50], "label": "Archery"}]},
        "gone": {"subset": "training", "duration": 9.0, "url": "u",
                 "annotations": [{"segment": [0, 9], "label": "Archery"}]},
        "tst": {"subset": "testing", "duration": 9.0, "url": "u", "annotations": []},
    },
}


@pytest.fixture
def anet(tmp_path):
    root = tmp_path / "activitynet"
    touch(root, "v_abc.mp4", "val/-def.mkv", "v_tst.mp4")
    path = write(tmp_path / "activity_net.v1-3.min.json", json.dumps(ANET, indent=1))
    return DatasetConfig(format="activitynet", root=str(root), annotations=str(path))


def test_activitynet_warns_of_labels_outside_its_taxonomy_and_of_unannotated_training_videos(tmp_path, caplog):
    """A label no taxonomy node names ("Swim" for "Swimming") silently made a class of its own; a training
    video with no annotation was called a test video "whose labels are not published"."""
    data = json.loads(json.dumps(ANET))
    data["database"]["-def"]["annotations"][0]["label"] = "Archerry"
    data["database"]["gone"]["annotations"] = []
    root = tmp_path / "activitynet"
    touch(root, "v_abc.mp4", "val/-def.mkv", "v_tst.mp4", "gone.mp4")
    path = write(tmp_path / "a.json", json.dumps(data))
    with caplog.at_level("WARNING"):
        read_dataset(DatasetConfig(format="activitynet", root=str(root), annotations=str(path)))
    text = caplog.text
    assert "1 label(s) are no node of its taxonomy, e.g. 'Archerry' (" in text and "database['-def']" in text
    assert "1 training or validation video(s) have no annotation: not used, e.g. 'gone'" in text


def test_activitynet_multi_label_and_skips(anet):
    data = read_dataset(anet)
    root = Path(anet.root)
    assert data.classes == ["Archery", "Shoveling snow"]
    assert data.videos == [
        VideoRecord("v_abc", root / "v_abc.mp4", 1, (1, 0), "Shoveling snow", "train"),
        VideoRecord("val/-def", root / "val/-def.mkv", 0, (0,), "Archery", "val"),
    ]
    assert data.missing == ["tst (no label)", "gone"]
    # a labelled video not found is kept with its role and labels (eval and transfer count a scored one as a miss)
    assert [(v.video_id, v.split, v.labels) for v in data.absent] == [("gone", "train", (0,))]
    assert data.absent_scored() == []  # a training video: only the SVM's set is smaller


@pytest.mark.parametrize("edit, reason", [
    (lambda d: d["database"]["abc"]["annotations"][1].update(segment=[30.0, 20.0]),
     r"database\['abc'\].annotations\[1\]: expected \{segment"),
    (lambda d: d["database"]["abc"].update(subset="dev"), r"database\['abc'\]: subset must be training"),
    (lambda d: d.pop("database"), "no 'database' object"),
    # keys "abc" and "v_abc" both find v_abc.mp4: one file, two entries (it was a training and a
    # validation video at once)
    (lambda d: d["database"].update(v_abc=d["database"]["-def"]),
     r"database\['v_abc'\]: found as v_abc\.mp4, the file of database\['abc'\] too \(looked up as v_<id>"),
])
def test_activitynet_bad_entries(anet, edit, reason):
    data = json.loads(json.dumps(ANET))
    edit(data)
    Path(anet.annotations).write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=reason) as err:
        read_dataset(anet)
    assert anet.annotations in str(err.value)


def test_activitynet_duplicate_and_broken_json(anet):
    path = Path(anet.annotations)
    text = json.dumps(ANET, indent=1)
    path.write_text(text.replace('"-def"', '"abc"'))
    with pytest.raises(DatasetError, match="duplicate key 'abc'"):
        read_dataset(anet)
    path.write_text(text[:200])
    with pytest.raises(DatasetError, match=rf"{path}:\d+: not valid JSON"):
        read_dataset(anet)


# --- mmaction2 lists ----------------------------------------------------------------------------------

def test_mmaction_video_and_rawframe_lists(tmp_path):
    root = tmp_path / "data"
    touch(root, "a/clip1.mp4", "a/clip2.mp4", "b/clip3.mp4")
    (root / "frames/clip4").mkdir(parents=True)
    labels = write(tmp_path / "label_map.txt", "abseiling\nair drumming\narchery\n")
    train = write(tmp_path / "train.txt", "a/clip1.mp4 0\na/clip2.mp4 2 1 2\n")
    val = write(tmp_path / "val.txt", "b/clip3.mp4 1\r\n")
    cfg = DatasetConfig(format="mmaction", root=str(root), train_list=str(train), val_list=str(val),
                        label_map=str(labels))
    data = read_dataset(cfg)
    assert data.classes == ["abseiling", "air drumming", "archery"]
    assert data.videos == [
        VideoRecord("a/clip1", root / "a/clip1.mp4", 0, (0,), "abseiling", "train"),
        VideoRecord("a/clip2", root / "a/clip2.mp4", 2, (2, 1), "archery", "train"),
        VideoRecord("b/clip3", root / "b/clip3.mp4", 1, (1,), "air drumming", "val"),
    ]
    frames = write(tmp_path / "frames.txt", "frames/clip4 163 1\n")
    raw = DatasetConfig(format="mmaction", root=str(root), test_list=str(frames), list_type="rawframes")
    assert read_dataset(raw).videos == [
        VideoRecord("frames/clip4", root / "frames/clip4", 1, (1,), "1", "test")]
    assert read_dataset(raw).classes == ["0", "1"]


@pytest.mark.parametrize("list_type, line, reason", [
    ("video", "a/clip1.mp4 3", r"label 3 is not a class \(0..2 in"),
    ("video", "a/clip1.mp4", "expected '<path> <label>"),
    ("video", "a/clip1.mp4 -1", "label -1 is not a class"),
    ("rawframes", "frames/clip4 many 1", "total_frames must be an integer"),
    ("rawframes", "../frames/clip4 10 1", "escapes the dataset root"),
])
def test_mmaction_bad_lines(tmp_path, list_type, line, reason):
    touch(tmp_path / "data", "a/clip1.mp4")
    labels = write(tmp_path / "label_map.txt", "abseiling\nair drumming\narchery\n")
    path = write(tmp_path / "train.txt", f"a/clip1.mp4 0\n{line}\n" if list_type == "video" else f"{line}\n")
    cfg = DatasetConfig(format="mmaction", root=str(tmp_path / "data"), train_list=str(path),
                        label_map=str(labels), list_type=list_type)
    with pytest.raises(DatasetError, match=reason) as err:
        read_dataset(cfg)
    assert f"{path}:{2 if list_type == 'video' else 1}:" in str(err.value)


def test_annotation_lines_are_counted_at_newlines_and_control_characters_named(tmp_path, ucf):
    """str.splitlines also ends lines at a form feed, \\x1c-\\x1e, \\x85 and U+2028: a later error named
    line 6 for physical line 5. classInd.txt let `Bad\\x1bName` (a terminal escape) become a class, and
    DEL or C1 controls passed every name check. A blank line in the middle of a label map shifted every
    later label by one without a word."""
    ann = Path(ucf.annotations)
    for separator in ("\x0c", "\x1c", "\x85", "\u2028"):  # each made one more line of line 2
        write(ann / "testlist01.txt", f"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n{separator}\n../escape.avi\n")
        with pytest.raises(DatasetError, match=r"testlist01.txt:3: path '../escape.avi' escapes the dataset root"):
            read_dataset(ucf)
    write(ann / "testlist01.txt", "ApplyEyeMakeup/v_Apply\x1bEyeMakeup_g01_c01.avi\n")  # in a name: refused
    with pytest.raises(DatasetError, match=r"testlist01.txt:1: path .* holds a control character"):
        read_dataset(ucf)
    write(ann / "testlist01.txt", TEST1)
    for bad in ("Bad\x1bName", "Bad\x7fName", "Bad\x9bName"):
        write(ann / "classInd.txt", f"1 ApplyEyeMakeup\r\n2 {bad}\r\n3 YoYo\r\n")
        with pytest.raises(DatasetError, match=r"classInd.txt:2: class name .* holds a control character"):
            read_dataset(ucf)
    touch(tmp_path / "data", "a/clip1.mp4")
    train = write(tmp_path / "train.txt", "a/clip1.mp4 2\n")
    labels = write(tmp_path / "label_map.txt", "abseiling\n\nair drumming\narchery\n\n\n")
    cfg = DatasetConfig(format="mmaction", root=str(tmp_path / "data"), train_list=str(train), label_map=str(labels))
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(labels))}:2: a blank line among the class names"):
        read_dataset(cfg)
    labels.write_text("abseiling\nair drumming\narchery\n\n\n")  # blank lines at the end are nothing
    assert read_dataset(cfg).videos[0].class_name == "archery"


def test_mmaction_empty_list_or_label_map_is_named(tmp_path):
    touch(tmp_path / "data", "a/clip1.mp4")
    train = write(tmp_path / "train.txt", "a/clip1.mp4 0\n")
    empty = write(tmp_path / "val.txt", "")
    cfg = DatasetConfig(format="mmaction", root=str(tmp_path / "data"), train_list=str(train), val_list=str(empty))
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(empty))}: lists no videos"):
        read_dataset(cfg)
    # An empty label map used to be ignored: the classes silently became "0", "1", ...
    labels = write(tmp_path / "label_map.txt", "\n")
    cfg = DatasetConfig(format="mmaction", root=str(tmp_path / "data"), train_list=str(train), label_map=str(labels))
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(labels))}: lists no classes"):
        read_dataset(cfg)


# --- folder -------------------------------------------------------------------------------------------

def test_folder_layouts(tmp_path):
    flat = tmp_path / "flat"
    touch(flat, "jump/b.mp4", "jump/a.avi", "run/x/c.mkv", "run/notes.txt")
    data = read_dataset(DatasetConfig(format="folder", root=str(flat)))
    assert data.classes == ["jump", "run"]
    assert [(v.video_id, v.label, v.split) for v in data.videos] == [
        ("jump/a", 0, "train"), ("jump/b", 0, "train"), ("run/x/c", 1, "train")]
    split = tmp_path / "split"
    touch(split, "train/jump/a.mp4", "train/run/b.mp4", "val/run/c.mp4")
    data = read_dataset(DatasetConfig(format="folder", root=str(split)))
    assert [(v.video_id, v.label, v.split) for v in data.videos] == [
        ("train/jump/a", 0, "train"), ("train/run/b", 1, "train"), ("val/run/c", 1, "val")]
    touch(split, "swim/d.mp4")
    with pytest.raises(DatasetError, match="holds split folders"):
        read_dataset(DatasetConfig(format="folder", root=str(split)))


# --- config -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(format="youtube8m"), "format: must be one of"),
    (dict(format="ucf101", annotations="a", split="4"), "split: must be one of 1, 2, 3, all"),
    (dict(format="kinetics", annotations="a", split="2"), "split: must be one of 1, all"),
    (dict(format="hmdb51"), "annotations: required for format hmdb51"),
    (dict(format="mmaction"), "train_list: format mmaction needs"),
    (dict(list_type="frames"), "list_type: must be"),
])
def test_config_validate(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DatasetConfig(**kwargs).validate()
    with pytest.raises(DatasetError, match="dataset." + message.split(":")[0]):
        read_dataset(DatasetConfig(**kwargs))


def test_defaults_validate_and_root_is_required():
    DatasetConfig().validate()
    with pytest.raises(DatasetError, match="dataset.root is not set"):
        read_dataset(DatasetConfig())


def test_folder_skips_hidden_files_and_refuses_what_it_must_not_read(tmp_path):
    """One `._x.mp4` or a backslash in a name once aborted the flow stage; links out of the
    root were followed (to /etc/passwd); dangling links and FIFOs vanished without a word."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    touch(root, "jump/a.mp4", "jump/._a.mp4", "jump/.hidden/b.mp4", ".cache/c.mp4", "run/d.avi",
          "run/back\\slash.mp4", "run/tab\there.mp4")
    touch(outside, "secret.mp4", "more/e.mp4")
    (root / "run" / "passwd.mp4").symlink_to(outside / "secret.mp4")
    (root / "run" / "inside.mp4").symlink_to(root / "jump" / "a.mp4")  # a link within the root is fine
    (root / "run" / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    (root / "run" / "linked").symlink_to(outside / "more")
    os.mkfifo(root / "run" / "fifo.mp4")
    data = read_dataset(DatasetConfig(format="folder", root=str(root)))
    assert data.classes == ["jump", "run"]
    assert [v.video_id for v in data.videos] == ["jump/a", "run/d", "run/inside"]
    assert data.refused == [
        ("run/linked", "a symbolic link to a folder, not followed"),
        ("run/back\\slash.mp4", "its name holds a backslash, which other tools read as a folder separator: "
                                "rename it"),
        ("run/tab\\there.mp4", "its name holds a control character: rename it"),  # shown escaped: one line
        ("run/dangling.mp4", "a dangling symbolic link"),
        ("run/fifo.mp4", "not a regular file (a FIFO, socket or device)"),
        ("run/passwd.mp4", f"a symbolic link to {outside / 'secret.mp4'}, outside the dataset root {root}"),
    ]


def test_folder_refuses_linked_class_folders_and_a_second_video_of_one_id(tmp_path):
    """`C -> A` made every video of A a video of class C too, `D -> /usr/share` walked a tree outside
    the root; `a1.mp4` beside `a1.avi` gave two records of the id A/a1, whose features then overwrote
    each other in transfer's cache ("-58 from the cache", figures that changed from run to run)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    touch(root, "A/a1.avi", "A/a1.mp4", "A/a2.mp4", "B/b1.avi")
    touch(outside, "x/e.mp4")
    (root / "C").symlink_to("A")
    (root / "D").symlink_to(outside)
    data = read_dataset(DatasetConfig(format="folder", root=str(root)))
    assert data.classes == ["A", "B"]
    assert [v.video_id for v in data.videos] == ["A/a1", "A/a2", "B/b1"]
    assert data.videos[0].path == root / "A" / "a1.avi"
    assert data.refused == [
        ("C", "a symbolic link to a folder, not followed"),
        ("D", "a symbolic link to a folder, not followed"),
        ("A/a1.mp4", "the video id A/a1 of A/a1.avi (ids leave out the extension): rename one"),
    ]
    touch(root, "../split/train/A/a.mp4")  # the same with split folders: a linked split folder
    (tmp_path / "split" / "val").symlink_to(tmp_path / "split" / "train")
    data = read_dataset(DatasetConfig(format="folder", root=str(tmp_path / "split")))
    assert [v.video_id for v in data.videos] == ["train/A/a"]
    assert data.refused == [("val", "a symbolic link to a folder, not followed")]


def test_folder_a_dangling_link_does_not_take_the_id_of_the_video_beside_it(tmp_path, monkeypatch):
    """`v.avi` a dangling link beside `v.mp4`: the link took the id c/v first, so both were refused and the
    real video never computed."""
    root = tmp_path / "root"
    touch(root, "c/v.mp4", "c/w.mp4")
    (root / "c" / "v.avi").symlink_to(tmp_path / "gone.avi")
    data = read_dataset(DatasetConfig(format="folder", root=str(root)))
    assert [(v.video_id, v.path.name) for v in data.videos] == [("c/v", "v.mp4"), ("c/w", "w.mp4")]
    assert [rel for rel, _ in data.refused] == ["c/v.avi"]
    # Only a link to nothing gives its id away: an unreadable first file keeps it (it fails on its own, as
    # the kept video), and the second is refused as before, not listed as a second video of that id.
    (root / "c" / "v.avi").unlink()
    touch(root, "c/v.avi")
    (root / "c" / "v.avi").chmod(0)
    deny_as_for_a_user(monkeypatch, root / "c" / "v.avi", os.R_OK)
    data = read_dataset(DatasetConfig(format="folder", root=str(root)))
    assert [(v.video_id, v.path.name) for v in data.videos] == [("c/v", "v.avi"), ("c/w", "w.mp4")]
    assert [rel for rel, _ in data.refused] == ["c/v.mp4"]


def test_folder_refuses_a_folder_it_cannot_read_naming_it(tmp_path, monkeypatch, caplog):
    """os.walk dropped a folder it could not list without a word (its videos in no list at all), and an
    unreadable class folder was said to "hold no video". For root, who reads anything, the listing is
    refused as it is for a user."""
    root = tmp_path / "root"
    touch(root, "c/v.mp4", "c/part2/w.mp4", "locked/x.mp4", "e/y.mp4")
    real = os.scandir
    denied = {str(root / "c" / "part2"), str(root / "locked")}

    def scandir(path="."):
        if str(path) in denied:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level(logging.WARNING):
        data = read_dataset(DatasetConfig(format="folder", root=str(root)))
    assert [v.video_id for v in data.videos] == ["c/v", "e/y"]
    assert sorted(data.refused) == [("c/part2", "a folder that cannot be read: no permission"),
                                    ("locked", "a folder that cannot be read: no permission")]
    assert "hold no video" not in caplog.text


def test_folder_refuses_names_that_are_not_utf8(tmp_path):
    root = tmp_path / "root"
    touch(root, "jump/a.mp4", "jump/b.mp4")
    try:
        os.rename(root / "jump" / "b.mp4", os.fsencode(root / "jump") + b"/caf\xe9.mp4")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    data = read_dataset(DatasetConfig(format="folder", root=str(root)))
    assert [v.video_id for v in data.videos] == ["jump/a"]
    assert data.refused == [("jump/caf\\xe9.mp4", "its name is not valid UTF-8 text: rename it")]


def test_listed_videos_behind_links_out_of_the_root_are_refused(ucf, tmp_path):
    root = Path(ucf.root)
    target = tmp_path / "elsewhere.avi"
    target.write_bytes(b"")
    (root / UCF_VIDEOS[0]).unlink()
    (root / UCF_VIDEOS[0]).symlink_to(target)
    os.remove(root / UCF_VIDEOS[1])
    os.mkfifo(root / UCF_VIDEOS[1])
    data = read_dataset(ucf)
    assert [v.video_id for v in data.train()] == ["YoYo/v_YoYo_g25_c04"]
    assert data.refused == [(UCF_VIDEOS[0], f"a symbolic link to {target}, outside the dataset root {root}"),
                            (UCF_VIDEOS[1], "not a regular file (a FIFO, socket or device)")]
    assert data.missing == []


# --- files that are unreadable, ambiguous or out of place ---------------------------------------------

@pytest.mark.parametrize("content, reason", [
    (b"\xff\xfe{\x00}", r":1: not UTF-8 text \(invalid start byte at byte 0\)$"),
    (b"[" * 100_000 + b"]" * 100_000, r"nested too deeply to be ActivityNet JSON"),
    (json.dumps({"database": {"abc": {"subset": "training", "annotations": [
        {"segment": [float("nan"), 5.0], "label": "Archery"}]}}}).encode(),
     r"database\['abc'\].annotations\[0\]: expected \{segment: \[start, end\], label\} with finite times"),
])
def test_activitynet_json_that_cannot_be_read_is_one_line(anet, content, reason):
    Path(anet.annotations).write_bytes(content)
    with pytest.raises(DatasetError, match=reason) as err:
        read_dataset(anet)
    assert str(err.value).startswith(anet.annotations) and "\n" not in str(err.value)


def test_activitynet_says_which_file_it_took_and_which_classes_no_training_video_has(anet, caplog):
    data = json.loads(json.dumps(ANET))
    data["database"]["-def"]["annotations"].append({"segment": [1, 2], "label": "Yoga"})  # no training video
    Path(anet.annotations).write_text(json.dumps(data))
    touch(Path(anet.root), "abc.avi")  # beside v_abc.mp4
    with caplog.at_level("WARNING", logger="pipeline.datasets"):
        read_dataset(anet)
    assert any(re.search(r"v_abc.mp4 and \S*abc.avi hold the same video abc; using the first \(the crawler's v_ "
                         r"name\)$", r.getMessage()) for r in caplog.records)
    assert any("1 class(es) of the validation/testing videos have no training video (Yoga)" in r.getMessage()
               for r in caplog.records)


def test_an_empty_view2_file_is_one_line(tmp_path):
    from pipeline.datasets.aslan import read_view2

    (tmp_path / "View2.mat").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"View2.mat: the file is empty \(0 bytes\)"):
        read_view2(tmp_path / "View2.mat")
    (tmp_path / "View2.mat").write_bytes(b"\x00" * 64)  # scipy's MatReadError
    with pytest.raises(DatasetError, match=r"View2.mat: not a readable MATLAB file"):
        read_view2(tmp_path / "View2.mat")


def _crash(path: str):  # scipy's reader as it died on a damaged View2.mat (one flipped bit)
    os.kill(os.getpid(), signal.SIGSEGV)


def test_a_view2_file_that_crashes_or_confuses_scipy_is_one_line(tmp_path, monkeypatch):
    """A flipped bit made scipy.io.loadmat die of SIGSEGV (the run ended with no word) or raise what its
    C code met (ZeroDivisionError, zlib.error: tracebacks); it now reads in a child process. Whole
    numbers past int64 were cast to clip id -9223372036854775808, complex ones to their real part."""
    from scipy.io import savemat

    from pipeline.datasets import aslan

    path = tmp_path / "View2.mat"
    savemat(path, {aslan.VARIABLE: np.ones((2, 5, 10))})
    assert aslan.read_view2(path).shape == (2, 5, 10)
    monkeypatch.setattr(aslan, "_load_variable", _crash)
    with pytest.raises(DatasetError, match=r"View2.mat: not a readable MATLAB file: scipy's reader crashed on it"):
        aslan.read_view2(path)
    monkeypatch.undo()
    for values, why in ((np.full((2, 5, 10), 1e30), r"holds 1e\+30: clip ids and labels are small whole numbers"),
                        (np.ones((2, 5, 10)) * (1 + 1j), "must hold whole numbers")):
        savemat(path, {aslan.VARIABLE: values})
        with pytest.raises(DatasetError, match=rf"View2.mat: action_splits_pairs {why}"):
            aslan.read_view2(path)
    touch(tmp_path / "clips", "0001.avi", "\u00b2.avi")  # "²": isdigit() but no int()
    assert {k: p.name for k, p in aslan._index_clips(tmp_path / "clips").items()} == {1: "0001.avi"}


def test_aslan_takes_its_own_clip_name_first_and_says_so(tmp_path, caplog):
    from pipeline.datasets.aslan import _index_clips

    touch(tmp_path, "1.avi", "0001.mp4", "0001.avi", "0002.mp4", "2.avi", "0003.avi")
    with caplog.at_level("WARNING", logger="pipeline.datasets"):
        clips = _index_clips(tmp_path)
    assert {k: p.name for k, p in clips.items()} == {1: "0001.avi", 2: "0002.mp4", 3: "0003.avi"}
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.endswith("clip 0001 has 3 files (0001.avi, 0001.mp4, 1.avi); using 0001.avi") for m in messages)
    assert any(m.endswith("clip 0002 has 2 files (0002.mp4, 2.avi); using 0002.mp4") for m in messages)


def test_folder_refuses_loose_videos_and_names_empty_class_folders(tmp_path, caplog):
    touch(tmp_path, "jump/a.avi", "run/b.avi", "loose.avi", "notes.txt")
    (tmp_path / "swim").mkdir()
    with caplog.at_level("WARNING", logger="pipeline.datasets"):
        data = read_dataset(DatasetConfig(format="folder", root=str(tmp_path)))
    assert data.classes == ["jump", "run"] and [v.video_id for v in data.videos] == ["jump/a", "run/b"]
    assert data.refused == [("loose.avi", "not in a class folder: its class is the folder it lies in")]
    assert any("1 class folder(s) hold no video and are not classes: swim" in r.getMessage() for r in caplog.records)


# --- values Python alone would take, or choke on: refused in one line naming the file and line ----------

def test_parse_int_takes_plain_decimal_integers_only():
    """int() takes "1_0" (10), " 1" and other scripts' digits ("\u0661" is 1); 5000 digits is a ValueError
    of its own."""
    from pipeline.datasets.files import parse_int

    assert [parse_int(t, "label", "f:1") for t in ("0", "007", "-1", "+3", "999999999999999999")] == \
        [0, 7, -1, 3, 999_999_999_999_999_999]
    for text in ("1_0", " 1", "1 ", "\u0661", "\uff11", "0x1", "", "+", "1.0"):
        with pytest.raises(DatasetError) as err:
            parse_int(text, "label", "f:1")
        assert str(err.value) == f"f:1: label must be an integer, got {text!r}"
    with pytest.raises(DatasetError) as err:
        parse_int("9" * 5000, "label", "f:1")
    assert str(err.value) == f"f:1: label is too large, got {'9' * 80!r}... (5,000 characters)"


@pytest.mark.parametrize("name, text, reason", [
    ("trainlist01.txt", HSP + b" 0_2\r\n", "class id must be an integer, got '0_2'"),  # int(): 2
    ("trainlist01.txt", "HandstandPushups/v_HandStandPushups_g08_c01.avi \u0662\r\n".encode(),
     "class id must be an integer, got '\u0662'"),  # int(): 2
    ("trainlist01.txt", b"HandstandPushups/v_x\x00.avi 2\r\n",  # os.lstat: ValueError, embedded null byte
     "path 'HandstandPushups/v_x\\x00.avi' holds a control character"),
    ("testlist01.txt", b"HandstandPushups/v_\x1bx.avi\r\n",
     "path 'HandstandPushups/v_\\x1bx.avi' holds a control character"),
    ("classInd.txt", b"\xd9\xa2 HandstandPushups\r\n", "class id must be an integer, got '\u0662'"),
])
def test_ucf101_ids_and_paths_python_alone_would_take(ucf, name, text, reason):
    path = Path(ucf.annotations) / name
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = text
    path.write_bytes(b"".join(lines))
    with pytest.raises(DatasetError) as err:
        read_dataset(ucf)
    assert str(err.value) == f"{path}:2: {reason}"


def test_a_non_utf8_list_names_its_line_and_byte(ucf):
    path = Path(ucf.annotations) / "trainlist01.txt"
    path.write_bytes(TRAIN1 + b"YoYo/v_YoYo_g25_c05\xff.avi 3\r\n")
    with pytest.raises(DatasetError) as err:
        read_dataset(ucf)
    assert str(err.value) == f"{path}:4: not UTF-8 text (invalid start byte at byte {len(TRAIN1) + 19})"


K_HEADER = "label,youtube_id,time_start,time_end,split\n"


def kinetics_csv(tmp_path: Path, data: bytes | str) -> tuple[Path, DatasetConfig]:
    path = write(tmp_path / "annotations" / "train.csv", data)
    (tmp_path / "root").mkdir(exist_ok=True)
    return path, DatasetConfig(format="kinetics", root=str(tmp_path / "root"), annotations=str(path.parent))


@pytest.mark.parametrize("row, reason", [
    ("run,abc,nan,10,train", "time_start must be a number of seconds, got 'nan'"),  # int(nan): ValueError
    ("run,abc,inf,10,train", "time_start must be a number of seconds, got 'inf'"),  # OverflowError
    ("run,abc,0,1e400,train", "time_end must be a number of seconds, got '1e400'"),
    ("run,abc,1_0,20,train", "time_start must be a number of seconds, got '1_0'"),  # float(): 10.0
    ("run,abc,\u0661,20,train", "time_start must be a number of seconds, got '\u0661'"),  # float(): 1.0
    ("run,abc,2,1\u0660.0,train", "time_end must be a number of seconds, got '1\u0660.0'"),
    ("run,abc," + "9" * 5000 + ",10,train",  # int(): over 4,300 digits, a ValueError
     f"time_start is too large for a time in seconds, got {'9' * 80!r}... (5,000 characters)"),
    ("run,abc,4,12345678901,train", "time_end is too large for a time in seconds, got '12345678901'"),
    ("run,a\x00b,4,10,train", "youtube_id 'a\\x00b' holds a control character"),
    ("run,a\\b,4,10,train", "bad youtube_id 'a\\\\b'"),
    ("ru\x07n,abc,4,10,train", "label 'ru\\x07n' holds a control character"),
])
def test_kinetics_values_python_alone_would_take_are_refused(tmp_path, row, reason):
    path, cfg = kinetics_csv(tmp_path, K_HEADER + "run,ok,0,10,train\n" + row + "\n")
    with pytest.raises(DatasetError) as err:
        read_dataset(cfg)
    assert str(err.value) == f"{path}:3: {reason}"


def test_kinetics_csv_that_cannot_be_read_names_the_line(tmp_path):
    data = (K_HEADER + "run,ok,0,10,train\n").encode() + b"r\xffn,abc,1,11,train\n"
    path, cfg = kinetics_csv(tmp_path, data)
    with pytest.raises(DatasetError) as err:  # was a UnicodeDecodeError traceback
        read_dataset(cfg)
    at = data.index(b"\xff")
    assert str(err.value) == f"{path}:3: not UTF-8 text (invalid start byte at byte {at})"
    path, cfg = kinetics_csv(tmp_path, K_HEADER + "run,ok,0,10,train\n" + "x" * 200_000 + ",abc,1,11,train\n")
    with pytest.raises(DatasetError) as err:  # was _csv.Error
        read_dataset(cfg)
    assert str(err.value) == f"{path}:3: cannot be read as CSV (field larger than field limit (131072))"


def test_a_fifo_named_like_a_kinetics_csv_is_refused_not_read(tmp_path):
    """Opening a FIFO blocks until a writer comes: the reader hung for ever. (Should it open the FIFO
    again, the timer lets it go after 10 s, and the test fails instead of hanging.)"""
    import threading

    path, cfg = kinetics_csv(tmp_path, K_HEADER + "run,ok,0,10,train\n")
    fifo = path.parent / "validate.csv"
    os.mkfifo(fifo)

    def release():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader: nothing to release
            pass

    timer = threading.Timer(10, release)
    timer.start()
    try:
        with pytest.raises(DatasetError) as err:
            read_dataset(cfg)
    finally:
        timer.cancel()
    assert str(err.value) == f"Kinetics annotation CSV {fifo}: not a regular file (a FIFO, socket or device)"


@pytest.mark.parametrize("edit, reason", [
    (lambda d: d.update(subset=["training"]),  # TypeError: unhashable type
     ": subset must be training, validation or testing, got ['training']"),
    (lambda d: d.update(subset={}), ": subset must be training, validation or testing, got {}"),
    (lambda d: d["annotations"][0].update(label="\ud800"),  # valid JSON, and no UTF-8 report can hold it
     ".annotations[0]: label '\\ud800' is not valid UTF-8 text"),
    (lambda d: d["annotations"][1].update(label="Arch\nery"),
     ".annotations[1]: label 'Arch\\nery' holds a control character"),
])
def test_activitynet_values_python_alone_would_take_are_refused(anet, edit, reason):
    data = json.loads(json.dumps(ANET))
    edit(data["database"]["abc"])
    Path(anet.annotations).write_text(json.dumps(data))
    with pytest.raises(DatasetError) as err:
        read_dataset(anet)
    assert str(err.value) == f"{anet.annotations}: database['abc']{reason}"


def test_activitynet_integers_past_a_float_or_int_are_one_line(anet):
    path = Path(anet.annotations)
    path.write_text('{"database": {"abc": {"subset": "training", "annotations": [\n'
                    '{"segment": [0, 1' + "0" * 400 + '], "label": "A"}]}}}')  # math.isfinite: OverflowError
    with pytest.raises(DatasetError) as err:
        read_dataset(anet)
    assert str(err.value).startswith(f"{path}: database['abc'].annotations[0]: expected {{segment: [start, end], "
                                     "label} with finite times, start <= end, got {'segment': [0, 1000")
    assert len(str(err.value)) < len(str(path)) + 320  # the entry quoted in part, not its 401 digits
    path.write_text('{"database": {"abc": {"subset": "training",\n"duration": ' + "9" * 5000 + ',\n'
                    '"annotations": []}}}')  # json.loads: a ValueError, not a JSONDecodeError
    with pytest.raises(DatasetError) as err:
        read_dataset(anet)
    assert str(err.value) == f"{path}:2: not valid JSON for ActivityNet: an integer of more than 4,300 digits"


@pytest.mark.parametrize("name, reason", [
    (b".._test_split1.txt", "its name gives the class '..', which is no folder under the root: rename it"),
    (b"._test_split1.txt", "its name gives the class '.', which is no folder under the root: rename it"),
    (b"Blu\xffe_test_split1.txt", "its name is not valid UTF-8 text: rename it"),  # crashed training later
    (b"tab\there_test_split1.txt", "its name holds a control character: rename it"),
])
def test_hmdb51_class_names_from_file_names_are_checked(hmdb, name, reason):
    path = os.fsencode(hmdb.annotations) + b"/" + name
    try:
        with open(path, "wb") as f:
            f.write(b"x.avi 1\n")
    except OSError:
        pytest.skip("this file system refuses such names")
    with pytest.raises(DatasetError) as err:
        read_dataset(hmdb)
    assert str(err.value) == f"{shown(os.fsdecode(path))}: {reason}"


def test_mmaction_labels_without_a_label_map_are_bounded_and_gaps_reported(tmp_path, caplog):
    """[str(i) for i in range(label + 1)]: a label of 99999999999 took all memory; 999 made 990 empty classes."""
    touch(tmp_path / "data", "a/clip1.mp4", "a/clip2.mp4")
    for label in ("100000", "99999999999"):
        path = write(tmp_path / "train.txt", f"a/clip1.mp4 0\na/clip2.mp4 {label}\n")
        with pytest.raises(DatasetError) as err:
            read_dataset(DatasetConfig(format="mmaction", root=str(tmp_path / "data"), train_list=str(path)))
        assert str(err.value) == (f"{path}:2: label {label} is past any action dataset's classes (0..99,999 without "
                                  "a label map): a typo? give dataset.label_map to name the classes")
    path = write(tmp_path / "train.txt", "a/clip1.mp4 0\na/clip2.mp4 5 2\n")
    with caplog.at_level("WARNING", logger="pipeline.datasets"):
        data = read_dataset(DatasetConfig(format="mmaction", root=str(tmp_path / "data"), train_list=str(path)))
    assert data.classes == ["0", "1", "2", "3", "4", "5"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: 3 of the 6 classes 0..5 have no listed video: a mistyped label? give dataset.label_map to check "
        "the labels against the class names"]


@pytest.mark.parametrize("list_type, line, reason", [
    ("video", "a/clip\x00.mp4 0", "path 'a/clip\\x00.mp4' holds a control character"),
    ("video", "a/clip1.mp4 1_0", "label must be an integer, got '1_0'"),
    ("rawframes", "frames/clip4 1_0 1", "total_frames must be an integer, got '1_0'"),
])
def test_mmaction_paths_and_numbers_python_alone_would_take(tmp_path, list_type, line, reason):
    touch(tmp_path / "data", "a/clip1.mp4")
    path = write(tmp_path / "train.txt", f"a/clip1.mp4 0\n{line}\n" if list_type == "video" else f"{line}\n")
    cfg = DatasetConfig(format="mmaction", root=str(tmp_path / "data"), train_list=str(path), list_type=list_type)
    with pytest.raises(DatasetError) as err:
        read_dataset(cfg)
    assert str(err.value) == f"{path}:{2 if list_type == 'video' else 1}: {reason}"


def test_mmaction_label_map_names_are_checked(tmp_path):
    touch(tmp_path / "data", "a/clip1.mp4")
    labels = write(tmp_path / "label_map.txt", "abseiling\nair\x07drumming\n")
    train = write(tmp_path / "train.txt", "a/clip1.mp4 0\n")
    cfg = DatasetConfig(format="mmaction", root=str(tmp_path / "data"), train_list=str(train), label_map=str(labels))
    with pytest.raises(DatasetError) as err:
        read_dataset(cfg)
    assert str(err.value) == f"{labels}:2: class name 'air\\x07drumming' holds a control character"
