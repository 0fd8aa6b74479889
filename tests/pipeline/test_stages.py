"""The whole pipeline through the CLI on tiny SynthActions: synth -> flow -> train x2 -> eval."""
import csv
import json
from pathlib import Path

import pytest

from pipeline.cli import main
from tests.builders import REPO, TINY


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


def test_a_refused_command_leaves_config_toml_alone(work, capsys):
    """config.toml says how the output next to it was made: a refused run must not overwrite it."""
    flow_config = (work / "flow" / "config.toml").read_bytes()
    assert run(["flow"], work, ["flow.warps=3"]) == 2  # the store holds flow of other settings
    assert "store.json" in capsys.readouterr().err
    assert (work / "flow" / "config.toml").read_bytes() == flow_config
    root = trained(work)
    train_config = root / "train" / "rgb" / "split1" / "config.toml"
    before = train_config.read_bytes()
    assert run(["train", "--stream", "rgb"], work, ["train.lr=0.01"]) == 2  # a finished run of lr 0.05
    assert "train.lr: 0.05 in the checkpoint, 0.01 now" in capsys.readouterr().err
    assert train_config.read_bytes() == before
    if (root / "eval" / "config.toml").is_file():
        eval_config = (root / "eval" / "config.toml").read_bytes()
        flow_stream = root / "train" / "flow" / "split1" / "last.pt"
        assert run(["eval", "--rgb", str(flow_stream)], work, ["eval.clips=3"]) == 2
        assert "is a flow stream" in capsys.readouterr().err
        assert (root / "eval" / "config.toml").read_bytes() == eval_config


def test_eval_without_trained_streams_names_what_to_run(tmp_path, work, capsys):
    fresh = tmp_path / "w"
    fresh.mkdir()
    for part in ("flow", "synth"):
        (fresh / part).symlink_to(work / part)
    assert run(["eval"], fresh) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "make train-" in err
    # A named run: `make train-rgb` trains the default run, not this one; the hint says to train with
    # this eval's --config, --run and --set.
    assert run(["eval", "--run", "nope"], fresh) == 2
    err = capsys.readouterr().err
    assert "no checkpoint for the rgb stream at " in err and "nope" in err
    assert "`python -m pipeline train --stream rgb` with this eval's --config, --run and --set" in err
    # Three splits with split 1 alone trained: refused before a report of any split is written (it wrote
    # eval/split1/ and then stopped), saying how to train the other splits.
    assert run(["eval", "--run", "nope"], fresh, ['dataset.split="all"']) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no finished rgb stream for split 1") and "6 of the 6 the three splits need" in err
    assert 'ARGS=\'--set dataset.split="all"\'' in err and err.count("\n") == 1
    assert not (fresh / "runs" / "nope" / "eval" / "split1").exists()


def test_synth_stage_refuses_another_format(tmp_path, capsys):
    assert run(["synth"], tmp_path, ["dataset.format=ucf101", "dataset.annotations=x"]) == 2
    assert "dataset.format" in capsys.readouterr().err


def trained(work: Path, run_name: str = "", extra: list[str] = ()) -> Path:
    """Train both streams (once per run name) and return the run's folder."""
    root = work / "runs" / run_name if run_name else work
    for stream in ("rgb", "flow"):
        if not (root / "train" / stream / "split1" / "last.pt").is_file():
            args = ["train", "--stream", stream] + (["--run", run_name] if run_name else [])
            assert run(args, work, extra) == 0
    return root


def test_train_on_a_finished_run_in_a_folder_this_user_cannot_write_reports_it(work, capsys, monkeypatch):
    """A finished run on a read-only share: `train` refused it ("cannot be written: no permission"); it is
    trained, and `train` now says so. Root writes anything, so the denial is made as a user sees it."""
    import os

    from streams import train as streams_train
    from tests.builders import deny_as_for_a_user

    folder = trained(work) / "train" / "rgb" / "split1"
    deny_as_for_a_user(monkeypatch, folder, os.W_OK)

    def unwritable(path):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(streams_train, "try_lock", unwritable)
    capsys.readouterr()
    assert run(["train", "--stream", "rgb"], work) == 0
    assert f"rgb stream: already trained, {folder / 'last.pt'}" in capsys.readouterr().out


