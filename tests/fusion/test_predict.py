"""`predict` on video files: the same scores as `make flow` + the evaluation's scoring, any container."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from flow.errors import FlowError
from flow.stage import FlowJob, run_flow
from flow.store import open_store
from fusion import fuse
from fusion.config import EvalConfig
from fusion.decoded import decode_for_views, positions
from fusion.errors import FusionError
from fusion.predict import format_predictions, load_streams, predict, predict_video, run_predict
from fusion.scoring import ClipGeometry, StreamRunner
from fusion.views import score_plan, score_views
from streams.checkpoint import load_checkpoint
from streams.errors import StreamsError
from tests.builders import FAST_FLOW, last_checkpoints, write_avi


def stored_video_scores(video: Path, store_dir: Path, ckpts: dict[str, Path], cfg: EvalConfig,
                        video_id: str = "v") -> dict[str, np.ndarray]:
    """The known answer: `make flow` writes the video to a store, the evaluation's runner scores it
    on the evaluation's views of that video id."""
    run_flow([FlowJob(video_id, video)], store_dir, FAST_FLOW)
    plan = score_plan(cfg.clips, cfg.crops, cfg.clip_sampling, cfg.seed)
    scores = {}
    with open_store(store_dir).open(video_id) as frames:
        for name, path in ckpts.items():
            model, ckpt = load_checkpoint(path)
            geometry = ClipGeometry.from_train_config(ckpt.train_config)
            runner = StreamRunner(model, name, geometry, cfg.batch_views, torch.device("cpu"))
            length = frames.num_frames if name == "rgb" else frames.num_flows
            logits, _ = runner.run(frames, plan.views(length, geometry.clip_len, video_id))
            scores[name] = fuse.video_scores(logits, cfg.fusion_scores)
    return scores


@pytest.mark.numerical  # also run with 2 threads by `make test`
def test_predict_gives_the_scores_of_make_flow_then_eval(tmp_path, tiny_checkpoints):
    video = write_avi(tmp_path / "clip.avi")
    ckpts = last_checkpoints(tiny_checkpoints)
    cfg = EvalConfig(clips=3, crops="three", fusion_scores="softmax")
    expected = stored_video_scores(video, tmp_path / "store", ckpts, cfg)
    engine = load_streams(ckpts, cfg)
    prediction = predict_video(video, engine, FAST_FLOW, cfg, top_k=3)
    classes = engine.streams[0].classes
    assert prediction.frames == 12 and list(prediction.top) == ["rgb", "flow", "fusion"]
    for name in ("rgb", "flow"):
        got = dict(prediction.top[name])
        # probabilities (at most 1) from float32 networks batched differently: 1e-5, on any CPU
        np.testing.assert_allclose([got[c] for c in classes], expected[name], atol=1e-5)
    fused = (1.0 * expected["rgb"] + 1.5 * expected["flow"]) / 2.5  # default weights 1 : 1.5
    got = dict(prediction.top["fusion"])
    np.testing.assert_allclose([got[c] for c in classes], fused, atol=1e-5)
    probabilities = [p for _, p in prediction.top["fusion"]]
    assert probabilities == sorted(probabilities, reverse=True)


@pytest.mark.numerical  # also run with 2 threads by `make test`
def test_predict_draws_the_random_clips_eval_draws_for_the_video_id(tmp_path, tiny_checkpoints):
    """`eval.clip_sampling = "random"` seeds each video's clips with its id: predict seeded them with the
    file's stem, so `Cls/clip` got other clips (and scores) than eval gave it."""
    video = write_avi(tmp_path / "clip.avi")
    ckpts = last_checkpoints(tiny_checkpoints)
    cfg = EvalConfig(clips=4, clip_sampling="random", fusion_scores="softmax")
    expected = stored_video_scores(video, tmp_path / "store", ckpts, cfg, video_id="Cls/clip")
    engine = load_streams(ckpts, cfg)
    prediction = predict_video(video, engine, FAST_FLOW, cfg, top_k=3, video_id="Cls/clip")
    for name in ("rgb", "flow"):
        got = dict(prediction.top[name])
        np.testing.assert_allclose([got[c] for c in engine.streams[0].classes], expected[name], atol=1e-5)
    plan = score_plan(cfg.clips, cfg.crops, cfg.clip_sampling, cfg.seed)
    assert plan.views(11, 4, "Cls/clip") != plan.views(11, 4, "clip")  # the ids draw other clips


@pytest.mark.numerical  # also run with 2 threads by `make test`
def test_predict_and_eval_fuse_raw_scores_the_same_way(tmp_path, tiny_checkpoints):
    """The default (TSN) rule: the 1 : 1.5 weighted mean of the averaged logits, shown through a softmax,
    is fusion.fuse.fuse, the function `make eval` fuses with."""
    video = write_avi(tmp_path / "clip.avi")
    ckpts = last_checkpoints(tiny_checkpoints)
    cfg = EvalConfig(clips=2)
    assert cfg.fusion_scores == "raw" and cfg.fusion_weights == [1.0, 1.5]
    expected = stored_video_scores(video, tmp_path / "store", ckpts, cfg)
    engine = load_streams(ckpts, cfg)
    prediction = predict_video(video, engine, FAST_FLOW, cfg, top_k=3)
    classes = engine.streams[0].classes
    logits = (expected["rgb"] + 1.5 * expected["flow"]) / 2.5
    fused = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    got = dict(prediction.top["fusion"])
    np.testing.assert_allclose([got[c] for c in classes], fused, atol=1e-5)
    np.testing.assert_allclose(fuse.fuse(expected["rgb"], expected["flow"], (1.0, 1.5)), logits, rtol=1e-12)
    rgb = dict(prediction.top["rgb"])
    soft = np.exp(expected["rgb"] - expected["rgb"].max())
    np.testing.assert_allclose([rgb[c] for c in classes], soft / soft.sum(), atol=1e-5)


