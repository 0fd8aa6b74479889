"""eval's saved features (features/<stream>.npz) belong to the report beside them, whatever stopped the
last run; svm_from_features reads a hand-edited features file as one line naming the file and the key."""
import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flow.store import open_store
from fusion import svm
from fusion.config import EvalConfig
from fusion.errors import FusionError
from fusion.stage import EvalJob, run_eval, svm_from_features
from streams.checkpoint import file_sha256

from .conftest import CLASSES

CFG = EvalConfig(clips=1, crops="center", batch_views=8, svm_clips=2, svm_cs=[0.1, 10.0], svm_folds=3, jobs=1)


def evaluate(tiny_store, checkpoints, out: Path, protocol: str, cfg: EvalConfig = CFG) -> pd.DataFrame:
    """run_eval, with a config.toml that names the run's protocol."""
    store, train, test = tiny_store
    return run_eval(EvalJob(open_store(store), checkpoints, train, test, CLASSES, protocol=protocol), cfg, out,
                    config_toml=f"# {protocol}\n")


@pytest.fixture(scope="module")
def reported(tiny_store, tiny_checkpoints, tmp_path_factory):
    """(results table, report folder) of a two-stream evaluation with its SVMs; the network outputs
    cached in it, so that copies of it evaluate again without the network."""
    out = tmp_path_factory.mktemp("features") / "eval"
    return evaluate(tiny_store, tiny_checkpoints, out, "first run"), out


def svm_rows(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["method"].str.startswith("svm_")].reset_index(drop=True)


def report_rows(out: Path) -> pd.DataFrame:
    """The SVM rows of the report's results.csv, as svm_from_features gives them."""
    return svm_rows(pd.read_csv(out / "results.csv", keep_default_na=False, na_values=[""]))


def features_match_the_report(out: Path, cfg: EvalConfig = CFG) -> None:
    """The report in `out` is whole (report.json's listing holds) and its features are its own: they
    are of its run and give its SVM rows (evaluated with `cfg`)."""
    listing = json.loads((out / "report.json").read_text())["files"]
    assert {name: file_sha256(out / name) for name in listing} == listing
    protocol = pd.read_csv(out / "results.csv")["protocol"].iloc[0]
    # config.toml moves in with the report: written after it, a kill between left new settings beside it
    assert "config.toml" in listing and (out / "config.toml").read_text() == f"# {protocol}\n"
    # report.json vouches for the features too, by their bytes
    assert sorted(n for n in listing if n.startswith("features/")) == sorted(
        f"features/{p.name}" for p in (out / "features").iterdir())
    for path in sorted((out / "features").iterdir()):
        with np.load(path) as data:
            assert json.loads(str(data["meta"]))["protocol"] == protocol, path.name
    pd.testing.assert_frame_equal(svm_from_features(out / "features", cfg), report_rows(out), check_exact=False,
                                  atol=1e-3)


def test_a_run_stopped_after_its_features_leaves_the_old_reports(reported, tiny_store, tiny_checkpoints, tmp_path,
                                                                  monkeypatch):
    """The features were saved into the report folder before the SVMs ran and outside the staged report: a
    run refused or killed after that left its own features beside the old report, and svm_from_features
    on them no longer gave the report's SVM rows."""
    _, first = reported
    out = tmp_path / "eval"
    shutil.copytree(first, out)
    before = {p.name: p.read_bytes() for p in (out / "features").iterdir()}
    settings = (out / "config.toml").read_bytes()

    def refused(*args, **kwargs):
        raise FusionError("refused")

    monkeypatch.setattr(svm, "fit_svm", refused)
    with pytest.raises(FusionError, match="refused"):
        evaluate(tiny_store, tiny_checkpoints, out, "another run", dataclasses.replace(CFG, svm_cs=[1.0]))
    assert {p.name: p.read_bytes() for p in (out / "features").iterdir()} == before
    assert (out / "config.toml").read_bytes() == settings
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staged folder left behind
    monkeypatch.undo()
    features_match_the_report(out)