def test_a_test_video_gone_from_the_dataset_root_is_excluded_not_dropped(work, tmp_path, capsys):
    """A test video the split lists but that is no longer under dataset.root was only a warning: the test
    set shrank and the report's `excluded` said 0. It is counted and listed in excluded.csv, with why."""
    root = trained(work)
    test_list = (work / "synth" / "annotations" / "testlist01.txt").read_text().split()
    gone = work / "synth" / "videos" / test_list[0]
    hidden = tmp_path / gone.name
    gone.rename(hidden)
    try:
        assert run(["eval", "--rgb", str(root / "train/rgb/split1"), "--out", str(tmp_path / "eval")], work) == 0
    finally:
        hidden.rename(gone)
    results = list(csv.DictReader(open(tmp_path / "eval" / "results.csv")))
    assert {(r["videos"], r["excluded"]) for r in results} == {("7", "1")}
    excluded = list(csv.DictReader(open(tmp_path / "eval" / "excluded.csv")))
    assert [r["video_id"] for r in excluded] == [test_list[0].rsplit(".", 1)[0]]
    assert "annotations but not under" in excluded[0]["reason"]


def test_a_named_run_shares_the_flow_and_evaluates_one_stream(work, capsys):
    from streams.checkpoint import file_sha256

    root = work / "runs" / "lr2"
    assert run(["train", "--stream", "rgb", "--run", "lr2"], work, ["train.lr=0.02"]) == 0
    ckpt = root / "train" / "rgb" / "split1" / "last.pt"
    assert ckpt.is_file() and not (root / "flow").exists()  # the store of work/flow served
    assert not any("lr = 0.02" in p.read_text() for p in (work / "train").rglob("config.toml"))  # default run untouched
    # Single-stream eval of that run: the stream's rows, no fusion or two-stream rows.
    assert run(["eval", "--run", "lr2", "--rgb", str(ckpt.parent)], work) == 0
    results = list(csv.DictReader(open(root / "eval" / "results.csv")))
    assert [r["method"] for r in results] == ["rgb", "svm_rgb"]
    text = (root / "eval" / "results.md").read_text()
    assert f"Scored rgb: {ckpt} (sha256 {file_sha256(ckpt)[:12]}" in text
    # A bad run name is one line, exit 2.
    capsys.readouterr()
    assert run(["eval", "--run", "../x"], work) == 2
    assert "run: must be a plain folder name" in capsys.readouterr().err


