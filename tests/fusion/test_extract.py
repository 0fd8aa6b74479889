"""`features`: the paper's feature protocol on video files, resumable, to .npz (or .parquet)."""
from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pytest
import torch

from flow.stage import FlowJob, run_flow
from flow.store import open_store
from fusion import extract
from fusion.config import EvalConfig
from fusion.errors import FusionError
from fusion.extract import extract_features
from fusion.inputs import gather_inputs
from fusion.scoring import ClipGeometry, StreamRunner
from fusion.views import feature_views
from p3dbase.overwrite import OutputExistsError
from streams.checkpoint import load_checkpoint
from tests.builders import FAST_FLOW, last_checkpoints, write_avi

CFG = EvalConfig(svm_clips=3)


@pytest.fixture
def video_dir(tmp_path):
    root = tmp_path / "videos"
    write_avi(root / "jump" / "v1.avi", frames=10, seed=1)
    write_avi(root / "run" / "v2.avi", frames=14, seed=2)
    (root / "run" / "broken.mp4").write_bytes(b"not a video at all")
    (root / "notes.txt").write_text("not a video")
    return root


def stored_feature(video, store_dir, ckpt_path, name):
    """The known answer: `make flow`'s store, the evaluation runner's pool5 over the feature views."""
    run_flow([FlowJob("v", video)], store_dir, FAST_FLOW)
    model, ckpt = load_checkpoint(ckpt_path)
    geometry = ClipGeometry.from_train_config(ckpt.train_config)
    runner = StreamRunner(model, name, geometry, 16, torch.device("cpu"))
    with open_store(store_dir).open("v") as frames:
        length = frames.num_frames if name == "rgb" else frames.num_flows
        _, pool5 = runner.run(frames, feature_views(length, geometry.clip_len, CFG.svm_clips))
    return pool5.mean(axis=0)


@pytest.mark.numerical  # also run with 2 threads by `make test`
def test_features_follow_the_paper_protocol(tmp_path, video_dir, tiny_checkpoints):
    out = tmp_path / "features.npz"
    summary = extract_features(video_dir, last_checkpoints(tiny_checkpoints), out, FAST_FLOW, CFG)
    assert (summary.videos, summary.computed, summary.failed) == (3, 2, 1)
    with np.load(out, allow_pickle=False) as data:
        assert list(data["ids"]) == ["jump/v1", "run/v2"]
        assert list(data["failed_ids"]) == ["run/broken"] and "broken.mp4" in data["failed_reasons"][0]
        assert data["rgb"].shape == data["flow"].shape == (2, 256)
        # Unit-length rows (entries <= 1), normalised in float32 over 256-512 entries: the summation order
        # of a BLAS moves a norm by about sqrt(n) * 6e-8 = 1.4e-6, so 1e-5 (still 1e-5 of the magnitude).
        for name in ("rgb", "flow"):
            np.testing.assert_allclose(data[f"{name}_normalised"],
                                       np.sign(data[name]) * np.sqrt(np.abs(data[name]))
                                       / np.linalg.norm(np.sqrt(np.abs(data[name])), axis=1, keepdims=True), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(data["two_stream"], axis=1), 1.0, atol=1e-5)
        meta = json.loads(str(data["meta"]))
        assert meta["svm_clips"] == 3 and set(meta["checkpoints"]) == {"rgb", "flow"}
        for k, name in enumerate(("rgb", "flow")):
            expected = stored_feature(video_dir / "run" / "v2.avi", tmp_path / f"store{k}",
                                      last_checkpoints(tiny_checkpoints)[name], name)
            # float32 network outputs batched differently: within 1e-5 of the largest feature, on any CPU
            np.testing.assert_allclose(data[name][1], expected, atol=1e-5 * np.abs(expected).max())
    assert not (tmp_path / "features.npz.parts").exists()


