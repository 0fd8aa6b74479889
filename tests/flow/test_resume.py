"""What a re-run of the flow stage trusts and what it redoes: the store's index ties every finished
video to its source file and the store's settings; bad input (a damaged index, a pack that is not
what the index says, a folder named like a pack, a locked or tiny video) gets one line naming it."""
from __future__ import annotations

import dataclasses
import errno
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import flow.config
import flow.encoding
import flow.stage
from flow.errors import FlowError
from flow.index import INDEX_DIR, MAIN_FILE, StoreIndex
from flow.stage import FlowJob, run_flow
from flow.store import open_store
from flow.tvl1 import OpenCVTVL1
from flow.tvl1_fast import FastTVL1
from flow.verify import verify_store
from flow.video import VideoReader
from p3dbase.atomic import DiskFullError
from p3dbase.errors import P3DError
from tests.builders import deny_as_for_a_user, moving_square, write_video
from tests.builders import write_rawframes as write_tree


def jobs_in(folder: Path) -> list[FlowJob]:
    return [FlowJob(f"Cls/{p.stem}", p) for p in sorted(folder.iterdir())]


def packs(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.pack"))}


@pytest.fixture
def videos(tmp_path):
    folder = tmp_path / "videos"
    write_video(folder / "a.avi", moving_square(7, seed=1))
    write_video(folder / "b.avi", moving_square(6, seed=2, step=1))
    write_video(folder / "c.avi", moving_square(5, seed=3, step=3))
    return folder


def test_a_stopped_forced_rerun_is_finished_by_a_plain_rerun_with_the_new_settings(videos, tmp_path, fast_cfg):
    out, fresh = tmp_path / "flow", tmp_path / "fresh"
    run_flow(jobs_in(videos), out, fast_cfg)
    new = dataclasses.replace(fast_cfg, bound=6.0)
    run_flow(jobs_in(videos)[:1], out, new, force=True)  # --force stopped after its first video
    again = run_flow(jobs_in(videos), out, new)  # no --force: the other two still hold the old bound
    assert (again.computed, again.skipped) == (2, 1)
    run_flow(jobs_in(videos), fresh, new)
    assert packs(out) == packs(fresh)


def test_a_changed_source_video_is_redone(videos, tmp_path, fast_cfg, capsys):
    out, fresh = tmp_path / "flow", tmp_path / "fresh"
    run_flow(jobs_in(videos), out, fast_cfg)
    write_video(videos / "b.avi", moving_square(6, seed=9, step=2))  # swapped for another video
    os.utime(videos / "b.avi", ns=(1, 1_000_000_000))
    again = run_flow(jobs_in(videos), out, fast_cfg)
    assert (again.computed, again.skipped) == (1, 2)
    assert "video Cls/b: " in capsys.readouterr().out
    run_flow(jobs_in(videos), fresh, fast_cfg)
    assert packs(out) == packs(fresh)
    os.utime(videos / "c.avi", ns=(1, 2_000_000_000))  # touched, same bytes: redone all the same (no hash)
    assert run_flow(jobs_in(videos), out, fast_cfg).computed == 1


def test_a_rerun_reads_only_the_index_and_opens_no_pack(videos, tmp_path, fast_cfg, monkeypatch):
    out = tmp_path / "flow"
    run_flow(jobs_in(videos), out, fast_cfg)

    def no_open(*args, **kwargs):
        raise AssertionError("a re-run of a finished store opened a stored video")

    monkeypatch.setattr(type(open_store(out)), "open", no_open)
    again = run_flow(jobs_in(videos), out, fast_cfg)
    assert (again.computed, again.skipped, again.failed) == (0, 3, 0)
    assert again.frames == 0 and sorted(StoreIndex(out).read().entries) == ["Cls/a", "Cls/b", "Cls/c"]


def test_a_damaged_index_line_is_named_and_nothing_is_lost(videos, tmp_path, fast_cfg, capsys):
    out = tmp_path / "flow"
    run_flow(jobs_in(videos), out, fast_cfg)
    main = out / INDEX_DIR / MAIN_FILE
    lines = main.read_bytes().splitlines(keepends=True)
    main.write_bytes(lines[0] + lines[1][:25])  # truncated in the middle of Cls/b's line, Cls/c's gone
    before = packs(out)
    again = run_flow(jobs_in(videos), out, fast_cfg)
    assert f"{main}, line 2: damaged index entry, skipped" in capsys.readouterr().out
    assert (again.computed, again.skipped, again.failed) == (0, 3, 0)  # checked from the packs' headers
    assert packs(out) == before
    assert sorted(StoreIndex(out).read().entries) == ["Cls/a", "Cls/b", "Cls/c"]  # healed
    assert StoreIndex(out).read().problems == []


def test_a_pack_that_disagrees_with_the_index_is_named_and_redone(videos, tmp_path, fast_cfg, capsys):
    out = tmp_path / "flow"
    run_flow(jobs_in(videos), out, fast_cfg)
    want = packs(out)
    shutil.copyfile(out / "Cls" / "a.pack", out / "Cls" / "b.pack")  # a whole, valid pack of another video
    again = run_flow(jobs_in(videos), out, fast_cfg)
    lines = capsys.readouterr().out
    assert "video Cls/b: the index disagrees with" in lines and "checking it" in lines
    assert (again.computed, again.skipped) == (1, 2)
    assert packs(out) == want


def test_a_folder_named_like_a_pack_is_failed_with_one_line_and_left_alone(videos, tmp_path, fast_cfg):
    out = tmp_path / "flow"
    (out / "Cls" / "b.pack").mkdir(parents=True)
    (out / "Cls" / "b.pack" / "notes.txt").write_text("mine")
    summary = run_flow(jobs_in(videos), out, fast_cfg)
    assert (summary.computed, summary.failed) == (2, 1)
    assert summary.failures[0][0] == "Cls/b" and "is a folder where its pack belongs" in summary.failures[0][1]
    assert (out / "Cls" / "b.pack" / "notes.txt").read_text() == "mine"
    assert open_store(out).video_ids() == ["Cls/a", "Cls/c"]


@pytest.mark.parametrize("device, error", [("tpu", FlowError), ("cuda", P3DError)])
def test_a_device_this_machine_lacks_fails_before_any_video(videos, tmp_path, fast_cfg, device, error):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = dataclasses.replace(fast_cfg, backend="torch", device=device)
    with pytest.raises(error, match="device"):
        run_flow(jobs_in(videos), tmp_path / "flow", cfg)
    assert not (tmp_path / "flow").exists()  # refused before the store or any video


def test_every_video_failing_is_an_error(tmp_path, fast_cfg):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "x.avi").write_bytes(b"not a video")
    (tmp_path / "v" / "y.avi").write_bytes(b"")
    with pytest.raises(FlowError, match=r"2 of 2 videos failed \(every video failed\)"):
        run_flow(jobs_in(tmp_path / "v"), tmp_path / "flow", fast_cfg)
    assert (tmp_path / "flow" / "manifest.csv").is_file()