def test_held_out_videos_the_streams_were_trained_on_do_not_choose(work, capsys):
    """Streams trained without held-out groups, evaluated with train.val_fraction: the fusion rule and C
    were chosen on videos the networks fitted, and the report called them held out. Refused now, naming
    the stream; with --allow-trained the choice is made and the report says what it was made on."""
    root = trained(work)
    capsys.readouterr()
    assert run(["eval", "--out", str(work / "eval-lax")], work, ["train.val_fraction=0.4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "held-out videos (e.g. " in err and \
        f"are in the training list of the rgb stream {root / 'train' / 'rgb' / 'split1' / 'last.pt'}" in err
    assert "train.val_groups / val_fraction" in err and "--allow-trained" in err and err.count("\n") == 1
    assert not (work / "eval-lax" / "results.csv").exists()
    assert run(["eval", "--out", str(work / "eval-lax"), "--allow-trained"], work, ["train.val_fraction=0.4"]) == 0
    text = (work / "eval-lax" / "results.md").read_text()
    assert "Not held out: " in text and "the choices made on them anyway (--allow-trained)" in text


def test_held_out_groups_choose_the_fusion_and_svm(work):
    from pipeline.config import load_config
    from pipeline.datasets import read_dataset
    from pipeline.stages import held_out

    sets = [f"work_dir={work}", f"dataset.root={work / 'synth'}", *TINY, "train.val_fraction=0.4"]
    cfg = load_config(REPO / "configs" / "synth.toml", sets)
    dataset = read_dataset(cfg.dataset)
    held, note = held_out(cfg, dataset)
    groups = {v.group for v in dataset.train()}
    chosen = {v.group for v in dataset.train() if v.video_id in held}
    assert len(chosen) == 1 and len(groups) == 2  # round(0.4 x 2) groups of the training split
    assert held == {v.video_id for v in dataset.train() if v.group in chosen}  # whole groups, training split only
    assert held_out(cfg, dataset) == (held, note)  # seeded: the same every time
    root = trained(work, "honest", ["train.val_fraction=0.4"])
    from streams.checkpoint import read_checkpoint

    for stream in ("rgb", "flow"):  # the held-out videos were not trained on
        state = read_checkpoint(root / "train" / stream / "split1" / "last.pt").state
        trained_on = set(state["training_set"]["videos"])
        assert trained_on and not trained_on & held
        assert trained_on | held == {v.video_id for v in dataset.train()}
    assert run(["eval", "--run", "honest"], work, ["train.val_fraction=0.4"]) == 0
    text = (root / "eval" / "results.md").read_text()
    assert f"chosen on the held-out videos ({len(held)} videos of {note})" in text  # the videos used, counted
    rows = {r["method"]: r for r in csv.DictReader(open(root / "eval" / "results.csv"))}
    assert f"chosen on {len(held)} held-out videos" in rows["fusion"]["details"]
    assert f"chosen on {len(held)} held-out videos" in rows["svm_two_stream"]["details"]
    assert {"fusion_raw", "fusion_softmax"} <= set(rows)
    for name in ("confusion.png", "per_class.png", "fusion_weight.png"):
        assert (root / "eval" / name).is_file()


def test_unknown_held_out_group_is_a_clear_error(work, capsys):
    assert run(["train", "--stream", "rgb", "--run", "bad"], work, ['train.val_groups=["g99"]']) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.val_groups: g99 not among the groups")


def test_show_flow_writes_a_contact_sheet(work, capsys):
    from flow.store import open_store

    video_id = open_store(work / "flow").video_ids()[0]
    out = work / "sheet.png"
    assert run(["show-flow", video_id, "--out", str(out), "--frames", "4"], work) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    said = capsys.readouterr().out
    assert "1.25 px/frame = full saturation (store bound 5 px)" in said  # synth.toml: bound 5, a quarter
    assert run(["show-flow", "no/such_video"], work) == 2
    assert "not in the store" in capsys.readouterr().err
    # An existing PNG is refused unless --force, as every output is (it was replaced without a word).
    out.write_bytes(b"mine")
    assert run(["show-flow", video_id, "--out", str(out)], work) == 2
    assert f"would overwrite {out}: pass --force to replace" in capsys.readouterr().err
    assert out.read_bytes() == b"mine"
    assert run(["show-flow", video_id, "--out", str(out), "--force"], work) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The default name: the id with '/' as '__', under work_dir/show-flow (as --help says).
    assert run(["show-flow", video_id], work) == 0
    assert (work / "show-flow" / f"{video_id.replace('/', '__')}.png").is_file()


def test_held_out_groups_by_name_and_their_errors():
    from pipeline.config import Config
    from pipeline.datasets import Dataset, VideoRecord
    from pipeline.errors import PipelineError
    from pipeline.stages import held_out
    from streams.config import TrainConfig

    def record(video_id, split, group):
        return VideoRecord(video_id, Path(video_id), 0, (0,), "A", split, group)

    videos = [record("A/g1_c1", "train", "g1"), record("A/g1_c2", "train", "g1"), record("A/g2_c1", "train", "g2"),
              record("A/g3_c1", "train", "g3"), record("A/g3_c9", "test", "g3"), record("A/x", "train", None)]
    dataset = Dataset("ucf101", Path("."), ["A"], videos, "1")
    assert held_out(Config(train=TrainConfig()), dataset) == (set(), "")
    held, note = held_out(Config(train=TrainConfig(val_groups=["g3", "g1"])), dataset)
    assert held == {"A/g1_c1", "A/g1_c2", "A/g3_c1"}  # the test video of g3 stays a test video
    assert note == "2 of the training split's 4 groups: g1, g3"  # "A/x" is its own group
    with pytest.raises(PipelineError, match=r"train.val_groups: g7, g8 not among the groups of split 1"):
        held_out(Config(train=TrainConfig(val_groups=["g7", "g1", "g8"])), dataset)
    with pytest.raises(PipelineError, match="would hold out all 4 groups"):
        held_out(Config(train=TrainConfig(val_groups=["g1", "g2", "g3", "A/x"])), dataset)
    group_of = {v.video_id: v.group or v.video_id for v in videos if v.split == "train"}
    picked = [frozenset(group_of[v] for v in held_out(Config(train=TrainConfig(val_fraction=0.5, seed=s)), dataset)[0])
              for s in range(6)]
    assert all(len(groups) == 2 for groups in picked)  # round(0.5 x 4) whole groups
    assert len(set(picked)) > 1  # the seed picks which


def test_split_all_trains_and_evaluates_each_split_and_averages(work, capsys):
    """dataset.split = "all" (the three-split protocol): a model per split in train/<stream>/split<k>, a
    report per split in eval/split<k>, and eval/results.csv their mean; one --rgb for three splits is
    refused."""
    every = ['dataset.split="all"']
    root = trained(work, "all", every)
    for stream in ("rgb", "flow"):
        for k in (1, 2, 3):
            ckpt = root / "train" / stream / f"split{k}" / "last.pt"
            assert ckpt.is_file() and (ckpt.parent / "config.toml").is_file()
    assert run(["eval", "--run", "all"], work) == 0  # split 1 alone first, into the same folder
    assert (root / "eval" / "scores.npz").is_file() and (root / "eval" / "features").is_dir()
    assert run(["eval", "--run", "all"], work, every) == 0
    # The average is one report like any other: the split-1 report's files went with it (they stayed,
    # and the old report.json failed its own check), report.json lists it, config.toml too.
    top = {p.name for p in (root / "eval").iterdir() if p.is_file()}
    assert top == {"results.csv", "results.md", "report_inputs.json", "report.html", "report.json", "config.toml",
                   "eval.log"}
    from streams.checkpoint import file_sha256

    listing = json.loads((root / "eval" / "report.json").read_text())["files"]
    assert listing == {name: file_sha256(root / "eval" / name) for name in top - {"eval.log", "report.json"}}
    assert 'split = "all"' in (root / "eval" / "config.toml").read_text()
    assert not (root / "eval" / "features").exists()  # split 1's: each split's are in its split<k>/
    assert (root / "eval" / "split2" / "features" / "rgb.npz").is_file()
    per_split = [{r["method"]: r for r in csv.DictReader(open(root / "eval" / f"split{k}" / "results.csv"))}
                 for k in (1, 2, 3)]
    mean = {r["method"]: r for r in csv.DictReader(open(root / "eval" / "results.csv"))}
    assert set(mean) == set(per_split[0]) >= {"rgb", "flow", "fusion", "svm_two_stream"}
    for method, row in mean.items():
        splits = [float(s[method]["video_hit@1"]) for s in per_split]
        assert float(row["video_hit@1"]) == pytest.approx(sum(splits) / 3, abs=1e-4)  # results.csv: 4 decimals
        assert int(row["videos"]) == sum(int(s[method]["videos"]) for s in per_split)
    capsys.readouterr()
    rgb = root / "train" / "rgb" / "split1"
    assert run(["eval", "--run", "all", "--rgb", str(rgb)], work, every) == 2
    assert "one checkpoint per stream, but dataset.split = \"all\" evaluates three splits" in capsys.readouterr().err


def test_a_checkpoint_is_not_scored_on_videos_it_was_trained_on(work, capsys):
    """A split-1 checkpoint evaluated on split 2 scored 83% on test videos that were in its training list:
    refused, naming how many; with --allow-trained it is scored and the report says so."""
    root = trained(work)
    rgb = root / "train" / "rgb" / "split1"
    capsys.readouterr()
    assert run(["eval", "--run", "other-split", "--rgb", str(rgb)], work, ["dataset.split=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "test videos (e.g. " in err and "are in the training list of the rgb " \
        "stream" in err and "--allow-trained" in err
    assert not (work / "runs" / "other-split" / "eval" / "results.csv").exists()
    assert run(["eval", "--run", "other-split", "--rgb", str(rgb), "--allow-trained"], work, ["dataset.split=2"]) == 0
    text = (work / "runs" / "other-split" / "eval" / "results.md").read_text()
    assert "Not a test: " in text and "scored anyway (--allow-trained)" in text


def test_classes_without_a_training_video_are_named(capsys):
    """A class whose training videos all failed in `make flow` (or were held out) trained in silence:
    the network can never predict it."""
    from pipeline.datasets import Dataset
    from pipeline.stages import _unseen_classes

    dataset = Dataset("ucf101", Path("."), ["Archery", "Bowling", "Diving", "Surfing"], [], "1")
    _unseen_classes(dataset, [("a", 0), ("b", (0, 2))])
    assert capsys.readouterr().out == ("train: warning: 2 of the 4 classes have no training video (e.g. Bowling, "
                                       "Surfing): the network can never predict them\n")
    _unseen_classes(dataset, [("a", 0), ("b", 1), ("c", (2, 3))])
    assert capsys.readouterr().out == ""
