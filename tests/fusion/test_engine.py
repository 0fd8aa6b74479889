"""The one inference engine: the same numbers as the paths it replaced, its cache key, its view plans."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from flow.store import open_store
from fusion.config import EvalConfig
from fusion.engine import Engine, OutputCache, file_signature, open_stream, store_source
from fusion.errors import FusionError
from fusion.outputs import collect
from fusion.scoring import StreamRunner
from fusion.stage import EvalJob, run_eval
from fusion.views import View, ViewPlan, feature_plan, feature_views, score_plan, score_views, snippet_starts
from streams.checkpoint import load_stream
from tests.builders import save_tiny_checkpoint

from .conftest import CLASSES

CFG = EvalConfig(clips=3, crops="three", batch_views=5, svm_clips=4, svm_cs=[0.1, 10.0], svm_folds=3, jobs=1)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def old_eval_outputs(store_root, path, name, cfg, scores, features):
    """The eval path before the engine (fusion/outputs.py's _work, verbatim in substance): one
    StreamRunner pass over the score views then the feature views; logits of the first, pool5 of the
    second averaged."""
    model, ckpt = load_stream(path, name)
    from fusion.scoring import ClipGeometry

    runner = StreamRunner(model, name, ClipGeometry.from_train_config(ckpt.train_config), cfg.batch_views,
                          torch.device("cpu"))
    with open_store(store_root).open(scores) as video:
        length = video.num_frames if name == "rgb" else video.num_flows
        clip_len = runner.geometry.clip_len
        wanted_scores = score_views(length, clip_len, cfg.clips, cfg.crops)
        wanted_features = feature_views(length, clip_len, cfg.svm_clips) if features else []
        logits, pool5 = runner.run(video, wanted_scores + wanted_features)
    return logits[:len(wanted_scores)], pool5[len(wanted_scores):].mean(axis=0)


@contextlib.contextmanager
def torch_threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.numerical  # also run with 2 threads by `make test`
def test_eval_outputs_are_bitwise_those_of_the_path_before_the_engine(tiny_store, tiny_checkpoints, tmp_path):
    """SynthActions' `make eval` figures stay as they were: the same views, crops, batches, order.
    Bitwise at one thread count only, so both paths run on one torch thread (the engine runs its
    networks on one per process, fusion.engine._init_worker, whatever the caller's count): another
    count splits the convolutions' sums otherwise (the old path on 3 threads moved logits by 7e-7)."""
    store_root, train, test = tiny_store
    streams = [open_stream(name, tiny_checkpoints[name]) for name in ("rgb", "flow")]
    ids = [v for v, _ in test[:4]]
    with torch_threads(1):
        got, failed = collect(open_store(store_root), streams, {v: (True, True) for v in ids}, CFG,
                              torch.device("cpu"), tmp_path / "cache")
    assert not failed
    for video_id in ids:
        for name in ("rgb", "flow"):
            with torch_threads(1):
                logits, feature = old_eval_outputs(store_root, tiny_checkpoints[name], name, CFG, video_id, True)
            np.testing.assert_array_equal(got[video_id][name].logits, logits)
            np.testing.assert_array_equal(got[video_id][name].feature, feature)


def test_eval_into_one_folder_with_another_checkpoint_never_reports_stale_numbers(tiny_store, tiny_checkpoints,
                                                                                     tmp_path):
    """`eval --rgb OTHER.pt` into the work_dir of an earlier eval: the cache is keyed by the
    checkpoint's SHA-256, so the second report is the other checkpoint's, as a fresh run gives it."""
    store, train, test = tiny_store
    cfg = EvalConfig(clips=2, crops="center", svm=False, fusion_cv=False, jobs=1)
    first = tmp_path / "first.pt"
    other = tmp_path / "other.pt"
    save_tiny_checkpoint(first, "rgb", seed=0)
    save_tiny_checkpoint(other, "rgb", seed=11)  # another seed: other weights, same architecture and settings
    out = tmp_path / "eval"
    run_eval(EvalJob(open_store(store), {"rgb": first}, train, test, CLASSES, protocol="t"), cfg, out)
    before = np.load(out / "scores.npz")["views_rgb"]
    run_eval(EvalJob(open_store(store), {"rgb": other}, train, test, CLASSES, protocol="t"), cfg, out)
    after = np.load(out / "scores.npz")["views_rgb"]
    run_eval(EvalJob(open_store(store), {"rgb": other}, train, test, CLASSES, protocol="t"), cfg, tmp_path / "fresh")
    fresh = np.load(tmp_path / "fresh" / "scores.npz")["views_rgb"]
    assert not np.allclose(after, before)
    np.testing.assert_array_equal(after, fresh)


def test_cache_key_changes_with_what_decides_the_outputs(tiny_checkpoints, tiny_store, tmp_path):
    store = open_store(tiny_store[0])
    rgb = open_stream("rgb", tiny_checkpoints["rgb"])
    other = open_stream("rgb", save_tiny_checkpoint(tmp_path / "o.pt", "rgb", seed=3))
    cache = OutputCache(tmp_path, {"rgb": store_source(store)})
    plan = score_plan(3, "three")
    key = cache.key(rgb, plan)
    assert cache.key(other, plan) != key  # the checkpoint's SHA-256
    assert cache.key(rgb, score_plan(4, "three")) != key  # the view plan
    assert OutputCache(tmp_path, {"rgb": {**store_source(store), "bound": 10.0}}).key(rgb, plan) != key  # the flow
    assert cache.key(rgb, score_plan(3, "three")) == key


def _feature_outputs(tiny_checkpoints, tiny_store, cache_root):
    """The RGB stream, a cache under `cache_root`, the feature plan, a video and its outputs (not cached)."""
    store = open_store(tiny_store[0])
    rgb = open_stream("rgb", tiny_checkpoints["rgb"])
    cache = OutputCache(cache_root, {"rgb": store_source(store)})
    plan = feature_plan(3)
    video_id = tiny_store[2][0][0]
    with store.open(video_id) as video:
        out = Engine([rgb], 4, torch.device("cpu")).run("rgb", video, [plan])[0]
    return rgb, cache, plan, video_id, out


def test_cache_entry_is_tied_to_the_video_signature_and_the_layers(tiny_checkpoints, tiny_store, tmp_path):
    rgb, cache, plan, video_id, out = _feature_outputs(tiny_checkpoints, tiny_store, tmp_path)
    cache.write(rgb, plan, video_id, "1:2", out)
    back = cache.read(rgb, plan, video_id, "1:2")
    assert back.views == out.views and np.array_equal(back.pool5, out.pool5)
    assert cache.read(rgb, plan, video_id, "1:3") is None  # the video changed since
    assert cache.read(rgb, plan, video_id, "1:2", layers=True) is None  # res4 / res5c were not kept


def _damage(path, how):
    """Rewrite a cache entry as a disk, a cut copy or a stray edit may leave it."""
    if how == "cut":
        path.write_bytes(path.read_bytes()[:700])
        return
    if how == "flipped":
        data = bytearray(path.read_bytes())
        data[600] ^= 0x40
        path.write_bytes(bytes(data))
        return
    with np.load(path) as stored:
        entry = dict(stored)
    if how == "fewer rows":
        entry["pool5"] = entry["pool5"][:1]
    elif how == "other classes":
        entry["logits"] = entry["logits"][:, :2]
    elif how == "other width":
        entry["pool5"] = np.concatenate([entry["pool5"], entry["pool5"]], axis=1)
    elif how == "nan":
        entry["logits"][1, 0] = np.nan
    elif how == "views":
        entry["views"][0, 1] = -1  # a crop position no plan has (read back as the last one)
    np.savez(path, **entry)


@pytest.mark.parametrize("how", ["cut", "flipped", "fewer rows", "other classes", "other width", "nan", "views"])
def test_a_damaged_cache_entry_is_computed_again_never_used(tiny_checkpoints, tiny_store, tmp_path, how):
    """Cut or altered bytes, rows of another shape, NaN: the entry is not what the stream gives on the
    plan, so eval computes it again (before, a cut file was a traceback on every run and a wrong
    shape or a NaN changed the results table)."""
    store = open_store(tiny_store[0])
    rgb = open_stream("rgb", tiny_checkpoints["rgb"])
    cfg = EvalConfig(clips=2, crops="center", svm_clips=3, jobs=1)
    video_id = tiny_store[2][0][0]
    fresh, _ = collect(store, [rgb], {video_id: (True, True)}, cfg, torch.device("cpu"), tmp_path / "cache")
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 2  # the score views' and the feature views'
    cache = OutputCache(tmp_path / "cache", {"rgb": store_source(store)})
    for plan in (score_plan(2, "center"), feature_plan(3)):
        _damage(cache.path(rgb, plan, video_id), how)
        assert cache.read(rgb, plan, video_id, file_signature(store.path(video_id))) is None
    again, failed = collect(store, [rgb], {video_id: (True, True)}, cfg, torch.device("cpu"), tmp_path / "cache")
    assert not failed
    np.testing.assert_array_equal(again[video_id]["rgb"].logits, fresh[video_id]["rgb"].logits)
    np.testing.assert_array_equal(again[video_id]["rgb"].feature, fresh[video_id]["rgb"].feature)


def test_outputs_that_are_not_finite_are_never_cached(tiny_checkpoints, tiny_store, tmp_path):
    """The reader takes NaN for damage: written, such an entry would be computed on every run."""
    rgb, cache, plan, video_id, out = _feature_outputs(tiny_checkpoints, tiny_store, tmp_path)
    out.pool5[0, 0] = np.inf
    with pytest.raises(FusionError, match=r"outputs on video .* are not finite \(NaN or inf\)"):
        cache.write(rgb, plan, video_id, "1:2", out)
    assert not list(tmp_path.rglob("*.npz"))


def test_view_plans_give_the_views_of_every_caller():
    assert score_plan(3, "three").views(20, 4) == [View(s, c, False) for s in (0, 8, 16)
                                                   for c in ("start", "center", "end")]
    assert feature_plan(2).views(10, 4) == [View(0, "center", False), View(0, "center", True),
                                           View(6, "center", False), View(6, "center", True)]
    snippets = ViewPlan("snippets", stride=3)
    assert snippets.views(11, 4) == [View(s, "center", False) for s in (0, 3, 6)]  # 6 + 4 <= 11 < 9 + 4
    assert snippet_starts(3, 4, 2) == [0]  # shorter than one window: one (looped) snippet
    assert snippet_starts(4, 4, 2) == [0]
    with pytest.raises(ValueError, match="stride must be >= 1"):
        ViewPlan("snippets", stride=0)
    with pytest.raises(ValueError, match="mode must be one of"):
        ViewPlan("sideways")


def test_a_folder_where_a_cache_entry_belongs_is_named_with_the_remedy(tiny_checkpoints, tiny_store, tmp_path):
    rgb, cache, plan, video_id, out = _feature_outputs(tiny_checkpoints, tiny_store, tmp_path)
    cache.path(rgb, plan, video_id).mkdir(parents=True)
    assert cache.read(rgb, plan, video_id, "1:2") is None
    with pytest.raises(FusionError, match=r"a folder where a cache entry belongs: remove it .* safe to delete"):
        cache.write(rgb, plan, video_id, "1:2", out)