def test_a_video_locked_by_a_stopped_run_is_skipped_with_a_line_naming_the_holder(videos, tmp_path, fast_cfg,
                                                                                 monkeypatch, capsys):
    out = tmp_path / "flow"
    run_flow([], out, fast_cfg)
    monkeypatch.setattr(flow.stage, "LOCK_WAIT_S", 1.0)
    monkeypatch.setattr(flow.stage, "LOCK_REPORT_S", 0.0)
    with open_store(out).lock("Cls/b"):  # another run holds it and never lets go
        summary = run_flow(jobs_in(videos), out, fast_cfg)
    assert (summary.computed, summary.failed) == (2, 1)
    assert "waiting for video Cls/b: locked by another run (process" in capsys.readouterr().out
    assert summary.failures[0][0] == "Cls/b" and "skipped: locked by another run" in summary.failures[0][1]
    assert run_flow(jobs_in(videos), out, fast_cfg).computed == 1  # once it is free


def test_a_one_pixel_video_with_the_opencv_backend_names_the_file(tmp_path, fast_cfg):
    write_video(tmp_path / "v" / "dot.avi", np.full((4, 1, 1, 3), 128, np.uint8))
    write_video(tmp_path / "v" / "ok.avi", moving_square(4))
    summary = run_flow(jobs_in(tmp_path / "v"), tmp_path / "flow", dataclasses.replace(fast_cfg, backend="opencv"))
    (video_id, error), = summary.failures
    assert video_id == "Cls/dot" and "dot.avi" in error and "too small for TV-L1" in error
    assert "Assertion" not in error


def test_the_fast_backend_takes_the_2x2_frames_opencv_takes(fast_cfg):
    frames = np.random.default_rng(0).integers(0, 256, (3, 2, 5), np.uint8)
    assert np.array_equal(FastTVL1(fast_cfg).compute(frames), OpenCVTVL1(fast_cfg).compute(frames))


