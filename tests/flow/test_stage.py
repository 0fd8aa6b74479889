import contextlib
import csv
import dataclasses
import errno
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from flow.config import FlowConfig
from flow.encoding import decode, encode
from flow.errors import FlowError
from flow.index import source_origin
from flow.stage import FlowJob, make_backend, run_flow
from flow.store import PackWriter, open_store
from flow.tvl1 import OpenCVTVL1, to_gray
from flow.verify import verify_store
from flow.video import VideoReader
from p3dbase.atomic import DiskFullError
from p3dbase.errors import P3DError, SettingError
from tests.builders import deny_as_for_a_user, moving_square, write_video

REPO = Path(__file__).resolve().parents[2]


def jobs_in(folder: Path) -> list[FlowJob]:
    return [FlowJob(f"Cls/{p.stem}", p) for p in sorted(folder.iterdir())]


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones included), by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def store_files(root: Path) -> dict[str, bytes]:
    """The store's files: everything but the manifests and the index (which hold timings and file times)."""
    return {k: v for k, v in tree(root).items() if not k.startswith(("manifest", "index/"))}


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
    fast_cfg = dataclasses.replace(fast_cfg, codec="png", flow_codec="png")  # lossless: exact comparisons
    out = tmp_path / "flow"
    summary = run_flow(jobs_in(videos), out, fast_cfg)
    assert (summary.videos, summary.computed, summary.skipped, summary.failed) == (3, 3, 0, 0)
    assert (summary.frames, summary.pairs) == (26, 23)
    store = open_store(out)
    assert store.video_ids() == ["Cls/a", "Cls/b", "Cls/c"]
    for job in jobs_in(videos):
        decoded = np.concatenate(list(VideoReader(job.path).chunks(100, 100)))
        # Exactly the flow of the stage's own solver (the fast backend). OpenCV's DualTVL1 gives the same
        # flow only up to float rounding (1e-5 px here), which another CPU or SIMD path rounds otherwise:
        # a value at the edge between two levels (a still pixel's 0 lies on one: 127.5) may then land on
        # the next level, so OpenCV's levels within one (equal here by luck, not by construction).
        expected_flow = encode(make_backend(fast_cfg).compute(to_gray(decoded)), fast_cfg.bound)
        opencv_flow = encode(OpenCVTVL1(fast_cfg).compute(to_gray(decoded)), fast_cfg.bound)
        with store.open(job.video_id) as v:
            assert (v.num_frames, v.num_flows) == (len(decoded), len(decoded) - 1)
            assert np.array_equal(v.rgb(range(v.num_frames)), decoded)  # packed store is lossless
            stored = v.flow(range(v.num_flows))
            assert np.array_equal(stored, expected_flow)
            assert np.abs(stored.astype(int) - opencv_flow).max() <= 1
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
    assert all(after[k] == content[k] for k in after if k != "manifest.csv" and not k.startswith("index/"))


def test_a_damaged_finished_video_is_redone(videos, tmp_path, fast_cfg):
    out = tmp_path / "flow"
    run_flow(jobs_in(videos), out, fast_cfg)
    want = store_files(out)
    pack = out / "Cls" / "b.pack"
    pack.write_bytes(pack.read_bytes()[:100])
    again = run_flow(jobs_in(videos), out, fast_cfg)
    assert (again.computed, again.skipped) == (1, 2)
    assert store_files(out) == want


def test_a_video_without_read_permission_is_listed_as_such_and_the_run_finishes(videos, tmp_path, fast_cfg,
                                                                                monkeypatch):
    """It was "cannot open (not a video OpenCV/FFmpeg can read ...)" after an OpenCV warning: a user reading
    that looks for a broken file, not at its permissions. Real permissions for a user; for root, who
    reads anything, os.access answers as for a user."""
    locked = videos / "b.avi"
    locked.chmod(0)
    deny_as_for_a_user(monkeypatch, locked, os.R_OK)
    try:
        summary = run_flow(jobs_in(videos), tmp_path / "flow", fast_cfg)
    finally:
        locked.chmod(0o644)
    assert (summary.computed, summary.failed) == (2, 1)
    errors = {r["video_id"]: r["error"] for r in manifest_rows(tmp_path / "flow" / "manifest.csv")}
    assert errors["Cls/b"] == f"{locked}: cannot be read: no permission"


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
        if name != "manifest.csv" and not name.startswith("index/"):  # those hold timings
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
        with pytest.raises(SettingError, match="^flow.scheduler: cannot reach the Dask scheduler"):
            run_flow(jobs_in(videos), tmp_path / "flow", cfg)


