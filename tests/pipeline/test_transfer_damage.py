"""The transfer stage on damaged benchmarks and the transfer report as one set of files.

A benchmark whose scored videos are all broken on one side of its protocol (every ActivityNet validation
video, the test group of a split, the clips of a View-2 split) stopped the whole run with exit status 2,
before the other benchmarks were scored and with the last run's report left in place; the transfer report's
files were replaced one by one, so a kill between them left files of two runs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fusion.errors import FusionError
from fusion.transfer_stage import Benchmark, TransferVideo, _check_benchmark
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.datasets.aslan import read_view2
from pipeline.stages import transfer_stage
from pipeline.synth import companions, generate
from pipeline.synth.config import SynthConfig
from pipeline.transfer import report as transfer_report
from streams.checkpoint import file_sha256
from tests.pipeline.test_transfer import FAST, tiny_companions, tiny_transfer  # noqa: F401 (fixtures)


def _sets(*items: str) -> list[str]:
    return sum((["--set", s] for s in items), [])


def test_a_benchmark_with_nothing_to_score_is_a_note_and_the_others_are_scored(
        tiny_transfer, tmp_path, capsys):  # noqa: F811 (the fixture imported above)
    # SynthActions with 4 groups: split 1 tests g01 alone, splits 2 and 3 train on two groups each.
    generate(SynthConfig.tiny(frames=6, groups=4), tmp_path / "synth4")
    for video in (tmp_path / "synth4/videos").rglob("*_g01_*.avi"):
        video.write_bytes(b"garbage")  # split 1's test videos
    data = tmp_path / "data"
    companions.generate_companions(data)
    database = json.loads((data / "activitynet/activity_net.json").read_text())["database"]
    for video_id, entry in database.items():
        if entry["subset"] == "validation":
            (data / f"activitynet/videos/v_{video_id}.avi").write_bytes(b"garbage")
    for clip in np.unique(read_view2(data / "aslan/Views/View2.mat")[:, :2, 0]):
        (data / f"aslan/ASLAN_AVI/{int(clip):04d}.avi").write_bytes(b"junk")  # View-2 split 1's clips
    out = tmp_path / "work/transfer"
    out.mkdir(parents=True)
    for name in ("results.csv", "report.html"):
        (out / name).write_text("the last run's\n")
    code = main(["transfer", "--config", str(tiny_transfer), *_sets(*FAST, "transfer.flow=",
                                                                     f"benchmark.synth.root={tmp_path / 'synth4'}")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = pd.read_csv(out / "results.csv")
    assert list(rows["benchmark"]) == ["synth", "aslan", "scenes"]  # activitynet: no row; the others scored
    synth = rows.iloc[0]
    assert synth["videos"] == 16 and synth["excluded"] == 8  # splits 2 and 3's test videos; g01 left out
    assert "not scored: split 1: no test video with features" in synth["details"]
    assert "split1" not in synth["details"].split(";")[0]
    aslan = rows.iloc[1]
    assert aslan["videos"] == 36 and "not scored: View-2 split 1: no pair with features for both clips" \
        in aslan["details"]
    md = (out / "results.md").read_text(encoding="utf-8")
    for note in ("- activitynet: no rgb row: train_val: 8 training and 0 validation videos with rgb "
                 "features; it needs both",
                 "- synth / rgb: not scored: split 1: no test video with features; its figures are those of the "
                 "others",
                 "- aslan / rgb: not scored: View-2 split 1: no pair with features for both clips"):
        assert note in md
    excluded = pd.read_csv(out / "excluded.csv")
    assert (excluded["benchmark"] == "activitynet").sum() == 6 and (excluded["benchmark"] == "synth").sum() == 8
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "activitynet: no rgb row" in page  # the page is this run's, not the last one's
    listing = json.loads((out / "report.json").read_text())["files"]
    assert sorted(listing) == sorted(["config.toml", "excluded.csv", "report.html", "report_inputs.json",
                                      "results.csv", "results.md", "results.png"])


def test_split_lists_sharing_a_video_and_view2_splits_sharing_a_class_name_the_benchmark_before_any_work():
    video = [TransferVideo(f"v{i}", Path(f"v{i}.avi"), (i % 2,)) for i in range(4)]
    bench = Benchmark("ucf", "three_split", Path("."), ["a", "b"], video, splits=[(["v0", "v1"], ["v1", "v2"])])
    with pytest.raises(FusionError, match=r"^benchmark.ucf: split 1 lists 1 video\(s\) both for training and for "
                                          r"scoring, e.g. v1$"):
        _check_benchmark(bench)
    pairs = np.zeros((2, 5, 2), dtype=np.int64)
    pairs[:, :, 0] = [[1, 2, 1, 7, 7], [1, 3, 0, 7, 8]]
    pairs[:, :, 1] = [[4, 5, 1, 7, 7], [4, 6, 0, 7, 9]]
    clips = [TransferVideo(f"{i:04d}", Path(f"{i:04d}.avi"), (i % 2,)) for i in range(1, 7)]
    with pytest.raises(FusionError, match=r"^benchmark.aslan: View-2 pairs: splits 1 and 2 share action class 7"):
        _check_benchmark(Benchmark("aslan", "aslan_view2", Path("."), ["a", "b"], clips, pairs=pairs))


def test_the_transfer_report_files_are_replaced_together(
        tiny_transfer, tmp_path, monkeypatch):  # noqa: F811 (the fixture imported above)
    """A kill while the report is written leaves the last one whole: excluded.csv was written after the
    others, and each file replaced the last run's as soon as it was written."""
    cfg = load_config(tiny_transfer, [*FAST, 'transfer.benchmarks=["scenes"]', "transfer.flow="])
    transfer_stage(cfg)
    out = tmp_path / "work/transfer"
    report = ["config.toml", "excluded.csv", "report.html", "report_inputs.json", "results.csv", "results.md",
              "results.png"]
    before = {name: (out / name).read_bytes() for name in report}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies half-way through the files

    (Path(cfg.transfer.companions) / "scenes/CyanZoomOut/broken.avi").write_bytes(b"not a video")
    with monkeypatch.context() as patch:
        patch.setattr(transfer_report, "write_chart", killed)
        with pytest.raises(KeyboardInterrupt):
            transfer_stage(cfg)
    assert {name: (out / name).read_bytes() for name in report} == before  # nothing of the killed run
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # nor its staging folder
    transfer_stage(cfg)
    assert "broken.avi" in (out / "excluded.csv").read_text() and (out / "results.csv").read_bytes() != \
        before["results.csv"]
    listing = json.loads((out / "report.json").read_text())["files"]  # the set, with each file's SHA-256
    assert sorted(listing) == report and all(file_sha256(out / name) == sha for name, sha in listing.items())
    # `report` rewrites the page in place: report.json's listing follows it
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["files"]["report.html"] == file_sha256(out / "report.html")


