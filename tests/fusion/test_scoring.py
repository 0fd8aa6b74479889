"""Test-time views and the bounded-batch network runner."""

import numpy as np
import pytest
import torch

from flow.store import create_store, open_store
from fusion.scoring import ClipGeometry, StreamRunner
from fusion.views import View, feature_views, score_views
from streams import transforms
from streams.checkpoint import load_checkpoint
from streams.clips import ClipDataset
from tests.builders import save_tiny_checkpoint, toy_video

from .conftest import CLIP_LEN, TRAIN_CFG

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("length, clips", [(10, 3), (40, 10), (16, 1), (4, 5), (2, 3), (1, 2)])
def test_views_evenly_spaced_and_within_bounds(length, clips):
    views = score_views(length, CLIP_LEN, clips, "three")
    assert len(views) == 3 * clips
    starts = [v.start for v in views[::3]]
    assert [v.crop for v in views[:3]] == ["start", "center", "end"] and not any(v.flip for v in views)
    last = max(length - CLIP_LEN, 0)
    assert all(0 <= s <= last for s in starts) and starts == sorted(starts)
    if clips > 1 and length >= CLIP_LEN:
        assert starts[0] == 0 and starts[-1] == last  # from the first to the last full window
        gaps = np.diff(starts)
        assert gaps.max() - gaps.min() <= 1  # evenly spaced up to rounding
    features = feature_views(length, CLIP_LEN, clips)
    assert [v.flip for v in features[:2]] == [False, True] and features[0].start == features[1].start
    assert {v.crop for v in features} == {"center"}


def close(got: np.ndarray, expected: np.ndarray) -> None:
    """The same clips through the same float32 network: equal up to summation order, which another CPU,
    thread count or batch layout may change, by an amount that follows the size of the values summed
    (pool5 values here reach ~70, logits ~4). So 1e-5 of the largest value compared (at least 1e-5)
    rather than a fixed atol of 1e-4; a wrong clip, crop or flip moves them by 1e-2 or more."""
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


def _runner(modality: str, tmp_path, batch_views: int):
    model, ckpt = load_checkpoint(save_tiny_checkpoint(tmp_path / f"{modality}.pt", modality))
    return StreamRunner(model, modality, ClipGeometry.from_train_config(ckpt.train_config), batch_views,
                        torch.device("cpu"))


@pytest.fixture(scope="module")
def one_video(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_video")
    store = create_store(root, codec="raw")
    store.write_video("Red/v", *toy_video(0, np.random.default_rng(0), frames=13))
    store.write_video("Red/short", *toy_video(0, np.random.default_rng(1), frames=3))
    return open_store(root)


@pytest.mark.numerical  # also run with 2 threads by `make test`
@pytest.mark.parametrize("modality", ["rgb", "flow"])
def test_bounded_batches_give_the_unbatched_scores(modality, one_video, tmp_path):
    views = score_views(12, CLIP_LEN, 5, "three") + feature_views(12, CLIP_LEN, 4)
    with one_video.open("Red/v") as video:
        whole = _runner(modality, tmp_path, 1000).run(video, views)
        for batch in (1, 4):
            logits, feats = _runner(modality, tmp_path, batch).run(video, views)
            # Equal up to float32 summation order (other batch sizes may pick other conv kernels).
            np.testing.assert_allclose(logits, whole[0], rtol=1e-4, atol=1e-5 * np.abs(whole[0]).max())
            np.testing.assert_allclose(feats, whole[1], rtol=1e-4, atol=1e-5 * np.abs(whole[1]).max())
    assert whole[0].shape == (len(views), 3) and whole[1].shape == (len(views), 64 * 4)


@pytest.mark.numerical  # also run with 2 threads by `make test`
@pytest.mark.parametrize("modality", ["rgb", "flow"])
def test_views_match_the_streams_validation_clips_crops_and_flips(modality, one_video, tmp_path):
    runner = _runner(modality, tmp_path, 8)
    model = runner.model
    with one_video.open("Red/v") as video:
        length = video.num_frames if modality == "rgb" else video.num_flows
        views = score_views(length, CLIP_LEN, 3, "center")
        logits, feats = runner.run(video, views)
        # The streams' own validation clips (ClipDataset, train=False) give the same numbers.
        val = ClipDataset(one_video, [("Red/v", 0)], modality, CLIP_LEN, train=False, resize=TRAIN_CFG.resize,
                          crop=TRAIN_CFG.crop, clips_per_video=3)
        x = transforms.normalize(torch.stack([val[i][0] for i in range(3)]), modality)
        with torch.inference_mode():
            close(logits, model(x).numpy())
            close(feats, model.features(x).numpy())
        # An end crop of a mirrored clip, built by hand from the stored images.
        start = views[1].start
        frames = range(start, start + CLIP_LEN)
        raw = video.rgb(frames) if modality == "rgb" else video.flow(frames)
        clip = transforms.hflip(transforms.three_crop(raw, TRAIN_CFG.crop)[2], modality)
        expected = model(transforms.to_tensor(clip, modality)[None]).detach().numpy()
        close(runner.run(video, [View(start, "end", True)])[0], expected)


@pytest.mark.numerical  # also run with 2 threads by `make test`
def test_short_video_is_looped(one_video, tmp_path):
    runner = _runner("flow", tmp_path, 8)
    with one_video.open("Red/short") as video:  # 3 frames, 2 flows, clips of 4
        assert score_views(video.num_flows, CLIP_LEN, 4, "center") == [View(0, "center", False)] * 4
        logits, _ = runner.run(video, [View(0, "center", False)])
        looped = video.flow([0, 1, 0, 1])
    x = transforms.to_tensor(transforms.center_crop(looped, TRAIN_CFG.crop), "flow")[None]
    with torch.inference_mode():
        close(logits, runner.model(x).numpy())