def test_a_kill_anywhere_in_the_commit_never_leaves_a_report_with_other_features(reported, tiny_store,
                                                                                 tiny_checkpoints, tmp_path,
                                                                                 monkeypatch):
    """A kill at each rename that puts a file or folder into the report folder (or its features/), one
    run after another: report.json, where it stands, vouches for a report whose features are its own;
    without it the report is incomplete, and the next run repairs it."""
    _, first = reported
    out = tmp_path / "eval"
    shutil.copytree(first, out)
    rgb = {"rgb": tiny_checkpoints["rgb"]}  # one stream, one C: the cheapest report with features
    cheap = dataclasses.replace(CFG, svm_cs=[1.0])
    real = {name: getattr(os, name) for name in ("replace", "rename")}
    point = {"at": 0, "seen": 0}

    def renamer(name):
        def rename(src, dst, *args, **kwargs):
            if Path(dst).parent in (out, out / "features"):
                point["seen"] += 1
                if point["seen"] > point["at"]:
                    raise KeyboardInterrupt
            return real[name](src, dst, *args, **kwargs)
        return rename

    for name in real:
        monkeypatch.setattr(os, name, renamer(name))
    killed = 0
    while True:
        point["seen"] = 0
        try:
            evaluate(tiny_store, rgb, out, f"run {point['at']}", cheap)
        except KeyboardInterrupt:
            killed += 1
            if (out / "report.json").exists():  # a report whole: the first run's (killed before the moves), or a run's
                first_run = pd.read_csv(out / "results.csv")["protocol"].iloc[0] == pd.read_csv(
                    first / "results.csv")["protocol"].iloc[0]
                features_match_the_report(out, CFG if first_run else cheap)
            point["at"] += 1
            continue
        break
    assert killed > 10  # the features' swap, the report's files, report.json
    features_match_the_report(out, cheap)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # what the killed runs left: removed
    assert pd.read_csv(out / "results.csv")["protocol"].iloc[0] == f"run {point['at']}"


def test_the_features_are_replaced_as_a_whole(reported, tiny_store, tiny_checkpoints, tmp_path):
    """A stream the new run lacks kept its old features/flow.npz: svm_from_features then read the old
    run's flow beside the new run's rgb and gave svm_flow and svm_two_stream rows the report has not."""
    _, first = reported
    out = tmp_path / "eval"
    shutil.copytree(first, out)
    table = evaluate(tiny_store, {"rgb": tiny_checkpoints["rgb"]}, out, "rgb only")
    assert sorted(p.name for p in (out / "features").iterdir()) == ["rgb.npz"]
    assert list(svm_rows(table)["method"]) == ["svm_rgb"]
    features_match_the_report(out)
    # Without the SVMs no features are saved, and the last run's go with its report.
    evaluate(tiny_store, tiny_checkpoints, out, "no svm", dataclasses.replace(CFG, svm=False))
    assert not (out / "features").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def _set(key, value):
    def edit(arrays: dict) -> None:
        arrays[key] = value(arrays) if callable(value) else value
    return edit


def _drop(key):
    def edit(arrays: dict) -> None:
        del arrays[key]
    return edit


def _meta(change):
    def edit(arrays: dict) -> None:
        meta = json.loads(str(arrays["meta"]))
        change(meta)
        arrays["meta"] = np.array(json.dumps(meta))
    return edit


def _nan_row(arrays: dict) -> None:
    arrays["train_features"] = arrays["train_features"].copy()
    arrays["train_features"][1] = np.nan


def _inf_cell(arrays: dict) -> None:
    arrays["test_features"] = arrays["test_features"].copy()
    arrays["test_features"][0, 3] = np.inf


def _label_too_large(arrays: dict) -> None:
    arrays["train_labels"] = arrays["train_labels"].copy()
    arrays["train_labels"][0, 0] = len(CLASSES)