def test_flow_is_computed_only_for_the_views(tmp_path):
    video = write_avi(tmp_path / "long.avi", frames=30)
    views = {"flow": score_views(29, 4, 2, "center")}
    decoded, planned = decode_for_views(video, FAST_FLOW, {"flow": 4}, lambda m, n: views[m])
    assert decoded.num_frames == 30 and decoded.num_flows == 29
    needed = sorted({v.start + k for v in planned["flow"] for k in range(4)})
    assert planned["flow"] == views["flow"] and len(needed) == 8  # 2 clips of 4, not all 29 pairs
    assert decoded.flow(needed).shape == (8, 30, 40, 2)
    skipped = min(set(range(29)) - set(needed))
    with pytest.raises(FlowError, match=f"flow {skipped} was not decoded"):
        decoded.flow([skipped])


def test_predict_reports_broken_videos_and_goes_on(tmp_path, tiny_checkpoints):
    good = write_avi(tmp_path / "good.avi")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    predictions = predict([broken, good], last_checkpoints(tiny_checkpoints), FAST_FLOW, EvalConfig(clips=1))
    assert str(broken) in predictions[0].error and not predictions[0].top
    assert len(predictions[1].top["fusion"]) == 3 and not predictions[1].error
    document = json.loads(format_predictions(predictions, as_json=True))
    assert document[0]["video"] == str(broken) and "error" in document[0]
    assert set(document[1]) == {"video", "frames", "rgb", "flow", "fusion"}
    assert {"class", "probability"} == set(document[1]["fusion"][0])
    text = format_predictions(predictions)
    assert "error:" in text and "fusion" in text
    with pytest.raises(FusionError, match="no video could be scored"):
        predict([broken], last_checkpoints(tiny_checkpoints), FAST_FLOW, EvalConfig(clips=1))


def test_predict_checks_the_streams(tmp_path, tiny_checkpoints):
    ckpts = last_checkpoints(tiny_checkpoints)
    video = write_avi(tmp_path / "v.avi")
    with pytest.raises(StreamsError, match="is a rgb stream but was given as the flow stream"):
        predict([video], {"flow": ckpts["rgb"]}, FAST_FLOW, EvalConfig(clips=1))
    with pytest.raises(FusionError, match="an RGB and/or a flow checkpoint"):
        predict([video], {}, FAST_FLOW, EvalConfig(clips=1))
    # A training directory stands for its last.pt, as in `make eval`.
    only_rgb = predict([video], {"rgb": tiny_checkpoints["rgb"]}, FAST_FLOW, EvalConfig(clips=1), top_k=2)
    assert list(only_rgb[0].top) == ["rgb"] and len(only_rgb[0].top["rgb"]) == 2


@pytest.mark.parametrize("name, frames", [("i3d_cricket/v_CricketShot_g04_c01_rgb.gif", 79),
                                          ("flipping_pancake__decord.mkv", 310),
                                          ("drink_water__ntu_S001C001P001R001A001.avi", 103),
                                          ("tai_chi__mmskeleton.mp4", 300)])
def test_predict_on_real_clips(shared_data, tiny_checkpoints, name, frames):
    """Every container of ../shared/data/clips, the 1920x1080 one included, downscaled to keep it cheap."""
    flow_cfg = dataclasses.replace(FAST_FLOW, size="48x32")
    (prediction,) = predict([shared_data / "clips" / name], last_checkpoints(tiny_checkpoints), flow_cfg,
                            EvalConfig(clips=1))
    assert not prediction.error and prediction.frames == frames
    for top in prediction.top.values():
        assert len(top) == 3 and all(0.0 <= p <= 1.0 for _, p in top)
        assert sum(p for _, p in top) == pytest.approx(1.0)  # 3 classes: the top-5 holds them all


def test_progress_bars_go_to_stderr_and_leave_stdout_unchanged(tmp_path, tiny_checkpoints, capsys):
    video = write_avi(tmp_path / "v.avi")
    ckpts, cfg = last_checkpoints(tiny_checkpoints), EvalConfig(clips=3, crops="three")
    run_predict([video], ckpts, FAST_FLOW, cfg, top_k=2, as_json=True, progress=False)
    quiet = capsys.readouterr()
    assert quiet.err == ""
    run_predict([video], ckpts, FAST_FLOW, cfg, top_k=2, as_json=True, progress=True)
    shown_bars = capsys.readouterr()
    assert shown_bars.out == quiet.out  # the JSON document, byte for byte
    assert json.loads(shown_bars.out)[0]["video"] == str(video)
    # A bar over the flow pairs of 3 clips, then one over the 3 clips x 3 crops of each stream.
    clip_len = load_checkpoint(ckpts["flow"])[1].train_config["clip_len"]
    pairs = len(positions(score_views(11, clip_len, 3, "three"), clip_len, 11))  # 12 frames, 11 flows
    assert "v.avi: decode [" in shown_bars.err
    assert re.search(rf"v\.avi: flow: +0%\|.*\| 0/{pairs} \[.*pair/s\]", shown_bars.err)
    for stream in ("rgb", "flow"):
        assert re.search(rf"v\.avi: {stream} views: +0%\|.*\| 0/9 \[.*view/s\]", shown_bars.err)
    # Off by default when stderr is not a terminal (as under pytest): the text mode's stdout alone.
    run_predict([video], ckpts, FAST_FLOW, cfg, top_k=2)
    plain = capsys.readouterr()
    assert plain.err == "" and plain.out.startswith(f"{video} (12 frames)")
