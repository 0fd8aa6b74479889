import csv
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flow.encoding import decode, encode
from flow.errors import FlowError
from flow.stage import FlowJob, make_backend, run_flow
from flow.store import open_store
from flow.tvl1 import OpenCVTVL1, to_gray
from flow.video import VideoReader

from .conftest import moving_square, write_video

REPO = Path(__file__).resolve().parents[2]


def jobs_in(folder: Path) -> list[FlowJob]:
    return [FlowJob(f"Cls/{p.stem}", p) for p in sorted(folder.iterdir())]


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones included), by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def store_files(root: Path) -> dict[str, bytes]:
    """The store's files: everything but the manifests (which hold timings)."""
    return {k: v for k, v in tree(root).items() if not k.startswith("manifest")}


def manifest_rows(path: Path, drop=("seconds",)) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


@pytest.fixture
def videos(tmp_path):
    folder = tmp_path / "videos"
    write_video(folder / "a.mkv", moving_square(11, seed=1))
    write_video(folder / "b.avi", moving_square(6, seed=2, step=1))
    write_video(folder / "c.mp4", moving_square(9, seed=3, step=3))
    return folder


def test_every_video_stored_with_its_frames_and_exact_flow(videos, tmp_path, fast_cfg):
    out = tmp_path / "flow"
    summary = run_flow(jobs_in(videos), out, fast_cfg)
    assert (summary.videos, summary.computed, summary.skipped, summary.failed) == (3, 3, 0, 0)
    assert (summary.frames, summary.pairs) == (26, 23)
    store = open_store(out)
    assert store.video_ids() == ["Cls/a", "Cls/b", "Cls/c"]
    for job in jobs_in(videos):
        decoded = np.concatenate(list(VideoReader(job.path).chunks(100, 100)))
        expected_flow = encode(OpenCVTVL1(fast_cfg).compute(to_gray(decoded)), fast_cfg.bound)
        with store.open(job.video_id) as v:
            assert (v.num_frames, v.num_flows) == (len(decoded), len(decoded) - 1)
            assert np.array_equal(v.rgb(range(v.num_frames)), decoded)  # packed store is lossless
            assert np.array_equal(v.flow(range(v.num_flows)), expected_flow)
    # flow i is frame i -> i + 1: the square of "a" moves 2 px right per frame
    with store.open("Cls/a") as v:
        x = decode(v.flow([0])[0, 16:32, 10:26], fast_cfg.bound)
        assert np.median(x[..., 0]) == pytest.approx(2.0, abs=0.3)
        assert np.median(x[..., 1]) == pytest.approx(0.0, abs=0.2)
    rows = manifest_rows(out / "manifest.csv", drop=())
    assert [(r["video_id"], r["status"], r["frames"], r["flow_pairs"], r["declared_frames"]) for r in rows] == [
        ("Cls/a", "done", "11", "10", "11"), ("Cls/b", "done", "6", "5", "6"), ("Cls/c", "done", "9", "8", "9")]
    assert all(float(r["seconds"]) > 0 and r["error"] == "" for r in rows)


def test_video_longer_than_a_chunk_keeps_every_frame_and_pair(tmp_path, fast_cfg):
    folder = tmp_path / "videos"
    write_video(folder / "long.mkv", moving_square(14))
    outs = {}
    for batch in (1, 4, 13, 64):
        out = tmp_path / f"flow{batch}"
        run_flow(jobs_in(folder), out, dataclasses.replace(fast_cfg, batch_pairs=batch))
        with open_store(out).open("Cls/long") as v:
            assert (v.num_frames, v.num_flows) == (14, 13)
        outs[batch] = store_files(out)
    assert outs[1] == outs[4] == outs[13] == outs[64]  # chunking changes nothing, not even bytes


def test_rerun_does_nothing_and_force_redoes(videos, tmp_path, fast_cfg):
    out = tmp_path / "flow"
    run_flow(jobs_in(videos), out, fast_cfg)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    content = tree(out)
    again = run_flow(jobs_in(videos), out, fast_cfg)
    assert (again.computed, again.skipped, again.failed, again.pairs) == (0, 3, 0, 0)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing written at all
    forced = run_flow(jobs_in(videos), out, fast_cfg, force=True)
    assert (forced.computed, forced.skipped) == (3, 0)
    after = tree(out)
    assert after.keys() == content.keys()
    assert all(after[k] == content[k] for k in after if k != "manifest.csv")


def test_a_damaged_finished_video_is_redone(videos, tmp_path, fast_cfg):
    out = tmp_path / "flow"
    run_flow(jobs_in(videos), out, fast_cfg)
    want = store_files(out)
    pack = out / "Cls" / "b.pack"
    pack.write_bytes(pack.read_bytes()[:100])
    again = run_flow(jobs_in(videos), out, fast_cfg)
    assert (again.computed, again.skipped) == (1, 2)
    assert store_files(out) == want


