"""Checkpoints carry the flow settings they were trained on; eval, predict and features compare them
with the store or the `[flow]` settings they are given: stop on the bound or the size, warn on
TV-L1's solver settings."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from flow.config import FlowConfig
from flow.stage import config_flow_settings, flow_settings, store_params
from flow.store import open_store
from fusion.config import EvalConfig
from fusion.extract import extract_features
from fusion.predict import predict
from fusion.stage import EvalJob, run_eval
from streams import transforms
from streams.checkpoint import check_flow_settings, make_payload, read_checkpoint, save_checkpoint
from streams.config import ModelConfig
from streams.errors import StreamsError
from streams.p3d import build_model
from tests.builders import COLOUR_TRAIN_CFG as TRAIN_CFG
from tests.builders import COLOURS as CLASSES
from tests.builders import FAST_FLOW, make_toy_store, split_items, write_avi

STORE_FLOW = FlowConfig()  # the defaults: 340x256, bound 20
SMALL_FLOW = FlowConfig(size="64x64", bound=5.0)  # what the mismatched model was trained on


def save_with_flow(path: Path, modality: str, flow: dict | None) -> Path:
    torch.manual_seed(0)
    model = build_model("p3d_tiny", len(CLASSES), transforms.CHANNELS[modality], dropout=0.5)
    save_checkpoint(path, make_payload(model, arch="p3d_tiny", modality=modality, classes=list(CLASSES),
                                       input_convention=transforms.INPUT_CONVENTION[modality],
                                       model_config=dataclasses.asdict(ModelConfig(arch="p3d_tiny")),
                                       train_config=dataclasses.asdict(TRAIN_CFG), step=1, epoch=1, metrics={},
                                       flow=flow))
    return path


def test_checkpoints_carry_the_flow_settings(tmp_path):
    settings = config_flow_settings(SMALL_FLOW)
    assert settings["bound"] == 5.0 and settings["size"] == "64x64" and settings["source"] == "videos"
    assert settings["backend"] == SMALL_FLOW.backend and settings["lambda_"] == 0.15 and "jobs" not in settings
    ckpt = read_checkpoint(save_with_flow(tmp_path / "a.pt", "flow", settings))
    assert ckpt.flow == settings
    assert read_checkpoint(save_with_flow(tmp_path / "b.pt", "flow", None)).flow == {}  # unknown: imported


def test_the_comparison_stops_on_bound_and_size_and_warns_on_the_solver(tmp_path):
    trained = config_flow_settings(SMALL_FLOW)
    flow = read_checkpoint(save_with_flow(tmp_path / "flow.pt", "flow", trained))
    rgb = read_checkpoint(save_with_flow(tmp_path / "rgb.pt", "rgb", trained))
    given = config_flow_settings(STORE_FLOW)
    with pytest.raises(StreamsError) as err:
        check_flow_settings(flow, given, "the store at S")
    message = str(err.value)
    assert "\n" not in message and "(bound, size differ)" in message and "the store at S" in message
    assert "bound = 5.0, size = '64x64'" in message and "bound = 20.0, size = '340x256'" in message
    assert "--set flow.bound=5.0 flow.size=64x64" in message
    with pytest.raises(StreamsError, match=r"rgb stream .* \(size differ\)"):  # frames depend on the size only
        check_flow_settings(rgb, given, "the store at S")
    same_size = config_flow_settings(dataclasses.replace(STORE_FLOW, size="64x64"))
    assert check_flow_settings(rgb, same_size, "S") == []  # the bound does not matter to RGB
    # TV-L1's tolerance and iteration count only warn; 20 and 20.0 are the same bound.
    solver = dataclasses.replace(SMALL_FLOW, epsilon=0.05, inner_iterations=10)
    warnings = check_flow_settings(flow, {**config_flow_settings(solver), "bound": 5}, "the [flow] settings")
    assert [w.split(": flow ")[1].split(" was")[0] for w in warnings] == ["epsilon", "inner_iterations"]
    with pytest.raises(StreamsError, match=r"\(lambda_ differ\)"):  # another energy: other flow
        check_flow_settings(flow, config_flow_settings(dataclasses.replace(SMALL_FLOW, lambda_=0.3)), "S")
    # imported rawframes record no TV-L1 settings: only what both sides know is compared
    imported = flow_settings(5.0, store_params(dataclasses.replace(SMALL_FLOW, source="rawframes")))
    assert check_flow_settings(flow, imported, "S") == [f"flow stream {flow.path}: flow source was 'videos' in "
                                                        "training, 'rawframes' in S (TV-L1's solver or the flow's "
                                                        "origin: expect slightly other scores)"]
    unknown = read_checkpoint(save_with_flow(tmp_path / "old.pt", "flow", None))
    assert check_flow_settings(unknown, given, "S") == []


def settings_store(root: Path, cfg: FlowConfig) -> tuple[list, list]:
    """A tiny store made (as far as store.json says) with `cfg`: 3 classes x 3 videos."""
    items = make_toy_store(root, CLASSES, per_class=3, frames=10, height=24, width=32, bound=cfg.bound,
                           params=store_params(cfg))
    train, test = split_items(items, first=2)
    return [(v, (label,)) for v, label in train], [(v, (label,)) for v, label in test]


def test_eval_refuses_a_checkpoint_trained_on_other_flow(tmp_path, capsys):
    train, test = settings_store(tmp_path / "store", STORE_FLOW)
    cfg = EvalConfig(clips=1, crops="center", svm=False, batch_views=4, jobs=1)
    small = save_with_flow(tmp_path / "small.pt", "flow", config_flow_settings(SMALL_FLOW))
    with pytest.raises(StreamsError, match=r"flow stream .*small\.pt was trained on input made with bound = 5\.0, "
                                          r"size = '64x64', but the store at .* \(bound, size differ\)"):
        run_eval(EvalJob(open_store(tmp_path / "store"), {"flow": small}, train, test, CLASSES, protocol="t"), cfg,
                 tmp_path / "eval")
    # the same flow but another TV-L1 tolerance: evaluated, with a warning
    near = save_with_flow(tmp_path / "near.pt", "flow",
                          config_flow_settings(dataclasses.replace(STORE_FLOW, epsilon=0.02)))
    table = run_eval(EvalJob(open_store(tmp_path / "store"), {"flow": near}, train, test, CLASSES, protocol="t"), cfg,
                     tmp_path / "eval2")
    assert list(table["method"]) == ["flow"]
    err = capsys.readouterr().err
    assert "warning: flow stream" in err and "flow epsilon was 0.02 in training, 0.01 in the store at" in err


def test_predict_and_features_take_the_checkpoints_flow_and_refuse_an_explicit_conflicting_set(tmp_path, capsys):
    from pipeline.cli import main

    video = write_avi(tmp_path / "clip.avi")
    small = save_with_flow(tmp_path / "small.pt", "flow", config_flow_settings(SMALL_FLOW))
    # By default the flow is computed as the checkpoint's was (64x64, bound 5), whatever [flow] says.
    (prediction,) = predict([video], {"flow": small}, STORE_FLOW, EvalConfig(clips=1))
    assert not prediction.error and len(prediction.top["flow"]) == 3
    # An explicit --set flow.KEY that changes what the stream is fed is refused, naming the keys.
    with pytest.raises(StreamsError, match=r"\(bound, size differ\)"):
        predict([video], {"flow": small}, STORE_FLOW, EvalConfig(clips=1), explicit_flow=["bound", "size"])
    rgb = save_with_flow(tmp_path / "rgb.pt", "rgb", config_flow_settings(STORE_FLOW))  # trained at 340x256
    with pytest.raises(StreamsError, match=r"rgb stream .*\(size differs?\)"):  # the two checkpoints disagree
        extract_features(tmp_path, {"rgb": rgb, "flow": small}, tmp_path / "f.npz", STORE_FLOW,
                         EvalConfig(svm_clips=1))
    assert main(["predict", str(video), "--flow", str(small), "--set", "flow.bound=20.0", "--set",
                 "flow.size=340x256"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: flow stream") and "(bound, size differ)" in err[0]
    # the settings it was trained with: scored
    fast = config_flow_settings(FAST_FLOW)
    match = save_with_flow(tmp_path / "match.pt", "flow", fast)
    (prediction,) = predict([video], {"flow": match}, FAST_FLOW, EvalConfig(clips=1))
    assert not prediction.error and len(prediction.top["flow"]) == 3


@pytest.mark.parametrize("modality", ["rgb", "flow"])
def test_a_size_recorded_in_another_spelling_is_the_same_size(tmp_path, modality):
    """A checkpoint trained before store.json recorded one spelling of the size holds "340X256" as
    typed: given "340x256" it was refused, with a `--set flow.size=340X256` fix that gives 340x256 again."""
    trained = {**flow_settings(20.0, store_params(STORE_FLOW)), "size": "340X256"}
    ckpt = read_checkpoint(save_with_flow(tmp_path / f"{modality}.pt", modality, trained))
    assert check_flow_settings(ckpt, flow_settings(20.0, store_params(STORE_FLOW)), "the store") == []
    with pytest.raises(StreamsError, match=r"\(size differ\)"):
        check_flow_settings(ckpt, flow_settings(20.0, store_params(SMALL_FLOW)), "the store")
