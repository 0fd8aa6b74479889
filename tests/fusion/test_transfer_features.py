"""The transfer feature extractor: the recipe against hand-built answers, the layer hooks, the cache."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from flow.stage import FlowJob, run_flow
from fusion.engine import Engine, LayerTap, Stream
from fusion.scoring import ClipGeometry
from fusion.transfer_features import VideoJob, extract, load_stream_spec, transfer_geometry, video_layers
from fusion.views import feature_plan, feature_views
from streams import transforms
from streams.config import TrainConfig
from streams.errors import StreamsError
from streams.p3d import build_model
from tests.builders import FAST_FLOW, save_tiny_checkpoint, write_video

TRAIN_CFG = TrainConfig(clip_len=4, resize=[24, 32], crop=16)


def write_ffv1(path: Path, frames: np.ndarray, grey: bool = False) -> Path:
    """Lossless (FFV1) video: decoding gives back exactly `frames`."""
    return write_video(path, frames, grey=grey, fourcc="FFV1")


def moving_frames(n: int = 9, h: int = 20, w: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), np.uint8), (5, 5), 1.5)
    frames = []
    for t in range(n):
        frame = background.copy()
        frame[3 + t:9 + t, 5:12] = (40, 200, 90)
        frames.append(frame)
    return np.stack(frames)


@pytest.fixture(scope="module")
def specs(tmp_path_factory) -> dict[str, Stream]:
    root = tmp_path_factory.mktemp("transfer_ckpt")
    return {name: load_stream_spec(name, save_tiny_checkpoint(root / f"{name}.pt", name, seed=k, train_cfg=TRAIN_CFG))
            for k, name in enumerate(("rgb", "flow"))}


def test_geometry_resizes_the_short_side_to_the_crop_and_keeps_the_aspect():
    geometry = transfer_geometry({"clip_len": 4, "resize": [24, 32], "crop": 16})
    clip = np.random.default_rng(0).integers(0, 256, (4, 20, 30, 3), np.uint8)
    resized = geometry.resize_clip(clip)
    assert resized.shape == (4, 16, 24, 3)  # 20x30 -> 16x24: short side 16, aspect 1.5 kept
    np.testing.assert_array_equal(resized, transforms.resize_short(clip, 16))
    assert geometry.crop_clip(resized, "center").shape == (4, 16, 16, 3)


@pytest.mark.numerical  # also run with 2 threads by `make test`
def test_layer_tap_matches_pool5_and_a_hand_reduction():
    torch.manual_seed(0)
    model = build_model("p3d_tiny", 5).eval()
    tap = LayerTap(model)
    x = torch.randn(3, 3, 8, 64, 64)  # res5c maps of 2x2: their max and mean differ
    with torch.inference_mode():
        pool5 = model.features(x)
        layers = tap.take()
        # By hand: res4 = the last res4 block's output averaged; res5c its max over space and time.
        h = model.pool1(model.relu(model.bn1(model.conv1(x))))
        h = model.pool3(model.layer2(model.pool2(model.layer1(h))))
        res4 = model.layer3(h)
        h = model.pool4(res4)
        b, c, t, hh, ww = h.shape
        res5 = model.layer4(h.transpose(1, 2).reshape(b * t, c, hh, ww))
        res5 = res5.reshape(b, t, *res5.shape[1:])  # [B, T, C, H, W]
    # float32 maps computed in other batch shapes: within 1e-5 of the largest value, on any CPU
    for got, want in ((layers["res4"], res4.mean(dim=(2, 3, 4)).numpy()),
                      (layers["res5c"], res5.amax(dim=(1, 3, 4)).numpy())):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    # pool5 is the mean of the same res5c map: never above its maximum, and res5c is not pool5 again.
    # (a float32 mean of nearly equal values may round a few steps above their maximum: a scaled margin)
    assert (np.all(layers["res5c"] >= pool5.numpy() - 1e-5 * np.abs(pool5.numpy()).max())
            and not np.allclose(layers["res5c"], pool5.numpy()))
    tap.remove()


@pytest.mark.numerical  # also run with 2 threads by `make test`
def test_video_layers_are_the_view_mean_with_repeats_counted(specs):
    spec = specs["rgb"]
    engine = Engine([spec], 4, torch.device("cpu"), layers=True)
    runner = engine.runners["rgb"]

    class Frames:  # a 3-frame video: every one of the 5 clips starts at 0 (looped), each listed 5 times
        num_frames = 3
        frames = moving_frames(3)

        def rgb(self, indices):
            return self.frames[list(indices)]

    views = feature_views(3, spec.geometry.clip_len, 5)
    assert len(views) == 10 and len(set(views)) == 2
    got = video_layers(engine.run("rgb", Frames(), [feature_plan(5)])[0])
    logits, pool5 = runner.run(Frames(), views)
    np.testing.assert_allclose(got["pool5"], pool5.mean(axis=0), rtol=0, atol=1e-5 * np.abs(pool5).max())
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    np.testing.assert_allclose(got["prob"], probabilities.mean(axis=0), rtol=0, atol=1e-5)  # probabilities <= 1
    assert got["prob"].sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.numerical  # also run with 2 threads by `make test`
def test_mirrored_video_gives_the_same_rgb_features_and_grey_reads_as_three_channels(specs, tmp_path):
    frames = moving_frames(9)
    videos = [VideoJob("a", write_ffv1(tmp_path / "a.avi", frames)),
              VideoJob("mirror", write_ffv1(tmp_path / "mirror.avi", np.ascontiguousarray(frames[:, :, ::-1]))),
              VideoJob("grey", write_ffv1(tmp_path / "grey.avi", frames, grey=True)),
              VideoJob("grey3", write_ffv1(tmp_path / "grey3.avi", np.repeat(
                  cv2.cvtColor(frames.reshape(-1, 30, 3), cv2.COLOR_BGR2GRAY).reshape(9, 20, 30, 1), 3, axis=3))),
              VideoJob("short", write_ffv1(tmp_path / "short.avi", frames[:2]))]
    got = extract(videos, [specs["rgb"]], tmp_path / "cache", None, FAST_FLOW, clips=5, jobs=1)
    rgb = got.features["rgb"]
    assert not got.failed["rgb"] and got.computed == 5
    # Each clip is averaged with its mirror: a mirrored video has the same feature.
    for layer in ("pool5", "prob", "res5c", "res4"):
        np.testing.assert_allclose(rgb["mirror"][layer], rgb["a"][layer], rtol=0,
                                   atol=1e-5 * np.abs(rgb["a"][layer]).max())
        np.testing.assert_array_equal(rgb["grey"][layer], rgb["grey3"][layer])
    assert np.all(np.isfinite(rgb["short"]["pool5"]))  # 2 frames, looped to a 4-frame clip


def test_cache_second_run_computes_nothing_and_a_new_checkpoint_recomputes(specs, tmp_path):
    videos = [VideoJob(f"c/v{k}", write_ffv1(tmp_path / f"v{k}.avi", moving_frames(7, seed=k))) for k in range(3)]
    videos.append(VideoJob("broken", tmp_path / "broken.avi"))
    (tmp_path / "broken.avi").write_bytes(b"not a video")
    store = tmp_path / "store"
    run_flow([FlowJob(v.video_id, v.path) for v in videos], store, FAST_FLOW)
    streams = [specs["rgb"], specs["flow"]]
    first = extract(videos, streams, tmp_path / "cache", store, FAST_FLOW, clips=3, jobs=1)
    assert first.computed == 6 and set(first.failed["rgb"]) == {"broken"} and set(first.failed["flow"]) == {"broken"}
    files = sorted((tmp_path / "cache").rglob("*.npz"))
    stamps = [f.stat().st_mtime_ns for f in files]
    assert len(files) == 6
    again = extract(videos, streams, tmp_path / "cache", store, FAST_FLOW, clips=3, jobs=1)
    assert again.computed == 0 and [f.stat().st_mtime_ns for f in files] == stamps
    for name in ("rgb", "flow"):
        for video_id in first.features[name]:
            np.testing.assert_array_equal(again.features[name][video_id]["pool5"],
                                          first.features[name][video_id]["pool5"])
    # Another recipe (clips) is another cache; the old files stay as they were.
    other = extract(videos[:1], streams[:1], tmp_path / "cache", store, FAST_FLOW, clips=4, jobs=1)
    assert other.computed == 1 and [f.stat().st_mtime_ns for f in files] == stamps
    # Another checkpoint (another seed: other weights, the same architecture and settings) is
    # computed afresh and gives other features; the first checkpoint's entries stay as they were.
    reseeded = load_stream_spec("rgb", save_tiny_checkpoint(tmp_path / "rgb2.pt", "rgb", seed=5, train_cfg=TRAIN_CFG))
    assert reseeded.sha256 != specs["rgb"].sha256
    new = extract(videos[:1], [reseeded], tmp_path / "cache", store, FAST_FLOW, clips=3, jobs=1)
    assert new.computed == 1 and [f.stat().st_mtime_ns for f in files] == stamps
    assert not np.allclose(new.features["rgb"]["c/v0"]["pool5"], first.features["rgb"]["c/v0"]["pool5"])
    # A video rewritten since is computed again for both streams (its size and mtime are part of
    # each entry; flow too, so that new RGB features are never paired with the old video's flow).
    write_ffv1(videos[0].path, moving_frames(8, seed=9))
    changed = extract(videos[:1], streams, tmp_path / "cache", store, FAST_FLOW, clips=3, jobs=1)
    assert changed.computed == 2


def test_a_checkpoint_of_the_other_stream_is_refused(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "flow.pt", "flow", train_cfg=TRAIN_CFG)
    with pytest.raises(StreamsError, match="is a flow stream but was given as the rgb stream"):
        load_stream_spec("rgb", path)


def test_geometry_is_the_one_clip_geometry():
    assert transfer_geometry({"clip_len": 16, "resize": [182, 242], "crop": 160}) == \
        ClipGeometry(16, (160, 160), (160, 160), 160)
