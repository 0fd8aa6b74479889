"""The CLI tools end to end: import-weights -> export / predict / features, and their errors."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from fusion.errors import FusionError
from p3dbase.overwrite import OutputExistsError
from pipeline import cli, tools_cli
from streams.checkpoint import load_checkpoint
from streams.errors import StreamsError
from streams.p3d import build_model
from tests.builders import (
    checkpoint_with_statistics,
    official_layers,
    randomise,
    save_tiny_checkpoint,
    write_avi,
    write_caffemodel,
)

# Cheap TV-L1 and few views: the flow and fusion tests check the numbers, these the wiring.
FAST = ["--set", "flow.size=", "--set", "flow.nscales=2", "--set", "flow.warps=1", "--set", "flow.inner_iterations=5",
        "--set", "flow.outer_iterations=2", "--set", "flow.median_filtering=1", "--set", "eval.clips=1",
        "--set", "eval.svm_clips=2"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline")
    tools_cli.add_subcommands(parser.add_subparsers(dest="stage", required=True))
    return parser.parse_args(argv)


def run(argv: list[str]) -> None:
    tools_cli.run(parse(argv))


def test_import_then_export_predict_and_features(tmp_path, capsys):
    torch.manual_seed(0)
    net = randomise(build_model("p3d_tiny", 3, 3))
    caffemodel = write_caffemodel(tmp_path / "p3d_rgb_kinetics.caffemodel", official_layers(net, fc_name="fc_kinetics"))
    (tmp_path / "classes.txt").write_text("abseiling\nair drumming\nyoga\n")
    rgb = tmp_path / "weights" / "rgb.pt"
    run(["import-weights", str(caffemodel), "--out", str(rgb), "--classes", str(tmp_path / "classes.txt")])
    model, ckpt = load_checkpoint(rgb)
    assert ckpt.classes == ["abseiling", "air drumming", "yoga"] and ckpt.arch == "p3d_tiny"

    run(["export", str(rgb), "--out", str(tmp_path / "export"), "--format", "torchscript", "--clip-len", "4",
         "--crop", "32"])
    info = json.loads((tmp_path / "export" / "rgb.logits.json").read_text())
    assert info["input_shape"] == ["batch", 3, 4, 32, 32] and info["files"] == ["rgb.logits.pt"]

    flow = checkpoint_with_statistics(tmp_path / "weights" / "flow.pt", modality="flow", classes=ckpt.classes)
    video = write_avi(tmp_path / "videos" / "a" / "clip.avi", frames=20)
    capsys.readouterr()
    run(["predict", str(video), "--rgb", str(rgb), "--flow", str(flow), "--top", "2", "--json", *FAST])
    (prediction,) = json.loads(capsys.readouterr().out)
    assert prediction["frames"] == 20 and len(prediction["fusion"]) == 2
    assert prediction["fusion"][0]["class"] in ckpt.classes

    out = tmp_path / "features.npz"
    run(["features", str(tmp_path / "videos"), "--rgb", str(rgb), "--flow", str(flow), "--out", str(out), *FAST])
    with np.load(out) as data:
        assert list(data["ids"]) == ["a/clip"] and data["two_stream"].shape == (1, 2 * 256)


def test_tools_raise_the_packages_errors(tmp_path):
    truncated = tmp_path / "p3d_rgb_199.checkpoint.pth.tar"
    truncated.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(StreamsError, match="p3d_rgb_199.checkpoint.pth.tar"):
        run(["import-weights", str(truncated), "--out", str(tmp_path / "x.pt")])
    with pytest.raises(StreamsError, match="does not exist"):
        run(["export", str(tmp_path / "absent.pt"), "--out", str(tmp_path)])
    with pytest.raises(FusionError, match="an RGB and/or a flow checkpoint"):
        run(["predict", str(tmp_path / "v.mp4")])
    with pytest.raises(SystemExit):  # argparse: --out is required
        parse(["features", str(tmp_path), "--rgb", "x.pt"])


def test_the_cli_prints_errors_with_status_2(tmp_path, capsys):
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\x0a\xff\xff")
    assert cli.main(["import-weights", str(bad), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["export", "x.pt", "--out", ""], ["export", "", "--out", "e"],
                                  ["features", "v.avi", "--rgb", "r.pt", "--out", ""],
                                  ["import-weights", "a.caffemodel", "--out", ""], ["report", ""]])
def test_an_empty_path_argument_is_refused_not_taken_for_this_folder(tmp_path, capsys, monkeypatch, args):
    """`export --out ""` wrote its three files into the current folder without a word: Path("") is "."."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 2
    assert "an empty path: name a file or folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_predict_and_features_say_in_their_exit_status_when_some_videos_failed(tmp_path, capsys):
    rgb = save_tiny_checkpoint(tmp_path / "rgb.pt", "rgb")
    good = write_avi(tmp_path / "videos" / "good.avi", frames=12)
    broken = tmp_path / "videos" / "broken.mp4"
    broken.write_bytes(b"not a video")
    common = ["--rgb", str(rgb), *FAST, "--set", "eval.jobs=1"]
    assert cli.main(["predict", str(good), *common]) == 0
    assert cli.main(["predict", str(good), str(broken), *common]) == 1  # some failed: listed, status 1
    assert "broken.mp4" in capsys.readouterr().out
    assert cli.main(["predict", str(broken), *common]) == 2  # none could be read: an error
    timeline = tmp_path / "timeline"
    assert cli.main(["predict", str(good), "--timeline", "--stride", "4", "--out", str(timeline), *common]) == 0
    assert sorted(p.name for p in timeline.iterdir()) == ["good.timeline.csv", "good.timeline.json",
                                                          "good.timeline.png"]
    out = tmp_path / "f.npz"
    assert cli.main(["features", str(tmp_path / "videos"), "--out", str(out), *common]) == 1
    before = out.read_bytes()
    # One rule for every output: an existing one is refused unless --force (as export does).
    assert cli.main(["features", str(tmp_path / "videos"), "--out", str(out), *common]) == 2
    assert "would overwrite" in capsys.readouterr().err and out.read_bytes() == before
    broken.unlink()
    assert cli.main(["features", str(tmp_path / "videos"), "--out", str(out), "--force", *common]) == 0
    snippets = tmp_path / "snippets"
    assert cli.main(["features", str(tmp_path / "videos"), "--out", str(snippets), "--stride", "4", *common]) == 0
    assert np.load(snippets / "good.npy").shape == (3, 256)  # 12 frames, window 4: starts 0, 4, 8
    with pytest.raises(FusionError, match="give --stride too"):
        run(["features", str(good), "--out", str(snippets), "--mirror", "--rgb", str(rgb)])