def test_features_resume_after_a_kill(tmp_path, video_dir, tiny_checkpoints, monkeypatch):
    ckpts = {"rgb": last_checkpoints(tiny_checkpoints)["rgb"]}
    out = tmp_path / "rgb.npz"
    real = extract.video_features
    calls = []

    def dies_on_the_second(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(extract, "video_features", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        extract_features(video_dir, ckpts, out, FAST_FLOW, CFG)
    assert not out.exists() and len(list((tmp_path / "rgb.npz.parts").glob("*.npz"))) == 1
    monkeypatch.setattr(extract, "video_features", real)
    summary = extract_features(video_dir, ckpts, out, FAST_FLOW, CFG)
    assert (summary.resumed, summary.computed, summary.failed) == (1, 1, 1)
    fresh = extract_features(video_dir, ckpts, tmp_path / "fresh.npz", FAST_FLOW, CFG)
    assert fresh.computed == 2
    with np.load(out) as a, np.load(tmp_path / "fresh.npz") as b:
        np.testing.assert_array_equal(a["rgb"], b["rgb"])
        assert "flow" not in a.files and "two_stream" not in a.files


@pytest.mark.parametrize("how", ["cut", "flipped", "other width", "nan"])
def test_a_damaged_part_is_computed_again(tmp_path, video_dir, tiny_checkpoints, monkeypatch, how):
    """A part of `<out>.parts/` cut by a kill or a full disk, or altered, is computed again (before, a
    cut one was a BadZipFile traceback on every re-run)."""
    ckpts = {"rgb": last_checkpoints(tiny_checkpoints)["rgb"]}
    out = tmp_path / "rgb.npz"
    real = extract.video_features

    def dies_on_the_second(*args, **kwargs):
        if args[0].name == "v2.avi":
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(extract, "video_features", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        extract_features(video_dir, ckpts, out, FAST_FLOW, CFG)
    (part,) = (tmp_path / "rgb.npz.parts").glob("*.npz")
    if how == "cut":
        part.write_bytes(part.read_bytes()[:300])
    elif how == "flipped":
        data = bytearray(part.read_bytes())
        data[-200] ^= 0x40  # the zip's central directory
        part.write_bytes(bytes(data))
    else:
        with np.load(part) as stored:
            entry = dict(stored)
        entry["rgb"] = np.concatenate([entry["rgb"], entry["rgb"]]) if how == "other width" else entry["rgb"] * np.nan
        np.savez(part, **entry)
    monkeypatch.setattr(extract, "video_features", real)
    summary = extract_features(video_dir, ckpts, out, FAST_FLOW, CFG)
    assert (summary.resumed, summary.computed, summary.failed) == (0, 2, 1)
    with np.load(out) as data:
        assert data["rgb"].shape == (2, 256) and np.isfinite(data["rgb"]).all()


def test_video_lists_folders_and_frame_folders(tmp_path, video_dir, monkeypatch):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my videos\nvideos/jump/v1.avi\n\n{video_dir / 'run' / 'v2.avi'}\n")
    ids = [v.video_id for v in gather_inputs([listing])[0]]
    assert ids == ["videos/jump/v1", (video_dir / "run" / "v2").relative_to(tmp_path).as_posix()]  # absolute
    # An absolute path or `../` out of the list's folder: an id that never leads out of --out.
    (tmp_path / "sub").mkdir()
    elsewhere = tmp_path / "sub" / "list.txt"
    elsewhere.write_text(f"../videos/jump/v1.avi\n{video_dir / 'run' / 'v2.avi'}\n./x/../x.avi 3\n")
    assert [(v.video_id, v.path) for v in gather_inputs([elsewhere])[0]] == [
        (str(tmp_path / "videos" / "jump" / "v1").lstrip("/"), tmp_path / "sub" / "../videos/jump/v1.avi"),
        (str(video_dir / "run" / "v2").lstrip("/"), video_dir / "run" / "v2.avi"),
        ("x", tmp_path / "sub" / "x/../x.avi")]
    # mmaction2's lists: "<path> <label>" (videos) and "<dir> <total_frames> <label>" (rawframes).
    frames = tmp_path / "videos" / "rawframes" / "v3"
    frames.mkdir(parents=True)
    for k in range(1, 6):
        cv2.imwrite(str(frames / f"img_{k:05d}.jpg"), np.full((30, 40, 3), 40 * k, np.uint8))
    listing.write_text("videos/jump/v1.avi 0\nvideos/rawframes/v3 5 2\n")
    assert [(v.video_id, v.path) for v in gather_inputs([listing])[0]] == [
        ("videos/jump/v1", tmp_path / "videos/jump/v1.avi"), ("videos/rawframes/v3", frames)]
    # A directory: every video file and every frame folder under it, ids relative to it.
    assert [v.video_id for v in gather_inputs([video_dir])[0]] == ["jump/v1", "rawframes/v3", "run/broken", "run/v2"]
    assert [v.video_id for v in gather_inputs([frames])[0]] == ["v3"]  # a frame folder given itself
    monkeypatch.chdir(frames)  # as `.`: named by the folder it is (an empty id wrote hidden `.npy` files)
    assert [v.video_id for v in gather_inputs(["."])[0]] == ["v3"]
    listing.write_text("videos/jump/v1.avi\nvideos/jump/v1.mp4\n")
    assert [why for _, why in gather_inputs([listing])[1]] == [
        f"the video id videos/jump/v1 of {tmp_path / 'videos' / 'jump' / 'v1.avi'} (ids leave out the extension): "
        "rename one"]
    with pytest.raises(FusionError, match="no such video file, frame folder, directory or list file"):
        gather_inputs([tmp_path / "absent"])[0]


def test_output_rules_and_formats(tmp_path, video_dir, tiny_checkpoints, monkeypatch):
    ckpts = {"rgb": last_checkpoints(tiny_checkpoints)["rgb"]}
    with pytest.raises(FusionError, match="must end in .npz or .parquet"):
        extract_features(video_dir, ckpts, tmp_path / "f.csv", FAST_FLOW, CFG)
    # One rule for every output: an existing one is refused unless --force (as export does).
    out = tmp_path / "f.npz"
    extract_features(video_dir, ckpts, out, FAST_FLOW, CFG)
    before = out.read_bytes()
    with pytest.raises(OutputExistsError, match="would overwrite .*f.npz: pass --force"):
        extract_features(video_dir, ckpts, out, FAST_FLOW, CFG)
    assert out.read_bytes() == before
    summary = extract_features(video_dir, ckpts, out, FAST_FLOW, CFG, force=True)
    assert summary.computed == 2
    with np.load(out) as again:
        assert list(again["ids"]) == ["jump/v1", "run/v2"]
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as on a machine without it
    with pytest.raises(FusionError, match="pip install pyarrow.*or write .npz"):
        extract_features(video_dir, ckpts, tmp_path / "f.parquet", FAST_FLOW, CFG)


def test_parquet_output(tmp_path, video_dir, tiny_checkpoints):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow (the test extra) is not installed")
    extract_features(video_dir, last_checkpoints(tiny_checkpoints), tmp_path / "f.parquet", FAST_FLOW, CFG)
    table = pq.read_table(tmp_path / "f.parquet")
    assert table.column("video_id").to_pylist() == ["jump/v1", "run/v2"]
    assert len(table.column("two_stream").to_pylist()[0]) == 512
    assert b"p3d_two_stream" in table.schema.metadata