def test_mmaction_layout(videos, tmp_path, fast_cfg):
    out = tmp_path / "flow"
    run_flow(jobs_in(videos), out, dataclasses.replace(fast_cfg, store="mmaction"))
    names = sorted(os.listdir(out / "Cls" / "b"))
    assert names == ([".p3d.json"] + [f"flow_x_{i:05d}.jpg" for i in range(1, 6)]
                     + [f"flow_y_{i:05d}.jpg" for i in range(1, 6)] + [f"img_{i:05d}.jpg" for i in range(1, 7)])
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


def test_the_torch_backend_is_built_again_for_another_batch_size(fast_cfg):
    """Backends are kept per process, keyed by the store's settings: batch_pairs is none of them, so a
    smaller batch asked for after an out-of-memory error ran with the first one's."""
    pytest.importorskip("torch")
    small = make_backend(dataclasses.replace(fast_cfg, backend="torch", device="cpu", batch_pairs=1))
    large = make_backend(dataclasses.replace(fast_cfg, backend="torch", device="cpu", batch_pairs=64))
    assert small is not large and (small.cfg.batch_pairs, large.cfg.batch_pairs) == (1, 64)
    assert make_backend(dataclasses.replace(fast_cfg, backend="torch", device="cpu", batch_pairs=1)) is small


# --- two runs, dead workers, a killed run, a full disk, flipped bytes, odd names -----------------------

def _worker_pid(temp: Path) -> int | None:
    """The pid in a writer's temporary name `.<name>.pack.tmp-<host>-<pid>[.flow]`."""
    match = re.search(r"\.tmp-.*-(\d+)(\.flow)?$", temp.name)
    return int(match.group(1)) if match else None


def test_a_second_run_leaves_a_video_being_written_alone_and_finds_it_done(videos, tmp_path, fast_cfg):
    """Two runs on one store, deterministically: run 2 starts while run 1 is mid-video. Run 1 here is
    the test holding the video's lock and writing it; the video is the smallest file, which run 2
    (largest first) reaches last."""
    fast_cfg = dataclasses.replace(fast_cfg, codec="png", flow_codec="png")  # decoded images re-encode exactly
    jobs = jobs_in(videos)
    held = min(jobs, key=lambda j: j.path.stat().st_size).video_id
    others = [j.video_id for j in jobs if j.video_id != held]
    reference = tmp_path / "reference"
    run_flow(jobs, reference, fast_cfg)
    with open_store(reference).open(held) as v:
        rgb, flow = v.rgb(range(v.num_frames)), v.flow(range(v.num_flows))
    out = tmp_path / "flow"
    run_flow([], out, fast_cfg)  # the store, as run 1 made it
    store = open_store(out)
    result: dict = {}
    held_path = next(j.path for j in jobs if j.video_id == held)
    with store.lock(held):  # run 1 is writing it, from the same source file and settings
        origin = source_origin(held_path, store.settings_digest).as_dict()
        writer = store.writer(held, {**origin, "declared_frames": VideoReader(held_path).declared_frames,
                                     "video_id": held})
        writer.add_rgb(rgb[:3])
        second = threading.Thread(target=lambda: result.update(summary=run_flow(jobs, out, fast_cfg)))
        second.start()
        deadline = time.monotonic() + 60
        while not all(store.has(v) for v in others) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        assert writer.tmp.exists(), "run 2 deleted the file run 1 is writing"
        assert second.is_alive() and not store.has(held)  # run 2 waits for the video
        writer.add_rgb(rgb[3:])
        writer.add_flow(flow)
        writer.commit()
    second.join(timeout=60)
    summary = result["summary"]
    assert (summary.computed, summary.skipped, summary.failed) == (2, 1, 0)  # `held`: done by run 1
    assert [r["status"] for r in manifest_rows(out / "manifest.csv")] == ["done"] * 3
    assert store_files(out) == store_files(reference)


TWO_RUNS_SCRIPT = KILL_SCRIPT.replace("run_flow(jobs,", "print(run_flow(jobs,").replace(
    "outer_iterations=3))", "outer_iterations=3)).computed)")


