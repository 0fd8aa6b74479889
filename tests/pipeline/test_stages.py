"""The whole pipeline through the CLI on tiny SynthActions: synth -> flow -> train x2 -> eval."""
import csv
from pathlib import Path

import pytest

from pipeline.cli import main

TINY = [
    "synth.appearances=[\"red\", \"blue\"]", "synth.motions=[\"up\", \"rotate\"]", "synth.groups=3",
    "synth.clips_per_group=2", "synth.frames=12", "synth.size=32",
    "flow.warps=1", "flow.outer_iterations=2", "flow.jobs=1",
    "train.clip_len=4", "train.resize=[32, 32]", "train.crop=28", "train.batch_size=4", "train.epochs=1",
    "train.workers=0", "train.progress=false", "train.checkpoint_every=1",
    "eval.clips=2", "eval.svm_clips=2", "eval.svm_folds=2", "eval.jobs=1",
]
REPO = Path(__file__).resolve().parents[2]


def run(stage: list[str], work: Path, extra: list[str] = ()) -> int:
    sets = [f"work_dir={work}", f"dataset.root={work / 'synth'}", *TINY, *extra]
    args = [*stage, "--config", str(REPO / "configs" / "synth.toml")]
    for item in sets:
        args += ["--set", item]
    return main(args)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("work")
    assert run(["synth"], work) == 0
    assert run(["flow"], work) == 0
    return work


def test_flow_stage_covers_every_video_and_writes_its_config(work):
    rows = list(csv.DictReader(open(work / "flow" / "manifest.csv")))
    assert len(rows) == 24 and {r["status"] for r in rows} == {"done"}
    assert (work / "flow" / "config.toml").is_file()
    assert run(["flow"], work) == 0  # a re-run finds everything done


def test_train_and_eval_write_their_outputs(work, capsys):
    for stream in ("rgb", "flow"):
        assert run(["train", "--stream", stream], work) == 0
        out = work / "train" / stream / "split1"
        assert (out / "last.pt").is_file() and (out / "config.toml").is_file()
    assert run(["eval"], work) == 0
    results = list(csv.DictReader(open(work / "eval" / "results.csv")))
    methods = {r["method"] for r in results}
    assert {"rgb", "flow", "fusion", "svm_two_stream"} <= methods
    assert all(r["videos"] == "8" for r in results)  # 2 test groups x 2 clips x... of split 1
    assert (work / "eval" / "results.md").is_file() and (work / "eval" / "confusion.png").is_file()


def test_eval_without_trained_streams_names_what_to_run(tmp_path, work, capsys):
    fresh = tmp_path / "w"
    fresh.mkdir()
    for part in ("flow", "synth"):
        (fresh / part).symlink_to(work / part)
    assert run(["eval"], fresh) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "make train-" in err


def test_synth_stage_refuses_another_format(tmp_path, capsys):
    assert run(["synth"], tmp_path, ["dataset.format=ucf101", "dataset.annotations=x"]) == 2
    assert "dataset.format" in capsys.readouterr().err