# (edit of rgb.npz's arrays, what the one line says)
EDITS = {
    "NaN row": (_nan_row, r"'train_features' holds NaN or inf"),
    "inf": (_inf_cell, r"'test_features' holds NaN or inf"),
    "test features of another width": (_set("test_features", lambda a: a["test_features"][:, :-1]),
                                       r"'test_features' is float32 \(9, \d+\), not floats of 9 videos "
                                       r"\('test_ids'\) x \d+ \('train_features' width\)"),
    "fewer train rows than labels": (_set("train_features", lambda a: a["train_features"][:-1]),
                                     r"'train_features' is float32 \(14, \d+\), not floats of 15 videos"),
    "fewer labels than train rows": (_set("train_labels", lambda a: a["train_labels"][:-1]),
                                     r"'train_labels' is not 15 rows \(one per 'train_ids'\) of class numbers below 3"),
    "no train_features": (_drop("train_features"), r"no 'train_features' \(not the features an evaluation saved\)"),
    "no meta": (_drop("meta"), r"no 'meta'"),
    "meta not JSON": (_set("meta", np.array("{checkpoint: x")), r"'meta' is not JSON \("),
    "meta not an object": (_set("meta", np.array("[1, 2]")), r"'meta' is not a JSON object"),
    "meta not a text": (_set("meta", np.zeros(3)), r"'meta' is float64 \(3,\), not a JSON text"),
    "no classes in meta": (_meta(lambda m: m.pop("classes")), r"no 'classes' in 'meta'"),
    "classes not names": (_meta(lambda m: m.update(classes=3)), r"'classes' in 'meta' is not a list of class names"),
    "excluded not a count": (_meta(lambda m: m.update(excluded="two")), r"'excluded' in 'meta' is not a count"),
    "svm_clips not a count": (_meta(lambda m: m["eval_config"].update(svm_clips="many")),
                              r"'svm_clips' in 'meta' 'eval_config' is not a count"),
    "label beyond the classes": (_label_too_large,
                                 r"'train_labels' is not 15 rows \(one per 'train_ids'\) of class numbers below 3"),
    "1-D labels": (_set("train_labels", lambda a: a["train_labels"][:, 0]), r"'train_labels' is not 15 rows"),
    "float labels": (_set("train_labels", lambda a: a["train_labels"] + 0.5), r"'train_labels' is not 15 rows"),
    "3-D features": (_set("train_features", lambda a: a["train_features"][:, None, :]),
                     r"'train_features' is float32 \(15, 1, \d+\)"),
    "ids not names": (_set("test_ids", lambda a: np.arange(len(a["test_ids"]))), r"'test_ids' is int64 \(9,\)"),
    "no training videos": (_set("train_ids", lambda a: a["train_ids"][:0]), r"'train_ids' is empty"),
    "held-out ids without their rows": (_set("val_ids", lambda a: a["train_ids"][:2]),
                                        r"'val_labels' is not 2 rows \(one per 'val_ids'\)"),
    "groups not one per video": (_set("train_groups", lambda a: a["train_groups"][:-1]),
                                 r"'train_groups' is not 15 group names, one per 'train_ids'"),
    "cut short": (None, r"cannot read saved features \("),  # the file's last bytes gone, no array edited
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edited_features_file_is_one_line_naming_the_file_and_key(reported, tmp_path, edit):
    """svm_from_features on a hand-edited features file raised what numpy, json or scikit-learn raised
    deep in the SVM (KeyError, ValueError, IndexError, TypeError, JSONDecodeError), a traceback that named
    neither the file nor the key."""
    _, out = reported
    features = tmp_path / "features"
    shutil.copytree(out / "features", features)
    path = features / "rgb.npz"
    change, message = EDITS[edit]
    if change is None:
        path.write_bytes(path.read_bytes()[:-200])
    else:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        change(arrays)
        np.savez(path, **arrays)
    with pytest.raises(FusionError, match=message) as caught:
        svm_from_features(features, CFG)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and text.endswith("rerun `make eval`") and "\n" not in text


def test_streams_of_other_runs_are_refused(reported, tmp_path):
    """The streams' features are fitted side by side (svm_two_stream) on the first stream's labels: a
    flow.npz of other labels or classes was used with the rgb stream's."""
    _, out = reported
    features = tmp_path / "features"
    shutil.copytree(out / "features", features)
    path = features / "flow.npz"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["train_labels"] = arrays["train_labels"][::-1].copy()
    np.savez(path, **arrays)
    with pytest.raises(FusionError, match=r"flow\.npz: its train_labels differ from the other stream's"):
        svm_from_features(features, CFG)
    meta = json.loads(str(arrays["meta"]))
    arrays["train_labels"] = arrays["train_labels"][::-1].copy()
    arrays["meta"] = np.array(json.dumps({**meta, "classes": meta["classes"][::-1]}))
    np.savez(path, **arrays)
    with pytest.raises(FusionError, match=r"flow\.npz: its classes differ from the other stream's"):
        svm_from_features(features, CFG)