def test_export_names_the_stream_and_never_overwrites_silently(tmp_path, capsys):
    run_dir = tmp_path / "train" / "flow" / "split1"
    save_tiny_checkpoint(run_dir / "last.pt", "flow")
    save_tiny_checkpoint(tmp_path / "train" / "rgb" / "split1" / "last.pt", "rgb")
    out = tmp_path / "export"
    # Two run folders: both finished models are last.pt, their exports must not collide.
    run(["export", str(run_dir), "--out", str(out), "--format", "torchscript"])
    run(["export", str(tmp_path / "train" / "rgb" / "split1"), "--out", str(out), "--format", "torchscript"])
    assert sorted(p.name for p in out.iterdir()) == ["last_flow.logits.json", "last_flow.logits.pt",
                                                     "last_rgb.logits.json", "last_rgb.logits.pt"]
    assert json.loads((out / "last_flow.logits.json").read_text())["modality"] == "flow"
    before = (out / "last_flow.logits.pt").stat().st_mtime_ns
    with pytest.raises(OutputExistsError, match=r"would overwrite .*last_flow\.logits\.pt.*--force"):
        run(["export", str(run_dir), "--out", str(out), "--format", "torchscript"])
    assert (out / "last_flow.logits.pt").stat().st_mtime_ns == before
    run(["export", str(run_dir), "--out", str(out), "--format", "torchscript", "--force"])
    assert (out / "last_flow.logits.pt").stat().st_mtime_ns != before
    # A name that already says its stream keeps it.
    from streams.export import export_name

    assert export_name("weights/p3d_rgb_kinetics.pt", "rgb") == "p3d_rgb_kinetics"
    assert export_name("weights/flowers.pt", "flow") == "flowers_flow"


def test_eval_of_given_checkpoints_never_writes_into_make_evals_report(tmp_path):
    from pipeline.config import load_config
    from pipeline.stages import eval_dir, explicit_eval_dir

    cfg = load_config(None, [f"work_dir={str(tmp_path / 'work')!r}"])
    rgb, flow = tmp_path / "weights" / "p3d_rgb.pt", tmp_path / "weights" / "p3d_flow.pt"
    assert explicit_eval_dir(cfg, {"rgb": rgb}) == tmp_path / "weights" / "eval-p3d_rgb"
    assert explicit_eval_dir(cfg, {"flow": flow, "rgb": rgb}) == tmp_path / "weights" / "eval-p3d_rgb+p3d_flow"
    assert explicit_eval_dir(cfg, {"rgb": rgb}, tmp_path / "mine") == tmp_path / "mine"
    assert eval_dir(cfg) == tmp_path / "work" / "eval"  # make eval's report: never one of the above
    named = load_config(None, [f"work_dir={str(tmp_path / 'work')!r}", "train.run='ablation'"])
    assert explicit_eval_dir(named, {"rgb": rgb}) == tmp_path / "work" / "runs" / "ablation" / "eval"