def test_two_runs_at_once_on_one_store_lose_nothing(tmp_path):
    """Two `flow` runs on one work_dir (a re-launch, a scheduler retry) share the work."""
    folder = tmp_path / "videos"
    for k in range(4):
        write_video(folder / f"v{k}.avi", moving_square(8, seed=k))
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def start(out: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", TWO_RUNS_SCRIPT, str(folder), str(out)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    reference = tmp_path / "reference"  # in this process: the script's settings, one run
    run_flow(jobs_in(folder), reference, FlowConfig(size="", jobs=1, batch_pairs=4, nscales=3, warps=2,
                                                    inner_iterations=10, outer_iterations=3))
    out = tmp_path / "flow"
    first = start(out)
    deadline = time.monotonic() + 60
    while not (out.exists() and list(out.rglob(".*.tmp-*"))) and time.monotonic() < deadline:
        time.sleep(0.005)
    second = start(out)  # while the first is writing a video
    outputs = [p.communicate(timeout=120)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0]
    assert sum(int(o.split()[-1]) for o in outputs) == 4  # every video computed once, by one of them
    want, got = tree(reference), tree(out)
    assert got.keys() == want.keys()  # all four packs, no temporary or lock file left
    assert store_files(out) == store_files(reference)
    assert [r["status"] for r in manifest_rows(out / "manifest.csv")] == ["done"] * 4


def test_a_killed_worker_fails_only_its_video(tmp_path, fast_cfg):
    """A worker killed (the OOM killer's SIGKILL) while on `big`, and again when
    `big` runs alone: `big` is recorded as failed, the video that shared the pool is redone, the
    rest finish."""
    folder = tmp_path / "videos"
    write_video(folder / "big.avi", moving_square(40, seed=9))  # the largest file: it starts first
    for k in range(3):
        write_video(folder / f"v{k}.avi", moving_square(6, seed=k))
    out = tmp_path / "flow"
    stop, killed = threading.Event(), set()

    def killer() -> None:  # kills every process writing `big`
        while not stop.is_set():
            for temp in (out / "Cls").glob(".big.pack.tmp-*") if (out / "Cls").is_dir() else []:
                pid = _worker_pid(temp)
                if pid and pid != os.getpid() and pid not in killed:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            time.sleep(0.002)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        summary = run_flow(jobs_in(folder), out, dataclasses.replace(fast_cfg, jobs=2, batch_pairs=2))
    finally:
        stop.set()
        thread.join()
    assert len(killed) == 2  # in the pool, then alone
    # a video whose worker finished its pack just before the pool broke is found done when rerun
    assert (summary.computed + summary.skipped, summary.failed) == (3, 1)
    (video_id, error), = summary.failures
    assert video_id == "Cls/big" and "worker process died while computing it, also when run alone" in error
    assert "SIGKILL" in error or "-9" in error
    assert open_store(out).video_ids() == ["Cls/v0", "Cls/v1", "Cls/v2"]
    rows = {r["video_id"]: r for r in manifest_rows(out / "manifest.csv")}
    assert rows["Cls/big"]["status"] == "failed" and rows["Cls/big"]["error"] == error
    assert not list(out.rglob(".*"))  # what the killed workers were writing is cleaned up


ORPHAN_SCRIPT = """
import sys
from pathlib import Path
from flow.config import FlowConfig
from flow.stage import FlowJob, run_flow
jobs = [FlowJob("Cls/" + p.stem, p) for p in sorted(Path(sys.argv[1]).iterdir())]
run_flow(jobs, Path(sys.argv[2]), FlowConfig(size="", jobs=2, batch_pairs=2))
"""


def test_killing_the_run_stops_its_workers(tmp_path):
    """After `kill -9` of the run its worker processes stop within a chunk and
    remove what they were writing, instead of writing into the store for minutes."""
    folder = tmp_path / "videos"
    for k in range(2):  # each about 200 pairs of full TV-L1: far longer than the test waits
        write_video(folder / f"v{k}.avi", moving_square(200, seed=k))
    out = tmp_path / "flow"
    run = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT, str(folder), str(out)],
                           env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and run.poll() is None:
            workers = {_worker_pid(t) for t in out.rglob(".*.tmp-*")} - {None} if out.exists() else set()
            time.sleep(0.01)
        assert len(workers) == 2, "the two workers did not start writing"
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.05)
        assert not [pid for pid in workers if _alive(pid)], "workers of the killed run go on"
        time.sleep(0.2)
        assert not list(out.rglob(".*.tmp-*")) and not list(out.rglob("*.pack"))
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_a_size_spelled_another_way_is_the_same_store(videos, tmp_path, fast_cfg):
    """store.json records one spelling per size: a run given "0032X24" takes a store made with "32x24"
    for its own (was refused, "size differ"), and a size in other digits than ASCII is refused."""
    out = tmp_path / "flow"
    first = run_flow(jobs_in(videos), out, dataclasses.replace(fast_cfg, size="32x24"))
    assert first.computed == 3 and open_store(out).params["size"] == "32x24"
    again = run_flow(jobs_in(videos), out, dataclasses.replace(fast_cfg, size="0032X24"))
    assert (again.computed, again.skipped) == (0, 3)
    with pytest.raises(FlowError, match=r"\(size: \"32x24\" in the store, \"24\" now\)"):
        run_flow(jobs_in(videos), out, dataclasses.replace(fast_cfg, size="024"))
    with pytest.raises(ValueError, match="size: must be 'WxH'"):
        dataclasses.replace(fast_cfg, size="\u0663\u0662x24").validate()


