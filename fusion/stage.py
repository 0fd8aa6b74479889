"""`make eval`: video-level testing of each stream, late fusion, features + linear SVM, the report.

run_eval is a function from artifacts on disk (the frame + flow store, the streams' checkpoints) to
artifacts on disk (`out_dir`: results.csv/.md, per_class.csv, confusion.png, scores.npz/.csv,
excluded.csv, features/<stream>.npz). Every video's network outputs are cached in `out_dir/cache`
under a key of the checkpoint's bytes and the view settings, so a killed run resumes and a re-run
(for example with other fusion weights or SVM C values) does not touch the network.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flow.device import resolve_device
from flow.errors import FlowError
from flow.store import Store, open_store
from fusion import fuse, report, svm
from fusion.config import EvalConfig
from fusion.errors import FusionError
from fusion.metrics import Labels
from fusion.outputs import Outputs, StreamSpec, collect
from fusion.report import MethodScores
from fusion.scoring import ClipGeometry
from streams.checkpoint import Checkpoint, file_sha256, final_checkpoint, load_checkpoint
from streams.errors import StreamsError

STREAMS = ("rgb", "flow")
Item = tuple[str, tuple[int, ...]]  # (video_id, labels)


@dataclass
class Stream:
    """A checked stream checkpoint and where its per-video outputs are cached."""
    spec: StreamSpec
    checkpoint: Checkpoint
    sha256: str

    @property
    def name(self) -> str:
        return self.spec.name


def run_eval(store_dir: Path, checkpoints: dict[str, Path], train_items: Sequence[Item],
             test_items: Sequence[Item], classes: Sequence[str], cfg: EvalConfig, out_dir: Path,
             protocol: str, excluded: Sequence[str], train_groups: dict[str, str] | None = None) -> pd.DataFrame:
    """Evaluate the streams in `checkpoints` ({"rgb": path, "flow": path}; a path may be a training
    directory, whose `last.pt` is used) on `test_items`, fuse them when both are given, fit the SVMs
    on `train_items`, and write the report to `out_dir`. `excluded`: test videos already known to be
    unusable (failed in `make flow`); they are listed and counted in the report. `train_groups`:
    video id -> group ("g08") of the training videos, when the dataset has groups: the SVM's
    cross-validation folds then never split a group. Returns the table.
    """
    started = time.monotonic()
    out_dir = Path(out_dir)
    classes = list(classes)
    unknown = sorted(set(checkpoints) - set(STREAMS))
    if unknown or not checkpoints:
        raise FusionError(f"checkpoints must name the streams 'rgb' and/or 'flow', got {sorted(checkpoints)}")
    store = _open_store(Path(store_dir))
    device = resolve_device(cfg.device, "eval.device")
    streams = [_check_stream(name, Path(checkpoints[name]), classes, cfg, out_dir)
               for name in STREAMS if name in checkpoints]
    specs = [s.spec for s in streams]

    two = len(streams) == 2
    if not test_items:
        raise FusionError("no test videos to evaluate")
    skipped = {video_id: "no frames/flow in the store (failed or not run in `make flow`)" for video_id in excluded}
    # Training videos: features for the SVM, scores only to choose the fusion weights.
    needs = {video_id: (cfg.fusion_cv and two, cfg.svm) for video_id, _ in train_items}
    needs.update({video_id: (True, cfg.svm) for video_id, _ in test_items})
    outputs, failed = collect(store, specs, needs, cfg, device)
    train_failed = {v: failed[v] for v, _ in train_items if v in failed}
    skipped.update({v: failed[v] for v, _ in test_items if v in failed})
    test_items = [item for item in test_items if item[0] in outputs]
    train_items = [item for item in train_items if item[0] in outputs]
    if not test_items:
        raise FusionError(f"none of the test videos could be evaluated ({len(skipped)} excluded, e.g. "
                          f"{next(iter(skipped.items()), ('', ''))}): run `make flow` first")
    if cfg.svm and not train_items:
        raise FusionError(f"the SVM needs training videos with frames and flow, and none of the "
                          f"{len(train_failed)} given is usable (e.g. {next(iter(train_failed.items()), ('', ''))}): "
                          "run `make flow`, or set eval.svm = false")
    ids = [video_id for video_id, _ in test_items]
    labels = [tuple(lab) for _, lab in test_items]
    train_labels = [tuple(lab) for _, lab in train_items]

    views = f"{cfg.clips} clips x {cfg.crops} crop, {cfg.fusion_scores} scores averaged"
    methods: list[MethodScores] = []
    video: dict[str, np.ndarray] = {}
    for s in streams:
        logits = np.stack([outputs[v][s.name].logits for v in ids])
        video[s.name] = fuse.video_scores(logits, cfg.fusion_scores)
        methods.append(MethodScores(s.name, video[s.name], f"{views}; {s.checkpoint.arch} step {s.checkpoint.step}",
                                    view_logits=logits))
    notes = [f"{len(ids)} test videos evaluated, {len(skipped)} excluded (listed in excluded.csv); "
             f"{len(train_items)} training videos for the SVM and fusion weights"
             + (f" ({len(train_failed)} unusable)" if train_failed else "") + "."]
    if two:
        weights, detail = _fusion_weights(cfg, outputs, train_items, train_labels)
        methods.append(MethodScores("fusion", fuse.fuse(video["rgb"], video["flow"], weights),
                                    f"{cfg.fusion_scores} scores, rgb:flow = {weights[0]:g}:{weights[1]:g}{detail}"))
    if cfg.svm:
        _save_features(out_dir / "features", streams, outputs, train_items, test_items, cfg, protocol, len(skipped),
                       _train_groups(train_items, train_groups))
        methods += svm_methods(_features(streams, outputs, train_items), train_labels,
                               _features(streams, outputs, test_items), len(classes), cfg,
                               groups=_train_groups(train_items, train_groups))

    table = report.results_table(methods, labels, protocol, len(skipped))
    title = f"Evaluation: {protocol}"
    report.write_results(table, out_dir, title, notes)
    report.write_text(out_dir / "per_class.csv",
                      report.per_class_table(methods, labels, classes).to_csv(index=False, float_format="%.2f"))
    shown = [m for m in methods if m.method in ("rgb", "flow", "fusion", "svm_two_stream")]
    report.write_confusion_png(out_dir / "confusion.png", shown, labels, classes)
    report.write_scores(out_dir, ids, labels, classes, methods)
    report.write_excluded(out_dir / "excluded.csv", skipped)
    print(report.to_markdown(table[["method", *report.PERCENT, "videos"]], title, notes))
    print(f"eval: report in {out_dir} ({time.monotonic() - started:.0f} s)")
    return table


def average_splits(tables: Sequence[pd.DataFrame], out_dir: Path, protocol: str) -> pd.DataFrame:
    """The three-split protocol (UCF101, HMDB51, SynthActions): each method's metrics averaged over
    the splits' tables, written as `out_dir`/results.csv and results.md. Returns the averaged table."""
    table = report.average_tables(tables, protocol)
    title = f"Evaluation: {protocol}"
    notes = [f"Mean over {len(tables)} splits; videos and excluded are summed over the splits; "
             "each split's report is in its split<k>/ folder."]
    report.write_results(table, Path(out_dir), title, notes)
    print(report.to_markdown(table[["method", *report.PERCENT, "videos"]], title, notes))
    return table


