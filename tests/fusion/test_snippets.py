"""Features and scores over time: snippets against per-video answers, their times, the streamed
buffer, flow once per pair, the output folder (resume, two processes, shards) and the timeline."""
from __future__ import annotations

import csv
import dataclasses
import json
import multiprocessing
import time

import cv2
import numpy as np
import pytest
import torch

from flow.errors import FlowError
from flow.video import VideoReader
from fusion import snippet_features, snippets
from fusion.config import EvalConfig
from fusion.decoded import decode_for_views
from fusion.engine import Engine, open_stream
from fusion.errors import FusionError
from fusion.extract import video_features
from fusion.predict import Timeline, predict
from fusion.snippet_features import extract_snippet_features
from fusion.snippets import run_snippets
from fusion.views import View
from p3dbase.overwrite import OutputExistsError
from tests.builders import FAST_FLOW, drifting_square, save_tiny_checkpoint, write_avi, write_vfr_mp4, write_video

from .conftest import CLIP_LEN

CFG = EvalConfig(jobs=1, batch_views=4)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("snippet_ckpt")
    return {name: save_tiny_checkpoint(root / f"{name}.pt", name, seed=k) for k, name in enumerate(("rgb", "flow"))}


def engine_of(ckpts, *names):
    return Engine([open_stream(n, ckpts[n]) for n in names], 4, torch.device("cpu"))