def test_corrupt_files_among_good_ones_are_listed_and_the_run_finishes(videos, tmp_path, fast_cfg):
    good = (videos / "b.avi").read_bytes()
    (videos / "truncated.avi").write_bytes(write_video(tmp_path / "x.avi", moving_square(40)).read_bytes()[:9000])
    (videos / "random.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    (videos / "empty.mkv").write_bytes(b"")
    (videos / "header_only.avi").write_bytes(good[:400])
    write_video(videos / "one_frame.mkv", moving_square(1))
    out = tmp_path / "flow"
    summary = run_flow(jobs_in(videos), out, fast_cfg)
    assert (summary.computed, summary.failed) == (3, 5)
    assert open_store(out).video_ids() == ["Cls/a", "Cls/b", "Cls/c"]
    errors = {r["video_id"]: (r["status"], r["error"]) for r in manifest_rows(out / "manifest.csv")}
    assert errors["Cls/truncated"][0] == "failed" and "truncated" in errors["Cls/truncated"][1]
    assert "cannot open" in errors["Cls/random"][1]
    assert "empty file" in errors["Cls/empty"][1]
    assert errors["Cls/header_only"][0] == "failed"
    assert "only one frame" in errors["Cls/one_frame"][1]
    assert sorted(f[0] for f in summary.failures) == ["Cls/empty", "Cls/header_only", "Cls/one_frame",
                                                      "Cls/random", "Cls/truncated"]
    assert not [p for p in out.rglob(".*")]  # nothing half-written left behind
    # --strict: the good ones are still done, then the run fails
    strict_out = tmp_path / "strict"
    with pytest.raises(FlowError, match="5 of 8 videos failed"):
        run_flow(jobs_in(videos), strict_out, fast_cfg, strict=True)
    assert open_store(strict_out).video_ids() == ["Cls/a", "Cls/b", "Cls/c"]


def test_shards_split_the_videos_and_a_final_run_merges_the_manifest(videos, tmp_path, fast_cfg):
    out = tmp_path / "flow"
    s0 = run_flow(jobs_in(videos), out, fast_cfg, shard=(0, 2))
    s1 = run_flow(jobs_in(videos), out, fast_cfg, shard=(1, 2))
    assert (s0.computed, s1.computed) == (2, 1)
    assert open_store(out).video_ids() == ["Cls/a", "Cls/b", "Cls/c"]
    ids0 = {r["video_id"] for r in manifest_rows(out / "manifest-shard-0-of-2.csv")}
    ids1 = {r["video_id"] for r in manifest_rows(out / "manifest-shard-1-of-2.csv")}
    assert ids0 | ids1 == {"Cls/a", "Cls/b", "Cls/c"} and not ids0 & ids1
    merged = run_flow(jobs_in(videos), out, fast_cfg)
    assert (merged.computed, merged.skipped) == (0, 3)
    rows = manifest_rows(out / "manifest.csv", drop=())
    assert [r["status"] for r in rows] == ["done"] * 3 and all(float(r["seconds"]) > 0 for r in rows)
    with pytest.raises(FlowError, match="shard"):
        run_flow(jobs_in(videos), out, fast_cfg, shard=(2, 2))


KILL_SCRIPT = """
import sys
from pathlib import Path
from flow.config import FlowConfig
from flow.stage import FlowJob, run_flow
jobs = [FlowJob("Cls/" + p.stem, p) for p in sorted(Path(sys.argv[1]).iterdir())]
run_flow(jobs, Path(sys.argv[2]), FlowConfig(size="", jobs=1, batch_pairs=4, nscales=3, warps=2,
                                             inner_iterations=10, outer_iterations=3))
"""


def _run_script(folder: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(folder), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_killed_and_resumed_run_matches_an_uninterrupted_one_byte_for_byte(tmp_path):
    folder = tmp_path / "videos"
    for k in range(5):
        write_video(folder / f"v{k}.avi", moving_square(12, seed=k))
    reference = tmp_path / "reference"
    assert _run_script(folder, reference).wait(timeout=120) == 0

    out = tmp_path / "resumed"
    proc = _run_script(folder, out)
    deadline = time.monotonic() + 60
    killed_mid_video = False
    while time.monotonic() < deadline and proc.poll() is None:
        packs = list(out.rglob("*.pack")) if out.exists() else []
        temps = list(out.rglob(".*.tmp-*")) if out.exists() else []
        if packs and temps:  # some videos complete, one half-written: kill now
            proc.send_signal(signal.SIGKILL)
            killed_mid_video = True
            break
        time.sleep(0.005)
    proc.wait(timeout=30)
    assert killed_mid_video, "the run ended before it could be killed mid-way"
    assert 0 < len(list(out.rglob("*.pack"))) < 5

    assert _run_script(folder, out).wait(timeout=120) == 0
    want, got = tree(reference), tree(out)
    assert got.keys() == want.keys()  # no temporary file left, nothing missing
    for name in want:
        if name != "manifest.csv":
            assert got[name] == want[name], name
    assert manifest_rows(out / "manifest.csv") == manifest_rows(reference / "manifest.csv")


def test_parallel_jobs_give_the_same_bytes(videos, tmp_path, fast_cfg):
    run_flow(jobs_in(videos), tmp_path / "one", fast_cfg)
    run_flow(jobs_in(videos), tmp_path / "two", dataclasses.replace(fast_cfg, jobs=2))
    assert store_files(tmp_path / "one") == store_files(tmp_path / "two")


def test_dask_cluster_on_loopback(videos, tmp_path, fast_cfg):
    distributed = pytest.importorskip("distributed")
    run_flow(jobs_in(videos), tmp_path / "local", fast_cfg)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        cfg = dataclasses.replace(fast_cfg, scheduler=cluster.scheduler_address)
        summary = run_flow(jobs_in(videos), tmp_path / "dask", cfg)
    assert (summary.computed, summary.failed) == (3, 0)
    assert store_files(tmp_path / "local") == store_files(tmp_path / "dask")


def test_unreachable_scheduler_is_a_flow_error(videos, tmp_path, fast_cfg):
    dask = pytest.importorskip("dask")
    pytest.importorskip("distributed")
    cfg = dataclasses.replace(fast_cfg, scheduler="tcp://127.0.0.1:9")
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(FlowError, match="cannot reach the Dask scheduler"):
            run_flow(jobs_in(videos), tmp_path / "flow", cfg)


def test_mmaction_layout(videos, tmp_path, fast_cfg):
    out = tmp_path / "flow"
    run_flow(jobs_in(videos), out, dataclasses.replace(fast_cfg, store="mmaction"))
    names = sorted(os.listdir(out / "Cls" / "b"))
    assert names == ([f"flow_x_{i:05d}.jpg" for i in range(1, 6)] + [f"flow_y_{i:05d}.jpg" for i in range(1, 6)]
                     + [f"img_{i:05d}.jpg" for i in range(1, 7)])
    store = open_store(out)
    assert store.layout == "mmaction" and store.video_ids() == ["Cls/a", "Cls/b", "Cls/c"]
    with store.open("Cls/a") as v:
        assert (v.num_frames, v.num_flows) == (11, 10) and v.flow([9]).shape == (1, 48, 64, 2)


def test_changed_settings_need_force(videos, tmp_path, fast_cfg):
    out = tmp_path / "flow"
    run_flow(jobs_in(videos), out, fast_cfg)
    other = dataclasses.replace(fast_cfg, scale_step=0.8)
    with pytest.raises(FlowError, match="other settings"):
        run_flow(jobs_in(videos), out, other)
    assert run_flow(jobs_in(videos), out, other, force=True).computed == 3
    assert open_store(out).params["scale_step"] == 0.8
    # settings that do not change the output are not compared
    assert run_flow(jobs_in(videos), out, dataclasses.replace(other, jobs=2, batch_pairs=7)).skipped == 3


def test_bad_job_lists_and_settings(videos, tmp_path, fast_cfg):
    jobs = jobs_in(videos)
    with pytest.raises(FlowError, match="appears twice"):
        run_flow(jobs + jobs[:1], tmp_path / "flow", fast_cfg)
    # a bad id is one failed video (with the reason), not the end of the run, and nothing escapes
    summary = run_flow([FlowJob("../escape", jobs[0].path), jobs[1]], tmp_path / "flow", fast_cfg)
    assert (summary.computed, summary.failed) == (1, 1)
    assert summary.failures[0][0] == "../escape" and "video id '../escape'" in summary.failures[0][1]
    assert not list(tmp_path.glob("escape*")) and open_store(tmp_path / "flow").video_ids() == ["Cls/b"]
    with pytest.raises(FlowError, match=r"\[flow\] scale_step"):
        run_flow(jobs, tmp_path / "flow", dataclasses.replace(fast_cfg, scale_step=1.5))


def test_torch_backend_without_its_module_is_a_clear_error(monkeypatch, fast_cfg):
    monkeypatch.setitem(sys.modules, "flow.tvl1_torch", None)  # as if the module were absent
    with pytest.raises(FlowError, match="backend = 'torch' is not available"):
        make_backend(dataclasses.replace(fast_cfg, backend="torch"))
