"""The transfer stage: its config, the ASLAN reader, the generated companions, and a whole run."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.io import loadmat, savemat

from flow.video import VideoReader
from fusion.errors import FusionError
from pipeline.cli import main
from pipeline.config import Config, dump_toml, load_config
from pipeline.datasets import read_dataset
from pipeline.datasets.aslan import read_view2
from pipeline.errors import ConfigError, DatasetError, PipelineError
from pipeline.stages import transfer_stage
from pipeline.synth import companions, generate
from pipeline.synth.config import SynthConfig
from pipeline.transfer.benchmarks import check_transfer_config
from pipeline.transfer.config import BenchmarkConfig
from streams.config import TrainConfig
from tests.builders import save_tiny_checkpoint

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

def test_benchmark_tables_load_with_defaults_and_round_trip(tmp_path, monkeypatch):
    cfg = config(tmp_path, overrides=["benchmark.scenes.root=elsewhere", "transfer.svm_cs=[1, 10]"])
    assert list(cfg.benchmark) == ["aslan", "scenes"]
    assert cfg.benchmark["scenes"].root == "elsewhere" and cfg.transfer.svm_cs == [1.0, 10.0]
    assert cfg.benchmark["aslan"].resolved_protocol() == "aslan_view2"
    assert cfg.benchmark["scenes"].resolved_protocol() == "loo" and cfg.benchmark["scenes"].split == "all"
    back = tmp_path / "back.toml"
    back.write_text(dump_toml(cfg), encoding="utf-8")
    assert load_config(back) == cfg
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.pt").touch()
    check_transfer_config(cfg)  # complete: no error


@pytest.mark.parametrize("overrides, message", [
    (["benchmark.scenes.protocol=kfold"], r"\[benchmark.scenes\] protocol: must be one of three_split, "),
    (["benchmark.aslan.protocol=loo"], r"\[benchmark.aslan\] protocol: aslan_view2 is the protocol of format aslan"),
    (["benchmark.ucf.format=folder", "benchmark.ucf.protocol=three_split"],
     r"\[benchmark.ucf\] protocol: three_split needs a format with three splits"),
    # a protocol the format cannot have: refused at load, not after hours of flow and features
    (["benchmark.scenes.protocol=train_val"], r"\[benchmark.scenes\] protocol: train_val trains on a training "
                                              r"subset and scores a validation \(or test\) one; format folder has "
                                              r"neither \(class folders only\): use protocol loo$"),
    (["benchmark.ucf.format=synth", "benchmark.ucf.protocol=train_val"],
     r"\[benchmark.ucf\] protocol: train_val on format synth trains and scores one split: set split = \"1\""),
    (["benchmark.m.format=mmaction", "benchmark.m.train_list=t.txt", "benchmark.m.protocol=train_val"],
     r"\[benchmark.m\] protocol: train_val needs a train_list and a val_list or test_list \(format mmaction\)"),
    (["benchmark.scenes.rot=x"], r"unknown key 'benchmark.scenes.rot' \(did you mean 'benchmark.scenes.root'\?\)"),
    (["benchmark.scenes.root=[1]"], r"benchmark.scenes.root must be str"),
    (["benchmark.scenes.format=avi"], r"\[benchmark.scenes\] format: must be one of .*aslan.*, got 'avi'"),
    (["benchmark.scenes.paper=kinetics"], r"\[benchmark.scenes\] paper: must be one of ucf101, "),
    (["transfer.aslan_normalisation=l1"], r"\[transfer\] aslan_normalisation: must be 'l2' or 'zscore'"),
    (["transfer.svm_clip=3"], r"unknown key 'transfer.svm_clip' \(did you mean 'transfer.svm_clips'\?\)"),
    (["benchmarks=3"], r"unknown key 'benchmarks' \(did you mean 'benchmark'\?\)"),
    (["benchmark.x=3"], r"\[benchmark\] must hold named tables such as \[benchmark.NAME\]"),
])
def test_config_errors_name_the_set_item_and_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        config(tmp_path, overrides=overrides)
    where = str(tmp_path / "t.toml") if overrides == ["benchmark.x=3"] else f"--set {overrides[-1]}"
    assert str(err.value).startswith(where + ": ")


def test_a_benchmark_without_its_section_and_a_missing_extractor_are_named(tmp_path):
    cfg = config(tmp_path, overrides=['transfer.benchmarks=["aslan", "scene"]'])
    with pytest.raises(PipelineError, match=r"^transfer.benchmarks names 'scene' but there is no "
                                            r"\[benchmark.scene\] section \(did you mean 'scenes'\?\)$"):
        check_transfer_config(cfg)
    with pytest.raises(PipelineError, match=r"\[transfer\] rgb / flow: give an RGB and/or a flow"):
        check_transfer_config(config(tmp_path, overrides=["transfer.rgb="]))
    with pytest.raises(PipelineError, match=r"^transfer.rgb: r.pt does not exist"):
        check_transfer_config(config(tmp_path, overrides=['transfer.benchmarks=["aslan"]']))


@pytest.mark.parametrize("old, new", [("cs=[1.0]", "svm_cs"), ("folds=3", "svm_folds"), ("clips=4", "svm_clips")])
def test_the_old_transfer_svm_keys_name_their_new_name(tmp_path, old, new):
    """[transfer] and [eval] give one setting one name: svm_clips, svm_cs, svm_folds."""
    expected = f"--set transfer.{old}: transfer.{old.split('=')[0]} is now called transfer.{new} "
    with pytest.raises(ConfigError, match="^" + re.escape(expected)):
        config(tmp_path, overrides=[f"transfer.{old}"])


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


def test_aslan_reader_warns_of_a_pair_whose_flag_its_actions_contradict(tmp_path, caplog):
    """same = 1 on two different actions was read without a word: damaged annotations the SVM learns from."""
    pairs = aslan_pairs()
    pairs[1, 2, 3] = 1 - pairs[1, 2, 3]
    videos, mat = write_aslan(tmp_path, pairs)
    with caplog.at_level("WARNING"):
        read_dataset(BenchmarkConfig(format="aslan", root=str(videos), annotations=str(mat)))
    assert "1 pair(s) of action_splits_pairs have a same / not-same flag their action labels contradict, e.g. " \
           "split 4, row 2" in caplog.text
    caplog.clear()
    videos, mat = write_aslan(tmp_path / "fine", aslan_pairs())
    with caplog.at_level("WARNING"):
        read_dataset(BenchmarkConfig(format="aslan", root=str(videos), annotations=str(mat)))
    assert "contradict" not in caplog.text


@pytest.mark.parametrize("case, message", [
    ("missing", r"ASLAN View-2 file \(Views/View2.mat\) not found: .*View2.mat"),
    ("garbage", r"View2.mat: not a readable MATLAB file"),
    ("variable", r"View2.mat: no variable 'action_splits_pairs' \(found: pairs\)"),
    ("shape", r"View2.mat: action_splits_pairs has shape \[2, 5, 9\], expected \[pairs, 5, 10\]"),
    ("flag", r"column 3 \(same / not-same\) must be 0 or 1, got \[2\]"),
    ("not_on_disk", r"View2.mat: 1 clip id\(s\) of View-2 have no video under .*ASLAN_AVI, e.g. 0007 "
                    r"\(expected 0007.avi\)"),
    ("two_labels", r"View2.mat: clip 0001 has action label 1 in one pair and 9 in another"),
    ("label_zero", r"View2.mat: action_splits_pairs has action label 0; labels start at 1"),
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
    elif case == "label_zero":  # was accepted: a class "0" made of damaged rows
        pairs[:, 3:, 0] = 0
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
svm_clips = 3
svm_folds = 2
svm_cs = [0.1, 10.0]
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


def test_transfer_end_to_end_report_cache_and_broken_videos(tiny_transfer, tmp_path, capsys, monkeypatch):
    from fusion import transfer
    from fusion import transfer_stage as transfer_stage_module

    cfg = load_config(tiny_transfer, FAST)
    companions.generate_companions(cfg.transfer.companions)
    (Path(cfg.transfer.companions) / "scenes/CyanZoomOut/broken.avi").write_bytes(b"not a video")
    aslan_calls, extractions = [], {}
    real_aslan, real_extract = transfer.aslan_view2, transfer_stage_module.extract

    def spy(layers, pairs, *args, **kwargs):
        aslan_calls.append((layers, pairs))
        return real_aslan(layers, pairs, *args, **kwargs)

    def keep(videos, *args, desc, **kwargs):  # each benchmark's features, as the protocols are given them
        extractions[desc] = real_extract(videos, *args, desc=desc, **kwargs)
        return extractions[desc]

    monkeypatch.setattr(transfer, "aslan_view2", spy)
    monkeypatch.setattr(transfer_stage_module, "extract", keep)
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
    # The broken scene video is a miss in N, as ActivityNet's scorer counts a video without predictions.
    assert rows.loc[("activitynet", "rgb"), "videos"] == 6 and rows.loc[("scenes", "flow"), "videos"] == 10
    assert rows.loc[("scenes", "rgb"), "excluded"] == 1 and rows.loc[("synth", "rgb"), "excluded"] == 0
    assert rows.loc[("scenes", "rgb"), "details"] == "1 of the 10 videos have no features: counted as misses"
    assert np.isfinite(rows.loc[("aslan", "two_stream"), "auc"])
    assert np.isfinite(rows.loc[("activitynet", "flow"), "mAP"])
    # ASLAN's wiring: each stream's 4 layers (pool5, prob, res5c, res4) of every clip as extracted, two
    # streams' 8 (rgb_ then flow_), View-2's pairs as the .mat file holds them; and its accuracy
    # recomputed from those.
    features = extractions["transfer aslan"].features
    pairs = loadmat(str(cfg.benchmark["aslan"].annotations))["action_splits_pairs"]
    layers = ("pool5", "prob", "res5c", "res4")
    expected = {s: {layer: {int(v): features[s][v][layer] for v in features[s]} for layer in layers}
                for s in ("rgb", "flow")}
    expected["two_stream"] = {f"{s}_{layer}": expected[s][layer] for s in ("rgb", "flow") for layer in layers}
    assert len(aslan_calls) == 3
    for stream, (got, got_pairs) in zip(("rgb", "flow", "two_stream"), aslan_calls, strict=True):
        assert list(got) == list(expected[stream]), stream  # 4 layers x 12 measures; 8 for two streams
        for name, clips in expected[stream].items():
            assert sorted(got[name]) == sorted(clips) == list(range(1, 41))
            for clip, vector in clips.items():
                np.testing.assert_array_equal(got[name][clip], vector)
        np.testing.assert_array_equal(got_pairs, pairs)
        again = real_aslan(expected[stream], pairs, "l2", cs=[0.1, 10.0], folds=2, seed=0)
        assert rows.loc[("aslan", stream), "accuracy"] == pytest.approx(again.accuracy, abs=0.006)
        assert f"{len(expected[stream])} layers x 12 measures" in rows.loc[("aslan", stream), "selected"]
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
    transfer = dataclasses.replace(cfg.transfer, svm_cs=[1.0], benchmarks=["synth", "activitynet"])
    again = transfer_stage(dataclasses.replace(cfg, benchmark={**cfg.benchmark, "synth": synth}, transfer=transfer))
    assert sorted((out / "features").rglob("*.npz")) == features and [f.stat().st_mtime_ns for f in features] == stamps
    assert "already done" in capsys.readouterr().out and set(again["selected"].str.contains("C=1")) == {True}


def test_transfer_bad_inputs_stop_with_one_line(tiny_transfer, tmp_path, capsys):
    cfg = load_config(tiny_transfer, FAST + ['transfer.benchmarks=["scenes"]'])
    companions.generate_companions(cfg.transfer.companions)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"no checkpoint")
    assert main(["transfer", "--config", str(tiny_transfer), "--set", f"transfer.rgb={garbage}"]) == 2
    assert f"error: checkpoint {garbage} cannot be read" in capsys.readouterr().err.splitlines()[-1]
    one = tmp_path / "one_class"
    (one / "Only").mkdir(parents=True)
    (one / "Only/v.avi").write_bytes(b"")
    with pytest.raises(FusionError, match=r"benchmark.scenes: its videos \(under .*one_class\) hold 1 class"):
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
    from fusion.transfer_stage import _pre_normalised

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


def scenes_only(tiny_transfer: Path, *more: str) -> list[str]:
    """CLI arguments of a transfer run on the generated scenes alone."""
    return ["transfer", "--config", str(tiny_transfer), *sum((["--set", s] for s in FAST), []),
            "--set", 'transfer.benchmarks=["scenes"]', *sum((["--set", s] for s in more), [])]


def test_transfer_refuses_flow_made_with_other_settings_than_the_flow_stream_was_trained_on(
        tiny_transfer, tmp_path, capsys):
    """As eval does: the bound (size, lambda, ...) the flow stream was trained on decides its input."""
    import dataclasses as dc

    import torch

    from flow.stage import config_flow_settings, store_params
    from flow.store import create_store
    from streams import transforms
    from streams.checkpoint import make_payload, save_checkpoint
    from streams.config import ModelConfig
    from streams.p3d import build_model

    cfg = load_config(tiny_transfer, FAST)
    trained = config_flow_settings(cfg.flow)  # bound 20, as the runs below compute it unless told otherwise
    model = build_model("p3d_tiny", 3, transforms.CHANNELS["flow"], dropout=0.5)
    torch.manual_seed(0)
    flow_ckpt = tmp_path / "flow_b5.pt"
    save_checkpoint(flow_ckpt, make_payload(
        model, arch="p3d_tiny", modality="flow", classes=["c0", "c1", "c2"],
        input_convention=transforms.INPUT_CONVENTION["flow"], model_config=dc.asdict(ModelConfig(arch="p3d_tiny")),
        train_config=dc.asdict(TRAIN_CFG), step=1, epoch=1, metrics={}, flow=trained))
    out = tmp_path / "work/transfer"
    assert main(scenes_only(tiny_transfer, f"transfer.flow={flow_ckpt}", "flow.bound=6")) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("error: flow stream ") and "bound = 20.0" in err and "bound = 6.0" in err
    assert "--set flow.bound=20.0" in err
    assert not (out / "flow").exists() and not (out / "config.toml").exists()  # refused before any work
    other = create_store(tmp_path / "store_b6", bound=6.0, params=store_params(cfg.flow))
    assert main(scenes_only(tiny_transfer, f"transfer.flow={flow_ckpt}",
                            f"benchmark.scenes.flow_store={other.root}")) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("error: ") and f"benchmark.scenes.flow_store {other.root} has bound = 6.0" in err


def test_a_refused_transfer_run_leaves_the_last_config_toml(tiny_transfer, tmp_path, capsys):
    cfg = load_config(tiny_transfer, FAST)
    companions.generate_companions(cfg.transfer.companions)
    savemat(str(Path(cfg.transfer.companions) / "aslan/Views/View2.mat"), {"something_else": np.zeros((2, 5, 10))})
    last = tmp_path / "work/transfer/config.toml"
    last.parent.mkdir(parents=True)
    last.write_text("# the last run's settings\n")
    assert main(scenes_only(tiny_transfer, 'transfer.benchmarks=["aslan"]', "transfer.companions=")) == 2
    assert "no variable 'action_splits_pairs'" in capsys.readouterr().err
    assert last.read_text() == "# the last run's settings\n"


def test_refused_files_are_counted_and_listed_in_the_transfer_report(tiny_transfer, tmp_path, capsys):
    import os

    cfg = load_config(tiny_transfer, FAST)
    companions.generate_companions(cfg.transfer.companions)
    cyan = Path(cfg.transfer.companions) / "scenes/CyanZoomOut"
    os.mkfifo(cyan / "fifo.avi")
    outside = tmp_path / "outside.avi"
    outside.write_bytes(b"x")
    (cyan / "link.avi").symlink_to(outside)
    assert main(scenes_only(tiny_transfer, "transfer.flow=")) == 0
    out = tmp_path / "work/transfer"
    rows = pd.read_csv(out / "results.csv")
    assert list(rows["stream"]) == ["rgb"] and list(rows["videos"]) == [9] and list(rows["excluded"]) == [2]
    excluded = pd.read_csv(out / "excluded.csv")
    assert sorted(excluded["video_id"]) == ["CyanZoomOut/fifo.avi", "CyanZoomOut/link.avi"]
    assert excluded["reason"].str.startswith("refused: ").all() and set(excluded["stream"]) == {"rgb"}
    assert "scenes: 2 file(s) under " in (out / "results.md").read_text(encoding="utf-8")


def test_a_transfer_run_in_which_every_video_failed_exits_non_zero(tiny_transfer, tmp_path, capsys):
    broken = tmp_path / "broken_scenes"
    for cls in ("A", "B"):
        (broken / cls).mkdir(parents=True)
        for k in range(2):
            (broken / cls / f"v{k}.avi").write_bytes(b"not a video")
    assert main(scenes_only(tiny_transfer, "transfer.flow=", f"benchmark.scenes.root={broken}")) == 2
    err = capsys.readouterr().err
    assert "error: transfer: no benchmark could be scored for any stream" in err
    assert "scenes: no rgb row: none of its 4 videos has rgb features" in \
        (tmp_path / "work/transfer/results.md").read_text(encoding="utf-8")
    assert len(pd.read_csv(tmp_path / "work/transfer/excluded.csv")) == 4


def test_train_val_on_a_format_with_groups_chooses_c_on_group_folds_and_counts_absent_videos(tiny_transfer,
                                                                                               tmp_path):
    """train_val on SynthActions split 1 chose C on stratified folds that put clips of one group on both
    sides (three_split's were group folds); and a scored video listed but gone from the root shrank the
    test set without a word. C now comes from group folds, the gone video is a miss, listed in
    excluded.csv, and the row says which subset it scored."""
    test_list = (tmp_path / "synth/annotations/testlist01.txt").read_text().split()
    (tmp_path / "synth/videos" / test_list[0]).unlink()
    assert main(["transfer", "--config", str(tiny_transfer), *sum((["--set", s] for s in FAST), []),
                 "--set", 'transfer.benchmarks=["synth"]', "--set", "benchmark.synth.protocol=train_val",
                 "--set", 'benchmark.synth.split="1"', "--set", "transfer.flow="]) == 0
    out = tmp_path / "work/transfer"
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert row["protocol"] == "train_val" and "group CV" in row["selected"], row["selected"]
    assert row["videos"] == len(test_list) and row["excluded"] == 1
    assert "scored: the test (the annotations list no validation video) videos; 1 of them without features" \
        in row["details"]
    excluded = pd.read_csv(out / "excluded.csv")
    gone = test_list[0].rsplit(".", 1)[0]
    assert list(excluded["video_id"]) == [gone]
    assert excluded["reason"].iloc[0].startswith("listed in the annotations but not under")


def test_train_val_scores_the_validation_subset_the_annotations_list_even_when_its_videos_are_gone(
        tiny_transfer):
    """ActivityNet lists validation videos; with all of them gone from the root, train_val scored the
    test subset instead (`dataset.val() or dataset.test()`) without a word. The subset is chosen by what
    the annotations list, and the gone videos are its misses."""
    from pipeline.transfer.benchmarks import read_benchmark

    cfg = load_config(tiny_transfer, FAST)
    companions.generate_companions(cfg.transfer.companions)
    bench = read_benchmark("activitynet", cfg.benchmark["activitynet"])
    (train, scored), = bench.splits
    assert bench.scored == "val" and scored and not bench.absent
    for video in bench.videos:
        if video.video_id in scored:
            video.path.unlink()
    gone = read_benchmark("activitynet", cfg.benchmark["activitynet"])
    # found as v_<key>.mp4 (the crawler's name), the gone ones keep their database key
    key = [v.removeprefix("v_") for v in scored]
    assert gone.scored == "val" and gone.splits == [(train, key)]
    assert sorted(v.video_id for v in gone.absent) == sorted(key)


@pytest.mark.parametrize("protocol, absent", [("train_val", ["gone_val"]), ("loo", ["gone_test", "gone_val"])])
def test_absent_videos_are_those_the_protocol_scores(tmp_path, protocol, absent):
    """train_val scoring the validation subset counted an absent test video as excluded (and "a miss")
    that it never scored; leave-one-out, which pools every video, counted none of them as misses."""
    from pipeline.transfer.benchmarks import read_benchmark

    root, csv = tmp_path / "clips", tmp_path / "k.csv"
    root.mkdir()
    rows = ["label,youtube_id,time_start,time_end,split"]
    for k, (label, split) in enumerate([("a", "train"), ("b", "train"), ("a", "validate"), ("b", "validate"),
                                        ("a", "test")]):
        rows.append(f"{label},v{k},0,10,{split}")
        (root / f"v{k}_000000_000010.mp4").write_bytes(b"")
    rows += ["a,gone_val,0,10,validate", "b,gone_test,0,10,test"]
    csv.write_text("\n".join(rows) + "\n")
    bench = read_benchmark("k", BenchmarkConfig(format="kinetics", root=str(root), annotations=str(csv),
                                                protocol=protocol))
    assert sorted(v.video_id.removesuffix("_000000_000010") for v in bench.absent) == absent