@pytest.mark.numerical  # also run with 2 threads by `make test`
@pytest.mark.parametrize("stream, frames", [("rgb", 13), ("flow", 14)])
def test_mean_of_mirrored_snippets_is_the_per_video_feature_where_the_views_coincide(ckpts, tmp_path, stream, frames):
    """13 RGB frames (13 flow images from 14 frames), clips of 4: the 4 evenly spaced clips of the
    feature protocol start at 0, 3, 6, 9, exactly the snippets of stride 3."""
    video = write_avi(tmp_path / "v.avi", frames=frames)
    engine = engine_of(ckpts, stream)
    got = run_snippets(video, engine, FAST_FLOW, stride=3, mirror=True, batch=3)
    assert got.starts == [0, 3, 6, 9] and not got.padded
    expected = video_features(video, engine, FAST_FLOW, clips=4)[stream]
    # float32 features summed in another order (per snippet, then over snippets): 1e-5 of the largest
    np.testing.assert_allclose(got.pool5[stream].mean(axis=0), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.mark.numerical  # also run with 2 threads by `make test`
def test_streamed_snippets_equal_the_views_scored_on_the_whole_decoded_video(ckpts, tmp_path, monkeypatch):
    video = write_avi(tmp_path / "v.avi", frames=23)
    engine = engine_of(ckpts, "rgb", "flow")
    held: list[int] = []
    real_drop = snippets._Buffer.drop_before

    def drop(self, index):  # the most frames the buffer held, just before each drop
        held.append(len(self.frames))
        real_drop(self, index)

    monkeypatch.setattr(snippets._Buffer, "drop_before", drop)
    got = run_snippets(video, engine, FAST_FLOW, stride=3, batch=2)
    # Both streams: a snippet must fit in the 22 flow images: starts 0, 3, ..., 18 (18 + 4 <= 22).
    assert got.starts == [0, 3, 6, 9, 12, 15, 18] and got.num_frames == 23 and got.fps == 25.0
    # Never the whole video: one batch of 2 snippets (stride 3, window 4, + 1 frame for the flow).
    assert max(held) <= 2 * 3 + CLIP_LEN + 1 < 23
    views = [View(s, "center", False) for s in got.starts]
    decoded, _ = decode_for_views(video, FAST_FLOW, {"rgb": CLIP_LEN, "flow": CLIP_LEN}, lambda m, n: views)
    for name in ("rgb", "flow"):
        out = engine.run(name, decoded, [], views=[views])[0]
        # float32 networks fed the same clips in other batches: 1e-5 of the largest value, on any CPU
        np.testing.assert_allclose(got.pool5[name], out.pool5, rtol=0, atol=1e-5 * np.abs(out.pool5).max())
        np.testing.assert_allclose(got.logits[name], out.logits, rtol=0, atol=1e-5 * np.abs(out.logits).max())


def test_flow_is_computed_once_per_pair_and_only_for_the_snippets(ckpts, tmp_path, monkeypatch):
    video = write_avi(tmp_path / "v.avi", frames=30)
    engine = engine_of(ckpts, "flow")
    pairs: list[int] = []
    real = snippets.make_backend

    class Counting:
        def __init__(self, backend):
            self.backend = backend

        def compute(self, gray):
            pairs.append(len(gray) - 1)
            return self.backend.compute(gray)

    monkeypatch.setattr(snippets, "make_backend", lambda cfg: Counting(real(cfg)))
    overlapping = run_snippets(video, engine, FAST_FLOW, stride=2, batch=3)  # windows of 4 overlap by 2
    assert overlapping.starts == list(range(0, 26, 2)) and sum(pairs) == 24 + 4  # pairs 0..27, each once
    pairs.clear()
    sparse = run_snippets(video, engine, FAST_FLOW, stride=10, batch=2)  # starts 0, 10, 20: 3 x 4 pairs
    assert sparse.starts == [0, 10, 20] and sum(pairs) == 12


def test_frames_between_sparse_snippets_are_not_held(ckpts, tmp_path, monkeypatch):
    """At a stride past the window the frames between snippets are decoded and let go: they were held
    until the next batch, so `--stride 400` kept the whole video in memory (2.35 GB against 0.77 GB at
    stride 8). The rows are those of the same snippets read with every frame held."""
    video = write_avi(tmp_path / "v.avi", frames=60)
    engine = engine_of(ckpts, "rgb", "flow")
    held: list[int] = []
    real = snippets._Buffer.drop_before

    def counting(self, index):
        held.append(len(self.frames))
        real(self, index)

    monkeypatch.setattr(snippets._Buffer, "drop_before", counting)
    sparse = run_snippets(video, engine, FAST_FLOW, stride=20, batch=2)
    assert sparse.starts == [0, 20, 40] and max(held) == 2 * (CLIP_LEN + 1)  # two snippets' frames, flow's one more
    monkeypatch.setattr(snippets._Buffer, "drop_before", real)
    dense = run_snippets(video, engine, FAST_FLOW, stride=4, batch=16)
    for name in ("rgb", "flow"):  # float32 networks batched differently (2 against 16 snippets): 1e-5 of the scale
        expected = dense.pool5[name][::5]
        np.testing.assert_allclose(sparse.pool5[name], expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_snippet_times_and_a_video_shorter_than_one_window(ckpts, tmp_path):
    engine = engine_of(ckpts, "rgb", "flow")
    path = write_video(tmp_path / "v.avi", np.stack([np.full((30, 40, 3), 20 * t, np.uint8) for t in range(11)]),
                       fps=12.5)
    got = run_snippets(path, engine, FAST_FLOW, stride=2)
    assert got.fps == 12.5 and got.starts == [0, 2, 4, 6]
    assert got.times() == [(s / 12.5, (s + CLIP_LEN) / 12.5) for s in (0, 2, 4, 6)]
    # Fewer frames than one window: one snippet at 0, read looped as eval reads a short video.
    short = write_avi(tmp_path / "short.avi", frames=3)
    one = run_snippets(short, engine, FAST_FLOW, stride=2)
    assert one.starts == [0] and one.padded and one.pool5["flow"].shape == (1, 256)
    decoded, _ = decode_for_views(short, FAST_FLOW, {"rgb": CLIP_LEN, "flow": CLIP_LEN},
                                  lambda m, n: [View(0, "center", False)])
    looped = engine.run("rgb", decoded, [], views=[[View(0, "center", False)]])[0]
    np.testing.assert_allclose(one.pool5["rgb"], looped.pool5, rtol=0, atol=1e-5 * np.abs(looped.pool5).max())
    single = write_avi(tmp_path / "single.avi", frames=1)
    with pytest.raises(FlowError, match="only one frame, flow needs at least two"):
        run_snippets(single, engine, FAST_FLOW, stride=2)


def _videos(root, count=4):
    for k in range(count):
        write_avi(root / f"c{k % 2}" / f"v{k}.avi", frames=10 + k, seed=k)
    (root / "c1" / "broken.avi").write_bytes(b"not a video")
    return root


def test_features_folder_layout_manifest_and_refusals(ckpts, tmp_path):
    videos = _videos(tmp_path / "videos")
    out = tmp_path / "out"
    summary = extract_snippet_features([videos], ckpts, out, FAST_FLOW, CFG, stride=2)
    assert (summary.computed, len(summary.failures)) == (4, 1) and summary.failures[0][0] == "c1/broken"
    features = np.load(out / "c1" / "v3.npy")
    info = json.loads((out / "c1" / "v3.json").read_text())
    # 13 frames, both streams: snippets must fit in 12 flow images: starts 0, 2, ..., 8
    assert features.dtype == np.float32 and features.shape == (5, 512) and info["shape"] == [5, 512]
    assert [s["start_frame"] for s in info["snippets"]] == [0, 2, 4, 6, 8]
    assert info["snippets"][1] == {"start_frame": 2, "end_frame": 6, "start_time": 0.08, "end_time": 0.24}
    assert info["columns"] == {"rgb": [0, 256], "flow": [256, 512]} and info["fps"] == 25.0
    assert {s["name"] for s in info["streams"]} == {"rgb", "flow"} and len(info["streams"][0]["sha256"]) == 64
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert {r["video_id"]: r["status"] for r in rows} == {"c0/v0": "done", "c0/v2": "done", "c1/v1": "done",
                                                          "c1/v3": "done", "c1/broken": "failed"}
    # A re-run computes nothing; other settings into the same folder are refused unless --force.
    again = extract_snippet_features([videos], ckpts, out, FAST_FLOW, CFG, stride=2)
    assert (again.computed, again.done_before) == (0, 4)
    with pytest.raises(OutputExistsError, match="other settings or checkpoints"):
        extract_snippet_features([videos], ckpts, out, FAST_FLOW, CFG, stride=3)
    with pytest.raises(FusionError, match="--window 8: a snippet is one clip of the streams, 4 frames"):
        extract_snippet_features([videos], ckpts, tmp_path / "w", FAST_FLOW, CFG, stride=2, window=8)
    normalised = extract_snippet_features([videos], {"rgb": ckpts["rgb"]}, tmp_path / "n", FAST_FLOW, CFG, stride=2,
                                          normalised=True)
    assert normalised.computed == 4
    rows = np.load(tmp_path / "n" / "c1" / "v3.npy")
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-6)  # unit rows: float32 rounding
    np.testing.assert_allclose(rows, np.sign(features[:, :256]) * np.sqrt(np.abs(features[:, :256]))
                               / np.linalg.norm(np.sqrt(np.abs(features[:, :256])), axis=1, keepdims=True), atol=1e-6)


def test_a_folder_where_a_video_record_belongs_fails_that_video_alone(ckpts, tmp_path):
    """A folder at `c1/v3.json` (the record written last) stopped the whole batch with an IsADirectoryError
    after the video was computed; now that video fails before it is computed and the others finish."""
    videos = _videos(tmp_path / "videos")
    out = tmp_path / "out"
    extract_snippet_features([videos / "c0"], ckpts, out, FAST_FLOW, CFG, stride=2)  # a features folder
    (out / "c1" / "v3.json").mkdir(parents=True)
    summary = extract_snippet_features([videos], ckpts, out, FAST_FLOW, CFG, stride=2)
    failures = dict(summary.failures)
    assert summary.computed == 3 and set(failures) == {"c1/v3", "c1/broken"}
    assert failures["c1/v3"].endswith("c1/v3.json is a folder where its features file belongs: move it away")
    assert (out / "c1" / "v1.npy").is_file() and not (out / "c1" / "v3.npy").exists()


def test_a_killed_run_resumes_and_shards_share_one_folder(ckpts, tmp_path, monkeypatch):
    videos = _videos(tmp_path / "videos")
    out = tmp_path / "out"
    rgb = {"rgb": ckpts["rgb"]}
    real = snippet_features.run_snippets
    calls = []

    def dies_on_the_second(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(snippet_features, "run_snippets", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        extract_snippet_features([videos], rgb, out, FAST_FLOW, CFG, stride=2, shard=(0, 2))
    monkeypatch.setattr(snippet_features, "run_snippets", real)
    done = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json") if p.name != "features.json")
    assert len(done) == 1 and not list(out.rglob(".*.tmp-*"))  # nothing half-written
    stale = out / "c1" / ".v1.npy.tmp-host-1-1.rows"  # what a kill -9 in the middle of a video leaves
    stale.write_bytes(b"partial rows")
    first = extract_snippet_features([videos], rgb, out, FAST_FLOW, CFG, stride=2, shard=(0, 2))
    assert (first.videos, first.done_before, first.computed, len(first.failures)) == (3, 1, 1, 1)
    rows = {r["video_id"]: r["status"] for r in csv.DictReader((out / "manifest.csv").open())}
    assert sorted(rows.values()).count("pending") == 2  # the other shard's videos
    second = extract_snippet_features([videos], rgb, out, FAST_FLOW, CFG, stride=2, shard=(1, 2))
    assert (second.videos, second.computed) == (2, 2) and not stale.exists()
    rows = {r["video_id"]: r["status"] for r in csv.DictReader((out / "manifest.csv").open())}
    assert rows == {"c0/v0": "done", "c0/v2": "done", "c1/v1": "done", "c1/v3": "done", "c1/broken": "failed"}


def _one_process(args):
    videos, ckpts, out = args
    summary = extract_snippet_features([videos], ckpts, out, FAST_FLOW, CFG, stride=2, progress=False)
    return summary.computed, summary.done_before, summary.busy, len(summary.failures)


def test_two_processes_on_one_folder_lose_nothing_and_write_nothing_twice(ckpts, tmp_path, monkeypatch):
    videos = _videos(tmp_path / "videos", count=6)
    out = tmp_path / "out"
    rgb = {"rgb": ckpts["rgb"]}
    real = snippet_features.run_snippets

    def slow(*args, **kwargs):  # long enough that both processes reach the same video while it is computed
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(snippet_features, "run_snippets", slow)  # the forked processes inherit it
    (videos / "one.txt").write_text("c0/v0.avi\n")  # a list: the id is c0/v0, as in the folder
    extract_snippet_features([videos / "one.txt"], rgb, out, FAST_FLOW, CFG, stride=2)
    context = multiprocessing.get_context("fork")
    # One torch thread in each forked process, as the engine's own forked workers and DataLoader workers
    # run: this process may have run torch's OpenMP pool (P3D_TEST_THREADS > 1), which a forked child
    # cannot use (with 2 or 3 threads both children hung in torch, forever).
    with context.Pool(2, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        results = pool.map(_one_process, [(videos, rgb, out)] * 2)
    computed = sum(r[0] for r in results)
    # Each of the 5 other videos computed by exactly one process; the other found it done or busy.
    assert computed == 5, results
    for r in results:
        assert r[0] + r[1] + r[2] + r[3] == 7
    rows = {r["video_id"]: r["status"] for r in csv.DictReader((out / "manifest.csv").open())}
    assert sorted(rows.values()) == ["done"] * 6 + ["failed"]
    assert not list(out.rglob(".*.tmp-*")) and not list((out / ".locks").rglob("*.lock"))


@pytest.mark.numerical  # also run with 2 threads by `make test`
def test_a_dask_cluster_computes_the_same_features(ckpts, tmp_path):
    distributed = pytest.importorskip("distributed")
    videos = _videos(tmp_path / "videos", count=2)
    rgb = {"rgb": ckpts["rgb"]}
    extract_snippet_features([videos], rgb, tmp_path / "local", FAST_FLOW, CFG, stride=2)
    threads = torch.get_num_threads()  # the in-process workers' tasks set this process's to 1
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp",
                                      host="127.0.0.1", dashboard_address=None) as cluster:
            flow_cfg = dataclasses.replace(FAST_FLOW, scheduler=cluster.scheduler_address)
            summary = extract_snippet_features([videos], rgb, tmp_path / "dask", flow_cfg, CFG, stride=2)
    finally:
        torch.set_num_threads(threads)
    assert (summary.computed, len(summary.failures)) == (2, 1)
    for video_id in ("c0/v0", "c1/v1"):
        local = np.load(tmp_path / "local" / f"{video_id}.npy")
        # The same clips through the same float32 network on one torch thread each (the Dask tasks as the
        # local workers: tests/fusion/test_engine_pool.py); 1e-5 of the largest value, as for other
        # batchings, in case a worker thread's kernels sum otherwise; another clip or view is off by far more.
        np.testing.assert_allclose(np.load(tmp_path / "dask" / f"{video_id}.npy"), local, rtol=0,
                                   atol=1e-5 * np.abs(local).max())


# 13 frames at 25 fps on average, some shown for half a period and some for one and a half: each
# frame's time (s) is the sum of the durations before it.
VFR_DURATIONS = [0.5, 1.5, 1, 0.5, 1.5, 1, 1, 0.5, 0.5, 2, 1, 1, 1]
VFR_TIMES = np.concatenate([[0.0], np.cumsum(VFR_DURATIONS)[:-1]]) / 25.0


def test_a_variable_frame_rate_video_is_timed_by_its_frames_timestamps(ckpts, tmp_path):
    """Snippet times were frame / average fps: right for a constant frame rate only. A phone's
    variable-rate video placed its snippets up to a frame's period off (and drifting, on a long one);
    now each snippet runs from its first frame's timestamp to the next window's."""
    video = write_vfr_mp4(tmp_path / "vfr.mp4", drifting_square(13), VFR_DURATIONS)
    reader = VideoReader(video)
    assert sum(1 for _ in reader.frames()) == 13 and reader.fps == 25.0
    np.testing.assert_allclose(reader.timestamps, VFR_TIMES, rtol=0, atol=1e-6)
    got = run_snippets(video, engine_of(ckpts, "rgb"), FAST_FLOW, stride=3)
    assert got.starts == [0, 3, 6, 9]
    expected = [(VFR_TIMES[s], VFR_TIMES[s + CLIP_LEN] if s + CLIP_LEN < 13 else VFR_TIMES[12] + 0.04)
                for s in got.starts]  # past the last frame: its median duration (one period) on
    np.testing.assert_allclose(got.times(), expected, rtol=0, atol=1e-6)
    assert not np.allclose(got.times(), [(s / 25, (s + CLIP_LEN) / 25) for s in got.starts], atol=1e-3)
    timeline = Timeline(tmp_path / "tl", stride=3)
    (prediction,) = predict([video], {"rgb": ckpts["rgb"]}, FAST_FLOW, CFG, top_k=1, timeline=timeline)
    rows = list(csv.DictReader(prediction.timeline[0].open()))
    assert [float(r["start_time"]) for r in rows] == pytest.approx([t for t, _ in expected], abs=1e-6)


def test_a_video_without_usable_timestamps_is_timed_by_its_frame_rate():
    """Timestamps missing (NaN), repeated or going back: the frame rate again, as before."""
    for stamps in ([0.0, float("nan"), 0.08], [0.0, 0.04, 0.04], [0.0, 0.08, 0.04], [0.0, 0.04]):
        assert snippets.frame_times(stamps, 3) is None
    assert snippets.frame_times([0.0, 0.02, 0.08, 0.5], 3).tolist() == [0.0, 0.02, 0.08]
    cfr = snippets.Snippets(13, 25.0, 4, 3, [0, 3], False, {}, {})
    assert cfr.times() == [(0.0, 0.16), (0.12, 0.28)]
    assert snippets.Snippets(13, 0.0, 4, 3, [0], False, {}, {}).times() is None


def test_predict_timeline_tables_and_picture(ckpts, tmp_path):
    video = write_avi(tmp_path / "clips" / "walk.avi", frames=21)
    timeline = Timeline(tmp_path / "tl", stride=4)
    (prediction,) = predict([video], ckpts, FAST_FLOW, CFG, top_k=2, timeline=timeline)
    csv_path, json_path, png_path = prediction.timeline
    document = json.loads(json_path.read_text())
    rows = list(csv.DictReader(csv_path.open()))
    # 21 frames, both streams: snippets fit in 20 flow images: starts 0, 4, ..., 16
    assert [r["start_frame"] for r in rows] == ["0", "4", "8", "12", "16"] and len(document["snippets"]) == 5
    assert rows[1]["start_time"] == "0.16" and rows[1]["end_time"] == "0.32"
    engine = engine_of(ckpts, "rgb", "flow")
    got = run_snippets(video, engine, FAST_FLOW, stride=4)
    logits = got.logits["flow"][2]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()  # raw scores shown via softmax
    best = int(np.argmax(probs))
    assert rows[2]["flow_top1_class"] == engine.streams[0].classes[best]
    assert float(rows[2]["flow_top1_probability"]) == pytest.approx(probs[best], abs=1e-5)
    fused = document["snippets"][2]["fusion"]
    assert len(fused) == 2 and fused[0]["probability"] >= fused[1]["probability"]
    # The picture: read back, it holds the leading class's colour (tab10's first, the curves and the
    # bands) and the thumbnails' grey-brown video content, not a blank page.
    image = cv2.imread(str(png_path))[:, :, ::-1].astype(int)
    assert image.shape[1] == 1200
    lead = np.array([31, 119, 180])
    assert (np.abs(image - lead).sum(axis=2) < 30).sum() > 200
    assert (image.std(axis=2) > 0).mean() > 0.02
    with pytest.raises(FusionError, match="exists: give another --out, or --force"):
        predict([video], ckpts, FAST_FLOW, CFG, timeline=timeline)
    predict([video], ckpts, FAST_FLOW, CFG, timeline=Timeline(tmp_path / "tl", stride=4, force=True))


def test_a_cut_or_reshaped_npy_is_computed_again_not_taken_for_done(ckpts, tmp_path):
    """Done means the .json's key and signature and a whole .npy of the shape it records (the header
    and size only are read): a file cut by a full disk or a copy, or another array, is redone."""
    videos = tmp_path / "videos"
    write_avi(videos / "v0.avi", frames=10, seed=0)
    out = tmp_path / "out"
    rgb = {"rgb": ckpts["rgb"]}
    assert extract_snippet_features([videos], rgb, out, FAST_FLOW, CFG, stride=2).computed == 1
    npy = out / "v0.npy"
    whole = np.load(npy)
    for damage in (lambda: npy.write_bytes(npy.read_bytes()[:100]),  # inside the header
                   lambda: npy.write_bytes(npy.read_bytes()[:-4]),  # the last value's bytes
                   lambda: np.save(npy, whole[:1]),  # a whole array of another shape
                   lambda: np.save(npy, whole.astype(np.float64))):
        damage()
        again = extract_snippet_features([videos], rgb, out, FAST_FLOW, CFG, stride=2)
        assert (again.computed, again.done_before) == (1, 0)
        np.testing.assert_array_equal(np.load(npy), whole)
    assert extract_snippet_features([videos], rgb, out, FAST_FLOW, CFG, stride=2).done_before == 1