def test_a_truncated_video_error_names_the_setting_that_accepts_it(tmp_path):
    whole = write_video(tmp_path / "x.avi", moving_square(40)).read_bytes()
    (tmp_path / "t.avi").write_bytes(whole[:9000])
    reader = VideoReader(tmp_path / "t.avi")
    list(reader.chunks(100, 100))
    with pytest.raises(FlowError, match=r"flow\.missing_frames_tolerance, now 0\.02"):
        reader.check_complete(0.02)


def test_a_full_disk_while_finishing_a_pack_leaves_no_temporary_file(videos, tmp_path, fast_cfg, monkeypatch):
    out = tmp_path / "flow"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("flow.store.shutil.copyfileobj", full)
    with pytest.raises(DiskFullError, match="disk full"):
        run_flow(jobs_in(videos), out, fast_cfg)
    assert [p for p in out.rglob("*") if ".tmp-" in p.name] == []
    assert (out / "manifest.csv").is_file()


def test_the_opencv_backend_runs_the_stage_with_opencvs_solver(videos, tmp_path, fast_cfg, monkeypatch):
    calls = []

    class Spy(OpenCVTVL1):
        def compute(self, frames_gray):
            calls.append(len(frames_gray))
            return super().compute(frames_gray)

    monkeypatch.setattr(flow.stage, "OpenCVTVL1", Spy)
    lossless = {k: "raw" for k in ("codec", "flow_codec") if k in {f.name for f in dataclasses.fields(fast_cfg)}}
    cfg = dataclasses.replace(fast_cfg, backend="opencv", batch_pairs=64, **lossless)
    summary = run_flow(jobs_in(videos), tmp_path / "flow", cfg)
    assert (summary.computed, summary.pairs) == (3, 15) and sorted(calls) == [5, 6, 7]
    with open_store(tmp_path / "flow").open("Cls/b") as v:
        rgb = np.concatenate(list(VideoReader(videos / "b.avi").chunks(100, 100)))
        grey = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in rgb])
        expected = flow.encoding.encode(OpenCVTVL1(cfg).compute(grey), cfg.bound)
        assert np.array_equal(v.flow(range(v.num_flows)), expected)


# mmaction layout: completeness on re-run, checksums, what killed runs leave


def test_an_mmaction_video_missing_a_flow_jpeg_is_redone(videos, tmp_path, fast_cfg, capsys):
    out = tmp_path / "flow"
    cfg = dataclasses.replace(fast_cfg, store="mmaction")
    run_flow(jobs_in(videos), out, cfg)
    (out / "Cls" / "a" / "flow_y_00003.jpg").unlink()
    again = run_flow(jobs_in(videos), out, cfg)
    assert (again.computed, again.skipped) == (1, 2)
    assert (out / "Cls" / "a" / "flow_y_00003.jpg").is_file()


def test_a_killed_mmaction_video_is_redone_and_its_temporary_folder_removed(videos, tmp_path, fast_cfg):
    out = tmp_path / "flow"
    cfg = dataclasses.replace(fast_cfg, store="mmaction")
    run_flow(jobs_in(videos), out, cfg)
    want = sorted(os.listdir(out / "Cls" / "c"))
    left = out / "Cls" / ".c.tmp-otherhost-4242"  # a writer on another machine, killed midway
    shutil.copytree(out / "Cls" / "c", left)
    (left / "img_00005.jpg").unlink()
    shutil.rmtree(out / "Cls" / "c")
    again = run_flow(jobs_in(videos), out, cfg)
    assert (again.computed, again.skipped) == (1, 2)
    assert not left.exists() and sorted(os.listdir(out / "Cls" / "c")) == want


def test_verify_finds_a_changed_jpeg_in_an_mmaction_store(videos, tmp_path, fast_cfg):
    out = tmp_path / "flow"
    cfg = dataclasses.replace(fast_cfg, store="mmaction")
    run_flow(jobs_in(videos), out, cfg)
    image = out / "Cls" / "b" / "img_00002.jpg"
    cv2.imwrite(str(image), np.zeros((48, 64, 3), np.uint8))  # a valid JPEG, but not the one written
    report = verify_store(out, jobs=1)
    assert [(v, "CRC32 mismatch" in p) for v, p in report.damaged] == [("Cls/b", True)]
    assert run_flow(jobs_in(videos), out, cfg).computed == 1
    assert verify_store(out, jobs=1).damaged == []


def _store_cannot_be_written(out: Path, monkeypatch) -> None:
    """The store as a read-only share shows it: really (chmod) for a user, through os.access for root,
    who writes anywhere."""
    for path in (out, *out.rglob("*")):
        path.chmod(path.stat().st_mode & 0o555)
    deny_as_for_a_user(monkeypatch, out, os.W_OK)


