"""The transfer stage: its config, the ASLAN reader, the generated companions, and a whole run."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.io import savemat

from flow.video import VideoReader
from pipeline.cli import main
from pipeline.config import Config, dump_toml, load_config
from pipeline.datasets import read_dataset
from pipeline.datasets.aslan import read_view2
from pipeline.errors import ConfigError, DatasetError, PipelineError
from pipeline.synth import companions, generate
from pipeline.synth.config import SynthConfig
from pipeline.transfer.config import BenchmarkConfig
from pipeline.transfer.stage import check_config, transfer_stage
from streams.config import TrainConfig
from tests.fusion.conftest import save_tiny_checkpoint

BASE = """
work_dir = "w"
[transfer]
rgb = "r.pt"
benchmarks = ["aslan", "scenes"]
[benchmark.aslan]
format = "aslan"
root = "a"
annotations = "a/View2.mat"
[benchmark.scenes]
format = "folder"
root = "s"
"""


def config(tmp_path: Path, text: str = BASE, overrides=()) -> Config:
    path = tmp_path / "t.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, list(overrides))


# --- config ---------------------------------------------------------------------------------------

def test_benchmark_tables_load_with_defaults_and_round_trip(tmp_path):
    cfg = config(tmp_path, overrides=["benchmark.scenes.root=elsewhere", "transfer.cs=[1, 10]"])
    assert list(cfg.benchmark) == ["aslan", "scenes"]
    assert cfg.benchmark["scenes"].root == "elsewhere" and cfg.transfer.cs == [1.0, 10.0]
    assert cfg.benchmark["aslan"].resolved_protocol() == "aslan_view2"
    assert cfg.benchmark["scenes"].resolved_protocol() == "loo" and cfg.benchmark["scenes"].split == "all"
    back = tmp_path / "back.toml"
    back.write_text(dump_toml(cfg), encoding="utf-8")
    assert load_config(back) == cfg
    check_config(cfg)  # complete: no error


@pytest.mark.parametrize("overrides, message", [
    (["benchmark.scenes.protocol=kfold"], r"\[benchmark.scenes\] protocol: must be one of three_split, "),
    (["benchmark.aslan.protocol=loo"], r"\[benchmark.aslan\] protocol: aslan_view2 is the protocol of format aslan"),
    (["benchmark.ucf.format=folder", "benchmark.ucf.protocol=three_split"],
     r"\[benchmark.ucf\] protocol: three_split needs a format with three splits"),
    (["benchmark.scenes.rot=x"], r"unknown key 'benchmark.scenes.rot' \(did you mean 'benchmark.scenes.root'\?\)"),
    (["benchmark.scenes.root=[1]"], r"benchmark.scenes.root must be str"),
    (["benchmark.scenes.format=avi"], r"\[benchmark.scenes\] format: must be one of .*aslan, got 'avi'"),
    (["benchmark.scenes.paper=kinetics"], r"\[benchmark.scenes\] paper: must be one of ucf101, "),
    (["transfer.aslan_normalisation=l1"], r"\[transfer\] aslan_normalisation: must be 'l2' or 'zscore'"),
    (["transfer.clip=3"], r"unknown key 'transfer.clip' \(did you mean 'transfer.clips'\?\)"),
    (["benchmarks=3"], r"unknown key 'benchmarks' \(did you mean 'benchmark'\?\)"),
    (["benchmark.x=3"], r"\[benchmark\] must hold named tables such as \[benchmark.NAME\]"),
])
def test_config_errors_name_the_file_and_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        config(tmp_path, overrides=overrides)
    assert str(err.value).startswith(str(tmp_path / "t.toml") + ": ")


def test_a_benchmark_without_its_section_and_a_missing_extractor_are_named(tmp_path):
    cfg = config(tmp_path, overrides=['transfer.benchmarks=["aslan", "scene"]'])
    with pytest.raises(ConfigError, match=r"t.toml: transfer.benchmarks names 'scene' but there is no "
                                          r"\[benchmark.scene\] section \(did you mean 'scenes'\?\)"):
        check_config(cfg, str(tmp_path / "t.toml"))
    with pytest.raises(ConfigError, match=r"\[transfer\] rgb / flow: give an RGB and/or a flow"):
        check_config(config(tmp_path, overrides=["transfer.rgb="]))


# --- the ASLAN reader -------------------------------------------------------------------------------

def aslan_pairs() -> np.ndarray:
    """2 pairs per split, 10 splits, one action class of clips 2k+1, 2k+2 per split, and a not-same pair."""
    pairs = np.zeros((2, 5, 10), dtype=np.int32)
    for s in range(10):
        a, b, c = 3 * s + 1, 3 * s + 2, 3 * s + 3
        pairs[:, :, s] = [[a, b, 1, 2 * s + 1, 2 * s + 1], [a, c, 0, 2 * s + 1, 2 * s + 2]]
    return pairs


def write_aslan(root: Path, pairs: np.ndarray, variable: str = "action_splits_pairs",
                skip: int = 0) -> tuple[Path, Path]:
    videos = root / "ASLAN_AVI"
    videos.mkdir(parents=True)
    for clip in np.unique(pairs[:, :2, :]):
        if clip != skip:
            (videos / f"{int(clip):04d}.avi").write_bytes(b"")
    mat = root / "Views" / "View2.mat"
    mat.parent.mkdir()
    savemat(str(mat), {variable: pairs})
    return videos, mat


def test_aslan_reader_gives_clips_their_action_and_split(tmp_path):
    videos, mat = write_aslan(tmp_path, aslan_pairs())
    np.testing.assert_array_equal(read_view2(mat), aslan_pairs())
    dataset = read_dataset(BenchmarkConfig(format="aslan", root=str(videos), annotations=str(mat)))
    assert len(dataset.videos) == 30 and dataset.classes == [str(c) for c in range(1, 21)]
    by_id = {v.video_id: v for v in dataset.videos}
    assert by_id["0004"].class_name == "3" and by_id["0004"].group == "2"  # split 2: clips 4, 5 of class 3
    assert by_id["0006"].class_name == "4" and by_id["0030"].group == "10"
    assert by_id["0001"].path == videos / "0001.avi"


@pytest.mark.parametrize("case, message", [
    ("missing", r"ASLAN View-2 file \(Views/View2.mat\) not found: .*View2.mat"),
    ("garbage", r"View2.mat: not a readable MATLAB file"),
    ("variable", r"View2.mat: no variable 'action_splits_pairs' \(found: pairs\)"),
    ("shape", r"View2.mat: action_splits_pairs has shape \[2, 5, 9\], expected \[pairs, 5, 10\]"),
    ("flag", r"column 3 \(same / not-same\) must be 0 or 1, got \[2\]"),
    ("not_on_disk", r"View2.mat: 1 clip id\(s\) of View-2 have no video under .*ASLAN_AVI, e.g. 0007 "
                    r"\(expected 0007.avi\)"),
    ("two_labels", r"View2.mat: clip 0001 has action label 1 in one pair and 9 in another"),
])
def test_aslan_reader_errors_are_one_line_naming_the_file(tmp_path, case, message):
    pairs = aslan_pairs()
    variable, skip = "action_splits_pairs", 0
    if case == "variable":
        variable = "pairs"
    elif case == "shape":
        pairs = pairs[:, :, :9]
    elif case == "flag":
        pairs[1, 2, 3] = 2
    elif case == "not_on_disk":
        skip = 7
    elif case == "two_labels":
        pairs[1, 3, 0] = 9
    videos, mat = write_aslan(tmp_path, pairs, variable, skip)
    if case == "missing":
        mat.unlink()
    elif case == "garbage":
        mat.write_bytes(b"MATLAB? no" * 20)
    with pytest.raises(DatasetError, match=message) as err:
        read_dataset(BenchmarkConfig(format="aslan", root=str(videos), annotations=str(mat)))
    assert "\n" not in str(err.value)


# --- the generated companions -----------------------------------------------------------------------

@pytest.fixture
def tiny_companions(monkeypatch):
    """The companions at test size: 32 px, a few frames, few videos."""
    for name, value in dict(FRAME_SIZE=32, ASLAN_CLASSES_PER_SPLIT=2, ASLAN_CLIPS_PER_CLASS=2, ASLAN_FRAMES=6,
                            ASLAN_SHORT_FRAMES=3, ANET_VIDEOS={"training": 8, "validation": 6, "testing": 1},
                            ANET_SEGMENT=4, SCENE_VIDEOS=3, SCENE_FRAMES=6,
                            SCENE_CLASSES=["YellowZoomIn", "CyanZoomOut", "MagentaRotate"]).items():
        monkeypatch.setattr(companions, name, value)


def test_companions_are_read_by_the_real_readers(tmp_path, tiny_companions):
    summary = companions.generate_companions(tmp_path)
    assert summary.written == ["aslan", "activitynet", "scenes"]
    assert companions.generate_companions(tmp_path).kept == ["aslan", "activitynet", "scenes"]  # resumes
    pairs = read_view2(tmp_path / "aslan/Views/View2.mat")
    assert pairs.shape == (4, 5, 10)  # per split 2 same-class pairs and as many not-same ones
    assert [int(pairs[:, 2, s].sum()) for s in range(10)] == [2] * 10
    classes = [set(pairs[:, 3:5, s].ravel().tolist()) for s in range(10)]
    assert all(not (classes[i] & classes[j]) for i in range(10) for j in range(i + 1, 10))  # no shared class
    aslan = read_dataset(BenchmarkConfig(format="aslan", root=str(tmp_path / "aslan/ASLAN_AVI"),
                                         annotations=str(tmp_path / "aslan/Views/View2.mat")))
    assert len(aslan.videos) == 40
    grey = list(VideoReader(tmp_path / "aslan/ASLAN_AVI/0005.avi", "").frames())
    assert len(grey) == 6 and np.array_equal(grey[0][..., 0], grey[0][..., 2])  # every 5th clip is grey
    assert len(list(VideoReader(tmp_path / "aslan/ASLAN_AVI/0006.avi", "").frames())) == 3  # every 6th is short
    anet = read_dataset(BenchmarkConfig(format="activitynet", root=str(tmp_path / "activitynet/videos"),
                                        annotations=str(tmp_path / "activitynet/activity_net.json")))
    assert len(anet.train()) == 8 and len(anet.val()) == 6 and anet.missing  # the unlabelled testing video
    assert any(len(v.labels) == 2 for v in anet.videos)  # multi-label untrimmed videos
    scenes = read_dataset(BenchmarkConfig(format="folder", root=str(tmp_path / "scenes")))
    assert scenes.classes == ["CyanZoomOut", "MagentaRotate", "YellowZoomIn"] and len(scenes.videos) == 9


# --- the whole stage --------------------------------------------------------------------------------

TRAIN_CFG = TrainConfig(clip_len=4, resize=[32, 32], crop=16)
FAST = ["flow.warps=1", "flow.outer_iterations=2", "flow.inner_iterations=5", "flow.nscales=2", "flow.jobs=1"]


@pytest.fixture
def tiny_transfer(tmp_path, tiny_companions):
    """A transfer config on tiny SynthActions and companions, with random p3d_tiny streams."""
    generate(SynthConfig.tiny(frames=6), tmp_path / "synth")
    classes = [f"c{i}" for i in range(3)]
    rgb = tmp_path / "train/rgb/split1"  # a training folder stands for its last.pt
    save_tiny_checkpoint(rgb / "last.pt", "rgb", classes, train_cfg=TRAIN_CFG)
    flow = save_tiny_checkpoint(tmp_path / "flow.pt", "flow", classes, seed=1, train_cfg=TRAIN_CFG)
    data = tmp_path / "data"
    text = f"""