def svm_methods(train: dict[str, np.ndarray], train_labels: Labels, test: dict[str, np.ndarray],
                num_classes: int, cfg: EvalConfig, groups: Sequence[str] | None = None) -> list[MethodScores]:
    """Linear SVMs on raw pool5 features ({"rgb": [N, D], "flow": [N, D]}): per stream, and on the
    concatenated two-stream feature when both are given. C by cross-validation on the training rows,
    on group-disjoint folds when `groups` (one per training row) is given."""
    inputs = {name: (svm.normalise(train[name]), svm.normalise(test[name])) for name in STREAMS if name in train}
    if len(inputs) == 2:
        inputs["two_stream"] = (svm.two_stream(train["rgb"], train["flow"]), svm.two_stream(test["rgb"], test["flow"]))
    methods = []
    for name, (x_train, x_test) in inputs.items():
        fit = svm.fit_svm(x_train, train_labels, num_classes, cfg.svm_cs, cfg.svm_folds, cfg.seed, groups=groups)
        cv = fit.cv_score[fit.c] * 100
        edge = " (the largest tried: add larger svm_cs)" if len(cfg.svm_cs) > 1 and fit.c == max(cfg.svm_cs) else ""
        methods.append(MethodScores(
            f"svm_{name}", fit.scores(x_test),
            f"pool5 of {cfg.svm_clips} centre clips + mirrors, sign-sqrt + L2; linear SVM C={fit.c:g}{edge} "
            f"({fit.cv}: {cv:.1f}"
            f"{' mAP' if fit.multilabel else '% hit@1'})"))
    return methods