def test_force_with_a_shard_and_other_settings_is_refused(videos, tmp_path, fast_cfg):
    """`--force --shard` once rewrote store.json for the whole store, redid one shard
    and left a mixed store that a plain re-run took for done."""
    out = tmp_path / "flow"
    run_flow(jobs_in(videos), out, fast_cfg)
    before = store_files(out)
    other = dataclasses.replace(fast_cfg, scale_step=0.8)
    with pytest.raises(FlowError, match=r"store\.json: --force --shard 1/2 with other settings than the "
                                        r"store's \(scale_step differ\) .* without --shard"):
        run_flow(jobs_in(videos), out, other, shard=(1, 2), force=True)
    assert store_files(out) == before  # store.json and every pack untouched
    again = run_flow(jobs_in(videos), out, fast_cfg, shard=(1, 2), force=True)  # same settings: fine
    assert (again.computed, again.skipped) == (1, 0) and store_files(out) == before
    assert run_flow(jobs_in(videos), out, other, force=True).computed == 3  # the whole store: fine


def test_a_full_disk_stops_the_run_with_one_error_and_no_temp_files(videos, tmp_path, fast_cfg, monkeypatch):
    """A full disk (ENOSPC) once marked every remaining video failed and the stage exited 0."""
    out = tmp_path / "flow"
    put, calls = PackWriter._put, []

    def full_after_one_video(f, blob):
        calls.append(1)
        if len(calls) > 21:  # the first video (a: 11 frames + 10 flows, the largest file) fits
            raise OSError(errno.ENOSPC, "No space left on device")
        return put(f, blob)

    monkeypatch.setattr(PackWriter, "_put", staticmethod(full_after_one_video))
    with pytest.raises(DiskFullError, match=r"Cls/\w\.pack: disk full .* free space and re-run") as err:
        run_flow(jobs_in(videos), out, fast_cfg)
    assert isinstance(err.value, P3DError)  # the CLI prints it as one line and exits 2
    assert not list(out.rglob(".*"))  # no temporary file, no lock file
    assert open_store(out).video_ids() == ["Cls/a"]
    rows = {r["video_id"]: r["status"] for r in manifest_rows(out / "manifest.csv")}
    assert rows == {"Cls/a": "done", "Cls/b": "pending", "Cls/c": "pending"}  # nothing marked failed
    monkeypatch.undo()
    assert run_flow(jobs_in(videos), out, fast_cfg).computed == 2  # space again: the re-run resumes