work_dir = "{tmp_path / 'work'}"
[transfer]
rgb = "{rgb}"
flow = "{flow}"
benchmarks = ["synth", "activitynet", "aslan", "scenes"]
clips = 3
folds = 2
cs = [0.1, 10.0]
jobs = 1
device = "cpu"
companions = "{data}"
[benchmark.synth]
format = "synth"
root = "{tmp_path / 'synth'}"
paper = "ucf101"
[benchmark.activitynet]
format = "activitynet"
root = "{data}/activitynet/videos"
annotations = "{data}/activitynet/activity_net.json"
[benchmark.aslan]
format = "aslan"
root = "{data}/aslan/ASLAN_AVI"
annotations = "{data}/aslan/Views/View2.mat"
[benchmark.scenes]
format = "folder"
root = "{data}/scenes"
paper = "yupenn"
[flow]
size = ""
"""
    path = tmp_path / "transfer.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_transfer_end_to_end_report_cache_and_broken_videos(tiny_transfer, tmp_path, capsys):
    cfg = load_config(tiny_transfer, FAST)
    companions.generate_companions(cfg.transfer.companions)
    (Path(cfg.transfer.companions) / "scenes/CyanZoomOut/broken.avi").write_bytes(b"not a video")
    table = transfer_stage(cfg)
    out = tmp_path / "work/transfer"
    csv = pd.read_csv(out / "results.csv")
    assert list(csv.columns) == ["benchmark", "protocol", "stream", "accuracy", "se", "auc", "hit@3", "mAP",
                                 "videos", "excluded", "selected", "details"]
    expected = [(b, s) for b in ("synth", "activitynet", "aslan", "scenes") for s in ("rgb", "flow", "two_stream")]
    assert list(zip(csv["benchmark"], csv["stream"], strict=False)) == expected
    protocols = dict(zip(csv["benchmark"], csv["protocol"], strict=False))
    assert protocols == {"synth": "three_split", "activitynet": "train_val", "aslan": "aslan_view2", "scenes": "loo"}
    rows = csv.set_index(["benchmark", "stream"])
    assert rows.loc[("synth", "rgb"), "videos"] == 24 and rows.loc[("aslan", "rgb"), "videos"] == 40  # pairs
    assert rows.loc[("activitynet", "rgb"), "videos"] == 6 and rows.loc[("scenes", "flow"), "videos"] == 9
    assert rows.loc[("scenes", "rgb"), "excluded"] == 1 and rows.loc[("synth", "rgb"), "excluded"] == 0
    assert np.isfinite(rows.loc[("aslan", "two_stream"), "auc"])
    assert np.isfinite(rows.loc[("activitynet", "flow"), "mAP"])
    assert ((csv["accuracy"] >= 0) & (csv["accuracy"] <= 100)).all()
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| synth | UCF101 | accuracy |" in md and "88.60 | 82.30 | 83.50" in md  # the paper's UCF101 row
    assert "| aslan | ASLAN | auc |" in md and "87.90 | 86.50 | 77.40" in md
    assert "| scenes | YUPENN | accuracy |" in md and "scenes: 1 video(s) without features" in md
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table is not None and len(table) == 12

    # Another classifier setting: the protocols run again on the cached features, nothing is recomputed,
    # also when SynthActions' flow is read from an existing store (flow_store, as `make flow`'s).
    features = sorted((out / "features").rglob("*.npz"))
    stamps = [f.stat().st_mtime_ns for f in features]
    capsys.readouterr()
    synth = dataclasses.replace(cfg.benchmark["synth"], flow_store=str(out / "flow/synth"))
    transfer = dataclasses.replace(cfg.transfer, cs=[1.0], benchmarks=["synth", "activitynet"])
    again = transfer_stage(dataclasses.replace(cfg, benchmark={**cfg.benchmark, "synth": synth}, transfer=transfer))
    assert sorted((out / "features").rglob("*.npz")) == features and [f.stat().st_mtime_ns for f in features] == stamps
    assert "already done" in capsys.readouterr().out and set(again["selected"].str.contains("C=1")) == {True}


def test_transfer_bad_inputs_stop_with_one_line(tiny_transfer, tmp_path, capsys):
    cfg = load_config(tiny_transfer, FAST + ['transfer.benchmarks=["scenes"]'])
    companions.generate_companions(cfg.transfer.companions)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"no checkpoint")
    assert main(["transfer", "--config", str(tiny_transfer), "--set", f"transfer.rgb={garbage}"]) == 2
    assert "error: transfer.rgb: checkpoint" in capsys.readouterr().err
    one = tmp_path / "one_class"
    (one / "Only").mkdir(parents=True)
    (one / "Only/v.avi").write_bytes(b"")
    with pytest.raises(PipelineError, match=r"benchmark.scenes: its videos \(under .*one_class\) hold 1 class"):
        transfer_stage(load_config(tiny_transfer, FAST + ['transfer.benchmarks=["scenes"]',
                                                         f"benchmark.scenes.root={one}"]))
    mat = Path(cfg.transfer.companions) / "aslan/Views/View2.mat"
    savemat(str(mat), {"something_else": np.zeros((2, 5, 10))})
    capsys.readouterr()
    assert main(["transfer", "--config", str(tiny_transfer), *sum((["--set", s] for s in FAST), []),
                 "--set", 'transfer.benchmarks=["aslan"]', "--set", "transfer.companions="]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "View2.mat: no variable 'action_splits_pairs'" in err and "\n" not in err


def test_two_stream_rows_enter_the_protocols_as_fusion_svm_two_stream():
    """The protocols apply signed sqrt + L2 themselves; the two-stream input must come out of that as
    svm.two_stream exactly (float64)."""
    from fusion import svm
    from pipeline.transfer.stage import _pre_normalised

    rng = np.random.default_rng(0)
    rgb, flow = rng.normal(size=(5, 7)), np.abs(rng.normal(size=(5, 3)))
    z = svm.two_stream(rgb, flow)
    np.testing.assert_allclose(svm.normalise(_pre_normalised(z)), z, rtol=1e-12, atol=1e-15)


def test_shards_compute_their_own_videos_and_the_final_run_only_scores(tiny_transfer, tmp_path, capsys):
    cfg = load_config(tiny_transfer, FAST + ['transfer.benchmarks=["scenes"]'])
    out = tmp_path / "work/transfer"
    counts = []
    for shard in ((0, 2), (1, 2)):
        assert transfer_stage(cfg, shard=shard) is None
        counts.append(len(list((out / "features/scenes").rglob("*.npz"))))
        assert not (out / "results.csv").exists()
    assert counts == [10, 18]  # 5 of the 9 videos, then the other 4, for each of the two streams
    assert sorted(p.name for p in (out / "flow/scenes").glob("manifest*.csv")) == \
        ["manifest-shard-0-of-2.csv", "manifest-shard-1-of-2.csv"]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "features/scenes").rglob("*.npz")}
    capsys.readouterr()
    table = transfer_stage(cfg)
    assert {p: p.stat().st_mtime_ns for p in (out / "features/scenes").rglob("*.npz")} == stamps
    assert list(table["videos"]) == [9, 9, 9] and (out / "results.csv").is_file()