def svm_from_features(features_dir: Path, cfg: EvalConfig) -> pd.DataFrame:
    """Rerun the SVMs from saved features (`out_dir/features/<stream>.npz`) without the network or
    the store: the SVM rows of the results table, for other `svm_cs`, `svm_folds` or `seed`."""
    loaded = {}
    for name in STREAMS:
        path = Path(features_dir) / f"{name}.npz"
        if path.is_file():
            loaded[name] = _read_features(path)
    if not loaded:
        raise FusionError(f"no saved features in {features_dir} (rgb.npz / flow.npz): run `make eval` "
                          "with eval.svm = true first")
    first = next(iter(loaded.values()))
    for name, data in loaded.items():
        for key in ("train_ids", "test_ids"):
            if list(data[key]) != list(first[key]):
                raise FusionError(f"{features_dir}/{name}.npz: its {key} differ from the other stream's; "
                                  "rerun `make eval` so that both come from the same run")
    train_labels = report.unpad_labels(first["train_labels"])
    test_labels = report.unpad_labels(first["test_labels"])
    meta = json.loads(str(first["meta"]))
    groups = [str(g) for g in first.get("train_groups", [])]  # "" = no group (older files: no key)
    methods = svm_methods({n: d["train_features"] for n, d in loaded.items()}, train_labels,
                          {n: d["test_features"] for n, d in loaded.items()}, len(meta["classes"]), cfg,
                          groups=groups if groups and all(groups) else None)
    return report.results_table(methods, test_labels, meta["protocol"], int(meta["excluded"]))


def _open_store(store_dir: Path) -> Store:
    try:
        return open_store(store_dir)
    except FlowError as e:
        raise FusionError(f"{e}: run `make flow` before `make eval`") from None


def _check_stream(name: str, path: Path, classes: list[str], cfg: EvalConfig, out_dir: Path) -> Stream:
    """The stream's checkpoint, checked against the dataset (FusionError naming what to run)."""
    train = f"`make train-{name}`"
    if path.is_dir():
        try:
            path = final_checkpoint(path)
        except StreamsError as e:
            raise FusionError(f"no finished checkpoint for the {name} stream: {e} ({train})") from None
    elif not path.is_file():
        raise FusionError(f"no checkpoint for the {name} stream at {path}: run {train}")
    try:
        _, ckpt = load_checkpoint(path, map_location="cpu")  # builds the model: its weights must fit
    except StreamsError as e:
        raise FusionError(f"{e}: run {train} again") from None
    if ckpt.modality != name:
        raise FusionError(f"checkpoint {path} is a {ckpt.modality} stream but was given as the {name} stream: "
                          f"point eval at the output of {train}")
    if ckpt.classes != classes:
        if len(ckpt.classes) != len(classes):
            what = f"has {len(ckpt.classes)} classes, the dataset has {len(classes)}"
        else:
            diff = next(i for i, (a, b) in enumerate(zip(ckpt.classes, classes)) if a != b)
            what = f"has class {diff} = {ckpt.classes[diff]!r}, the dataset {classes[diff]!r}"
        raise FusionError(f"checkpoint {path} {what}: it was trained on another dataset or split; run {train}")
    geometry = ClipGeometry.from_train_config(ckpt.train_config)
    sha = file_sha256(path)
    settings = {"checkpoint": sha, "geometry": dataclasses.asdict(geometry), "clips": cfg.clips, "crops": cfg.crops,
                "svm_clips": cfg.svm_clips}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return Stream(StreamSpec(name, path, geometry, out_dir / "cache" / f"{name}-{key}"), ckpt, sha)