def test_verify_checks_a_store_it_cannot_write_and_prints_the_result(videos, tmp_path, fast_cfg, monkeypatch,
                                                                      capsys):
    """A store on a read-only share: verify failed after reading every video, writing its report (a
    PermissionError); now it checks all the same, prints the damaged videos and says nothing was recorded."""
    out = tmp_path / "flow"
    cfg = dataclasses.replace(fast_cfg, store="mmaction")
    run_flow(jobs_in(videos), out, cfg)
    cv2.imwrite(str(out / "Cls" / "b" / "img_00002.jpg"), np.zeros((48, 64, 3), np.uint8))
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    _store_cannot_be_written(out, monkeypatch)
    try:
        report = verify_store(out, jobs=1)
        printed = capsys.readouterr().out
        assert [v for v, _ in report.damaged] == ["Cls/b"] and report.report is None
        assert f"verify: {out} cannot be written here: the result is printed only" in printed
        assert "verify: damaged Cls/b: " in printed
        assert "recorded in the store: re-run verify where it can be written" in printed
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before  # nothing written
    finally:
        for path in (out, *out.rglob("*")):
            path.chmod(path.stat().st_mode | 0o200)


def test_flow_on_a_finished_store_it_cannot_write_reports_it_done(videos, tmp_path, fast_cfg, monkeypatch, capsys):
    """A finished store on a read-only share: `flow` (a `make all` re-run) was refused as an output it
    cannot write; now it plans from the index as usual and reports every video done, writing nothing.
    A video not in it is refused in one line naming it: nothing could be computed into the store."""
    out, jobs = tmp_path / "flow", jobs_in(videos)
    run_flow(jobs[:-1], out, fast_cfg)
    before = {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*")}
    _store_cannot_be_written(out, monkeypatch)
    try:
        capsys.readouterr()
        summary = run_flow(jobs[:-1], out, fast_cfg, config_toml="x = 1\n")
        assert (summary.videos, summary.computed, summary.skipped, summary.failed) == (2, 0, 2, 0)
        assert f"flow: {out} is read-only: nothing to compute, nothing written" in capsys.readouterr().out
        with pytest.raises(FlowError, match=rf"the flow store {out} cannot be written .* 1 of the run's 3 videos "
                                            r"are not finished in it \(e.g. Cls/c\)"):
            run_flow(jobs, out, fast_cfg)
        assert {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*")} == before
    finally:
        for path in (out, *out.rglob("*")):
            path.chmod(path.stat().st_mode | 0o200)


# rawframes: nothing outside the root, nothing resized quietly, empty files named


def test_rawframes_links_out_of_the_root_are_refused(tmp_path):
    root, outside = tmp_path / "frames", tmp_path / "elsewhere"
    write_tree(root / "good", 3, 2)
    write_tree(outside / "secret", 3, 2)
    (root / "linked").symlink_to(outside / "secret")
    write_tree(root / "one_link", 3, 2)
    (root / "one_link" / "img_00002.jpg").unlink()
    (root / "one_link" / "img_00002.jpg").symlink_to(outside / "secret" / "img_00002.jpg")
    cfg = dataclasses.replace(flow.config.FlowConfig(source="rawframes", size="", jobs=1), rawframes_root=str(root))
    summary = run_flow([FlowJob(n, root / n) for n in ("good", "linked", "one_link")], tmp_path / "store", cfg)
    errors = dict(summary.failures)
    assert summary.computed == 1 and sorted(errors) == ["linked", "one_link"]
    assert "outside flow.rawframes_root" in errors["linked"]
    assert "img_00002.jpg: a symbolic link to" in errors["one_link"]


def test_rawframes_an_empty_jpeg_and_an_odd_sized_frame_are_named(tmp_path):
    root = tmp_path / "frames"
    write_tree(root / "empty", 3, 2)
    (root / "empty" / "img_00002.jpg").write_bytes(b"")
    write_tree(root / "odd", 3, 2)
    cv2.imwrite(str(root / "odd" / "img_00003.jpg"), np.zeros((20, 30, 3), np.uint8))
    write_tree(root / "good", 3, 2)
    cfg = flow.config.FlowConfig(source="rawframes", size="", jobs=1)
    summary = run_flow([FlowJob(n, root / n) for n in ("empty", "good", "odd")], tmp_path / "store", cfg)
    errors = dict(summary.failures) if summary.failed == 2 else {}
    assert "empty/img_00002.jpg: empty file (0 bytes)" in errors.get("empty", "")
    assert "odd/img_00003.jpg is 30x20 px, but the video's first frame is 32x24" in errors.get("odd", "")