def test_verify_finds_a_flipped_byte_and_the_next_run_redoes_that_video(videos, tmp_path, fast_cfg, capsys):
    out = tmp_path / "flow"
    run_flow(jobs_in(videos), out, fast_cfg)
    want = store_files(out)
    pack = out / "Cls" / "b.pack"
    data = bytearray(pack.read_bytes())
    data[len(data) // 3] ^= 0x01  # inside an image: the pack still opens
    stat = pack.stat()
    pack.write_bytes(bytes(data))
    os.utime(pack, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # flipped in place by the disk: same size and time
    assert open_store(out).open("Cls/b").num_frames == 6
    assert run_flow(jobs_in(videos), out, fast_cfg).skipped == 3  # a plain re-run reads no image
    report = verify_store(out, jobs=2)
    assert report.videos == 3 and [v for v, _ in report.damaged] == ["Cls/b"]
    assert "CRC32 mismatch" in report.damaged[0][1]
    assert manifest_rows(out / "verify-report.csv", drop=("problem",)) == [{"video_id": "Cls/b"}]
    again = run_flow(jobs_in(videos), out, fast_cfg)
    assert (again.computed, again.skipped) == (1, 2)
    assert "Cls/b: `verify` found it damaged" in capsys.readouterr().out
    assert {k: v for k, v in store_files(out).items() if k != "verify-report.csv"} == want
    assert verify_store(out).damaged == []


NON_UTF8_RUN = """
import os, sys
from pathlib import Path
from flow.config import FlowConfig
from flow.stage import FlowJob, run_flow
folder = Path(os.fsdecode(sys.argv[1].encode() + b"/vid\\xe9os"))
jobs = [FlowJob("Cls/" + p.stem.encode("utf-8", "surrogateescape").decode("latin-1"), p)
        for p in sorted(folder.iterdir())]
s = run_flow(jobs, Path(sys.argv[2]), FlowConfig(size="", jobs=1, nscales=2, warps=1, inner_iterations=5,
                                                  outer_iterations=2, median_filtering=1))
print("RESULT", s.computed, s.failed)
"""


def test_file_names_and_manifests_that_are_not_utf8(tmp_path):
    """OpenCV once segfaulted on such a name (rc 139, no manifest, every re-run again);
    a manifest with non-UTF-8 bytes gave a traceback. In a subprocess: a crash fails the test."""
    write_video(tmp_path / "videos" / "plain.avi", moving_square(5, seed=1))
    write_video(tmp_path / "videos" / "cafe.avi", moving_square(5, seed=2))
    try:
        os.rename(tmp_path / "videos" / "cafe.avi", os.fsencode(tmp_path / "videos") + b"/caf\xe9.avi")
        os.rename(tmp_path / "videos", os.fsencode(tmp_path) + b"/vid\xe9os")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / "flow"
    out.mkdir()
    (out / "manifest-shard-0-of-2.csv").write_bytes(b"video_id,path\n\xff\xfe,\x80\n")  # an earlier, damaged one
    result = subprocess.run([sys.executable, "-c", NON_UTF8_RUN, str(tmp_path), str(out)], capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, f"rc {result.returncode}: {result.stderr[-2000:]}"
    assert "RESULT 2 0" in result.stdout
    text = (out / "manifest.csv").read_bytes().decode("utf-8")  # valid UTF-8
    assert "vid\\xe9os/caf\\xe9.avi,done,5,4,5" in text
    assert open_store(out).video_ids() == ["Cls/caf\xe9", "Cls/plain"]


@pytest.mark.parametrize("video_id", ["", "/abs", ".hidden/a", "a/.hidden", "a//b", "a/", "a/./b", "a/../b",
                                      "a\\b", "..", "."])
def test_every_kind_of_bad_video_id_is_one_failed_video(videos, tmp_path, fast_cfg, video_id):
    """The run checks ids without splitting them (650,000 of them); each bad one still gets the reason."""
    good = jobs_in(videos)[1]
    summary = run_flow([FlowJob(video_id, good.path), good], tmp_path / "flow", fast_cfg)
    assert (summary.computed, summary.failed) == (1, 1)
    assert summary.failures == [(video_id, f"video id {video_id!r}: must be a relative path of non-hidden names "
                                           "separated by '/' (e.g. 'Class/v_Class_g01_c01')")]


def test_a_store_recorded_with_an_old_size_spelling_still_matches(videos, tmp_path, fast_cfg, monkeypatch):
    """Stores made before store.json recorded one spelling of the size hold it as typed ("32X24"): a
    plain re-run of that config still takes the store for its own, and leaves its record as it is."""
    import json

    out = tmp_path / "flow"
    with monkeypatch.context() as before:  # the code before: the size recorded as typed
        before.setattr("flow.stage.size_text", lambda size: size)
        run_flow(jobs_in(videos), out, dataclasses.replace(fast_cfg, size="32X24"))
    record = json.loads((out / "store.json").read_text())
    assert record["params"]["size"] == "32X24"
    again = run_flow(jobs_in(videos), out, dataclasses.replace(fast_cfg, size="32X24"))
    assert (again.computed, again.skipped) == (0, 3) and json.loads((out / "store.json").read_text()) == record