def _fusion_weights(cfg: EvalConfig, outputs: dict[str, dict[str, Outputs]], train_items: Sequence[Item],
                    train_labels: Labels) -> tuple[tuple[float, float], str]:
    if not cfg.fusion_cv:
        return (cfg.fusion_weights[0], cfg.fusion_weights[1]), ""
    if not train_items:
        raise FusionError("eval.fusion_cv needs training videos with frames and flow, and none is usable")
    rgb, flow = (fuse.video_scores(np.stack([outputs[v][name].logits for v, _ in train_items]), cfg.fusion_scores)
                 for name in STREAMS)
    weight, accuracy = fuse.choose_flow_weight(rgb, flow, train_labels, cfg.fusion_cv_grid, cfg.fusion_weights)
    return (1.0, weight), (f" (chosen on {len(train_items)} train videos, hit@1 {100 * accuracy[weight]:.1f}%; "
                           f"default {cfg.fusion_weights[0]:g}:{cfg.fusion_weights[1]:g})")


def _train_groups(items: Sequence[Item], groups: dict[str, str] | None) -> list[str] | None:
    """The training rows' groups for the SVM's folds; None unless every row has one."""
    if not groups or any(not groups.get(v) for v, _ in items):
        return None
    return [groups[v] for v, _ in items]


def _features(streams: Sequence[Stream], outputs: dict[str, dict[str, Outputs]],
              items: Sequence[Item]) -> dict[str, np.ndarray]:
    return {s.name: np.stack([outputs[v][s.name].feature for v, _ in items]) for s in streams}


def _save_features(features_dir: Path, streams: Sequence[Stream], outputs: dict[str, dict[str, Outputs]],
                   train_items: Sequence[Item], test_items: Sequence[Item], cfg: EvalConfig, protocol: str,
                   excluded: int, train_groups: Sequence[str] | None = None) -> None:
    """features/<stream>.npz: raw pool5 (averaged over clips and mirrors) of the train and test videos,
    their labels (and the training videos' groups, "" without), and `meta` (JSON: the checkpoint, its
    model and train configs, the eval config)."""
    for s in streams:
        ckpt = s.checkpoint
        meta = {"checkpoint": str(ckpt.path), "checkpoint_sha256": s.sha256, "arch": ckpt.arch, "step": ckpt.step,
                "modality": ckpt.modality, "classes": ckpt.classes, "model_config": ckpt.model_config,
                "train_config": ckpt.train_config, "eval_config": dataclasses.asdict(cfg), "protocol": protocol,
                "excluded": excluded}
        report.save_npz(features_dir / f"{s.name}.npz", {
            "train_ids": np.array([v for v, _ in train_items], dtype=str),
            "train_labels": report.pad_labels([lab for _, lab in train_items]),
            "train_features": _features([s], outputs, train_items)[s.name],
            "train_groups": np.array(train_groups or [""] * len(train_items), dtype=str),
            "test_ids": np.array([v for v, _ in test_items], dtype=str),
            "test_labels": report.pad_labels([lab for _, lab in test_items]),
            "test_features": _features([s], outputs, test_items)[s.name],
            "meta": np.array(json.dumps(meta, sort_keys=True)),
        })


def _read_features(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise FusionError(f"{path}: cannot read saved features ({e}): rerun `make eval`") from None