def test_a_second_transfer_on_one_report_folder_is_turned_away(
        tiny_transfer, tmp_path, capsys):  # noqa: F811 (the fixture imported above)
    """Two transfer runs at once both computed everything, then the second failed on the first one's
    staged report ("cannot read it ... re-run make transfer"): it is refused at once, naming the holder."""
    from p3dbase.lock import try_lock

    out = tmp_path / "work/transfer"
    out.mkdir(parents=True)
    with try_lock(out.parent / ".transfer.lock") as holder:
        assert holder is None
        assert main(["transfer", "--config", str(tiny_transfer), *_sets(*FAST)]) == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # after the bars
    assert error.startswith(f"error: {out} is being written by another transfer run (pid ")
    assert not (out / "results.csv").exists()


def test_a_given_flow_store_made_from_other_files_gives_those_videos_no_flow(tmp_path):
    """`flow_store` pointing at a store of the same ids made from other files (two videos' contents
    swapped): their flow was scored as theirs and two_stream paired RGB with another video's flow."""
    from flow.config import FlowConfig
    from flow.stage import FlowJob, run_flow
    from flow.store import open_store
    from fusion.transfer_stage import TransferVideo, _other_sources
    from tests.builders import moving_square, write_video

    folder = tmp_path / "videos"
    for k, (name, frames) in enumerate((("a", 6), ("b", 9), ("c", 6))):
        write_video(folder / f"{name}.avi", moving_square(frames, seed=k))
    fast = FlowConfig(size="", jobs=1, nscales=2, warps=1, inner_iterations=5, outer_iterations=2,
                      median_filtering=1, batch_pairs=4)
    run_flow([FlowJob(f"C/{n}", folder / f"{n}.avi") for n in "abc"], tmp_path / "flow", fast)
    store = open_store(tmp_path / "flow")
    videos = [TransferVideo(f"C/{n}", folder / f"{n}.avi", (0,), None) for n in "abc"]
    assert _other_sources(store, videos) == {}  # the files it was made from
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    for mine, theirs in (("a", "b"), ("b", "a"), ("c", "c")):
        (swapped / f"{mine}.avi").write_bytes((folder / f"{theirs}.avi").read_bytes())
    found = _other_sources(store, [TransferVideo(f"C/{n}", swapped / f"{n}.avi", (0,), None) for n in "abc"])
    assert sorted(found) == ["C/a", "C/b"]  # c is the same file, copied
    size_a, size_b = ((folder / f"{n}.avi").stat().st_size for n in "ab")
    assert found["C/a"] == (f"its flow in {store.root} was made from a file of {size_a} bytes, but "
                            f"{swapped / 'a.avi'} has {size_b}: another video's flow?")
