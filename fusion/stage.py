"""`make eval`: video-level testing of each stream, late fusion, features + linear SVM, the report.

run_eval is a function from artifacts on disk (the frame + flow store, the streams' checkpoints: an
`EvalJob`) to artifacts on disk (`out_dir`: results.csv/.md, per_class.csv, confusion.png, per_class.png,
fusion_weight.png, scores.npz/.csv, excluded.csv, features/<stream>.npz, staged and moved in together
as one report). Every video's network outputs are cached in `out_dir/cache`
under a key of the checkpoint's bytes and the view settings, so a killed run resumes and a re-run
(for example with other fusion weights or SVM C values) does not touch the network.
"""
from __future__ import annotations

import dataclasses
import json
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flow.store import Store
from fusion import fuse, metrics, report, svm
from fusion.config import EvalConfig
from fusion.engine import Stream, stream_of
from fusion.errors import FusionError
from fusion.metrics import Labels
from fusion.outputs import Outputs, collect
from fusion.paper import paper_comparison
from fusion.predict import check_flow
from fusion.report import MethodScores
from p3dbase.device import resolve_device
from p3dbase.errors import excerpt, shown
from streams.checkpoint import LAST, Checkpoint, load_stream
from streams.transforms import MODALITIES

Item = tuple[str, tuple[int, ...]]  # (video_id, labels)


@dataclass
class _Scored:
    """A checked stream checkpoint, where its per-video outputs are cached, and which of its output
    columns are the dataset's classes (None: the same list in the same order)."""
    spec: Stream
    checkpoint: Checkpoint
    sha256: str
    columns: np.ndarray | None

    @property
    def name(self) -> str:
        return self.spec.name

    def logits(self, outputs: dict[str, dict[str, Outputs]], ids: Sequence[str]) -> np.ndarray:
        """[N, V, C] per-view logits of the videos `ids`, in the dataset's class order."""
        stacked = np.stack([outputs[v][self.name].logits for v in ids])
        return stacked if self.columns is None else stacked[..., self.columns]


@dataclass
class EvalJob:
    """What one evaluation scores: the store (opened once by the caller), each stream's checkpoint and
    the dataset's videos by role."""
    store: Store
    checkpoints: dict[str, Path]  # {"rgb": path, "flow": path}, one or both: a file, or a run folder (its last.pt)
    train: Sequence[Item]  # the SVMs are fitted on these
    test: Sequence[Item]  # with those of `excluded`, whose labels ActivityNet's metrics count as misses
    classes: Sequence[str]
    protocol: str  # what the report is titled by, e.g. "synth split 1"
    # Test videos known to be unusable, with why (failed in `make flow`, absent from the dataset's root):
    # never read; listed in excluded.csv and counted.
    excluded: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Held-out videos of the training split (whole groups the streams were not trained on; `val_note` names
    # which). With them the fusion rule (raw or softmax scores, flow weight) and the SVMs' C are chosen on
    # them, never on the test videos; without them the fusion rule is the fixed default and C comes from
    # cross-validation on the training videos, and the report says so.
    val: Sequence[Item] = ()
    val_note: str = ""
    train_groups: dict[str, str] | None = None  # video id -> group: the SVM's CV folds never split a group
    # Use test or held-out videos that a stream was trained on (its checkpoint's training list) instead of
    # refusing; the report then says how many.
    allow_trained: bool = False


def run_eval(job: EvalJob, cfg: EvalConfig, out_dir: Path, config_toml: str = "") -> pd.DataFrame:
    """Evaluate the job's streams on its test videos, fuse them when both are given, fit the SVMs on its
    training videos, and write the report to `out_dir` (see the module doc), with `config_toml` (the
    caller's resolved settings) as its config.toml. Returns the results table."""
    started = time.monotonic()
    out_dir, classes = Path(out_dir), list(job.classes)
    # 1. The streams: checkpoints that fit the classes, the store's flow and the videos' roles.
    streams = _check_streams(job, cfg, out_dir)
    notes, selection = [], ["Checkpoints: each stream's given file, or the finished model (last.pt) of its training "
                            "run; none is chosen by accuracy."]
    notes_on_trained = _trained_on(job, streams)
    # 2. Every needed video's network outputs (cached in out_dir/cache), the unusable ones excluded.
    outputs, skipped, train_failed, (train, val, test) = _outputs(job, streams, cfg, out_dir)
    ids, labels = [v for v, _ in test], [tuple(lab) for _, lab in test]
    train_labels = [tuple(lab) for _, lab in train]
    val_ids, val_labels = [v for v, _ in val], [tuple(lab) for _, lab in val]
    notes.append(f"{len(ids)} test videos evaluated, {len(skipped)} excluded (listed in excluded.csv); "
                 f"{len(train)} training videos"
                 + (f" and {len(val)} held-out videos of the training split" if val else "")
                 + (f" ({len(train_failed)} unusable)" if train_failed else "") + ".")
    notes += [_checkpoint_note(s) for s in streams] + notes_on_trained

    # 3. Each stream's video scores and, with both, their fusion (the rule chosen as EvalJob.val says).
    sampling = f"random (seed {cfg.seed}) " if cfg.clip_sampling == "random" else ""
    views = f"{cfg.clips} {sampling}clips x {cfg.crops} crop, {cfg.fusion_scores} scores averaged"
    view_logits = {s.name: s.logits(outputs, ids) for s in streams}
    methods = [MethodScores(s.name, fuse.video_scores(view_logits[s.name], cfg.fusion_scores),
                            f"{views}; {s.checkpoint.arch} step {s.checkpoint.step}", view_logits=view_logits[s.name])
               for s in streams]
    curves: dict[str, tuple[Sequence[float], np.ndarray]] = {}
    chosen = None  # (score kind, flow weight per RGB weight 1) of the fusion row, marked on its curve
    if len(streams) == 2:
        kind, weights, detail, chosen_on = _fusion_rule(
            cfg, streams, outputs, train_items=train, train_labels=train_labels, val_ids=val_ids,
            val_labels=val_labels, val_note=job.val_note)
        chosen = (kind, weights[1] / weights[0]) if weights[0] > 0 else None
        selection.append(f"Fusion rule ({kind} scores, rgb:flow = {weights[0]:g}:{weights[1]:g}): {chosen_on}.")
        for k in ("raw", "softmax"):
            fused = fuse.fuse(*(fuse.video_scores(view_logits[n], k) for n in MODALITIES), weights)
            if k == kind:
                methods.insert(2, MethodScores("fusion", fused, f"{kind} scores, rgb:flow = "
                                               f"{weights[0]:g}:{weights[1]:g}{detail}"))
            methods.append(MethodScores(f"fusion_{k}", fused, f"{k} scores, rgb:flow = {weights[0]:g}:{weights[1]:g}"))
        used = weights[1] / weights[0] if weights[0] > 0 else max(cfg.fusion_cv_grid)
        grid = sorted(set(cfg.fusion_cv_grid) | {used})
        for k in ("raw", "softmax"):
            rgb, flow = (fuse.video_scores(view_logits[n], k) for n in MODALITIES)
            curves[f"test, {k}"] = (grid, fuse.weight_curve(rgb, flow, labels, grid))
            if val:
                held = [fuse.video_scores(s.logits(outputs, val_ids), k) for s in streams]
                curves[f"held-out, {k}"] = (grid, fuse.weight_curve(*held, val_labels, grid))

    # 4. Features + linear SVMs, C chosen on the held-out videos or by cross-validation.
    groups = _train_groups(train, job.train_groups)
    if cfg.svm:
        if val:
            methods += svm_methods_held_out(_features(streams, outputs, train), train_labels,
                                            _features(streams, outputs, val), val_labels,
                                            _features(streams, outputs, test), num_classes=len(classes), cfg=cfg)
            selection.append(f"SVM C: chosen on the held-out videos ({_held_count(len(val), job.val_note)}), "
                             "then refitted on training + held-out videos.")
        else:
            methods += svm_methods(_features(streams, outputs, train), train_labels,
                                   _features(streams, outputs, test), len(classes), cfg, groups=groups)
            selection.append("SVM C: cross-validation on the training videos (the folds are in each SVM row's "
                             "details), whose features come from networks that were trained on them (no held-out "
                             "groups: set train.val_groups or train.val_fraction for an honest choice).")
    notes += selection
    if job.protocol.startswith("activitynet"):
        notes.append(anet_note(methods, labels, [tuple(lab) for v, lab in job.test if v in skipped]))

    # 5. The report.
    table = report.results_table(methods, labels, job.protocol, len(skipped))
    paper = paper_comparison(table, job.protocol)  # Sports-1M: the paper's table beside ours
    notes += [paper] if paper else []
    title = f"Evaluation: {job.protocol}"
    shown = [m for m in methods if m.method in ("rgb", "flow", "fusion", "svm_two_stream")]
    def features(folder: Path) -> None:
        _save_features(folder, streams, outputs, train_items=train, val_items=val, test_items=test, cfg=cfg,
                       protocol=job.protocol, excluded=len(skipped), train_groups=groups)

    # The features move in with the report: saved before the SVMs, a refused or killed run left them
    # beside the old report, whose SVM rows they no longer reproduced.
    report.write_report(out_dir, report.EvalReport(
        title, table, notes, methods, shown, ids, labels, classes, skipped, curves, chosen, store=job.store.root,
        checkpoints={s.name: s.checkpoint.path for s in streams}), features=features if cfg.svm else None,
        config_toml=config_toml)
    print(report.to_markdown(table[["method", *report.PERCENT, "videos"]], title, notes))
    print(f"eval: report in {out_dir} ({time.monotonic() - started:.0f} s)")
    return table


def _check_streams(job: EvalJob, cfg: EvalConfig, out_dir: Path) -> list[_Scored]:
    """The job's streams, checked (FusionError naming what to run): known names, checkpoints that fit
    the classes and the store's flow, test videos that are neither training nor held-out videos."""
    unknown = sorted(set(job.checkpoints) - set(MODALITIES))
    if unknown or not job.checkpoints:
        raise FusionError(f"checkpoints must name the streams 'rgb' and/or 'flow', got {sorted(job.checkpoints)}")
    streams = [_check_stream(name, Path(job.checkpoints[name]), list(job.classes), cfg, out_dir)
               for name in MODALITIES if name in job.checkpoints]
    check_flow([s.spec for s in streams], job.store.flow_settings, f"the store at {job.store.root}")
    if not job.test:
        raise FusionError("no test videos to evaluate")
    if all(v in job.excluded for v, _ in job.test):  # before hours of training-video features for nothing
        raise FusionError(f"none of the {len(job.test)} test videos can be evaluated (all excluded"
                          f"{_example(job.excluded)}): run `make flow` first (it redoes damaged videos)")
    overlap = sorted({v for v, _ in job.test} & {v for v, _ in [*job.train, *job.val]})
    if overlap:
        raise FusionError(f"{len(overlap)} test video(s) are also training or held-out videos, e.g. {overlap[0]}")
    return streams


def anet_note(methods: Sequence[MethodScores], labels: Labels, excluded: Labels = ()) -> str:
    """ActivityNet's own metrics of every method, as its official scorer (activitynet/ActivityNet
    Evaluation/eval_classification.py) and the paper report them: top-1, top-3, and mAP with
    interpolated precision, the `excluded` test videos (no outputs) counted as the scorer counts a
    video without predictions: a miss, its labels never retrieved (transfer.train_validation does the
    same). The table's mAP (scikit-learn's, not interpolated, over the evaluated videos) and hit@5 differ."""
    every = [*labels, *excluded]

    def scored(m: MethodScores) -> np.ndarray:
        return np.concatenate([m.scores, np.full((len(excluded), m.scores.shape[1]), np.nan)])
    rows = "; ".join(f"{m.method} {metrics.anet_hit_at_k(scored(m), every, 1):.2f} / "
                     f"{metrics.anet_hit_at_k(scored(m), every, 3):.2f} / {metrics.anet_map(scored(m), every):.2f}"
                     for m in methods)
    missing = f", the {len(excluded)} excluded videos as misses" if excluded else ""
    return ("ActivityNet's official metrics (its scorer's top-1 / top-3 / mAP with interpolated precision, as the "
            f"paper reports them{missing}; the table's mAP is not interpolated): {rows}.")


def _trained_on(job: EvalJob, streams: Sequence[_Scored]) -> list[str]:
    """FusionError when a stream was trained on test videos (its checkpoint records its training list:
    a checkpoint of another split) or on the held-out videos that choose the fusion rule and C (streams
    trained without these train.val_groups / val_fraction, or with another train.seed: the choice would
    be made on videos the networks fitted, and the report would call it held out); with
    `allow_trained`, the report's notes saying so instead."""
    notes = []
    # (role, its videos, the report's note with --allow-trained, why it is refused without)
    roles = [("test videos", {v for v, _ in job.test}, "Not a test: {}, scored anyway",
              "scores on them are not a test (a checkpoint of another split?); evaluate the split it was trained on"),
             ("held-out videos", {v for v, _ in job.val}, "Not held out: {}, the choices made on them anyway",
              "the fusion rule and C chosen on them would be chosen on videos the network fitted (trained without "
              "these train.val_groups / val_fraction, or with another train.seed?); evaluate with the held-out "
              "settings it was trained with, or with none (C then by cross-validation, and the report says so)")]
    for s in streams:
        record = s.checkpoint.state.get("training_set")  # absent in imported and older checkpoints
        trained = set(record.get("videos", [])) if isinstance(record, dict) else set()
        for role, videos, label, why in roles:
            seen = sorted(videos & trained)
            if not seen:
                continue
            what = (f"{len(seen)} of the {len(videos)} {role} (e.g. {seen[0]}) are in the training list of the "
                    f"{s.name} stream {s.checkpoint.path}")
            if not job.allow_trained:
                raise FusionError(f"{what}: {why}, or pass --allow-trained to go on anyway")
            notes.append(label.format(what) + " (--allow-trained).")
    return notes


def _outputs(job: EvalJob, streams: Sequence[_Scored], cfg: EvalConfig, out_dir: Path) -> tuple[
        dict[str, dict[str, Outputs]], dict[str, str], dict[str, str], tuple[list[Item], list[Item], list[Item]]]:
    """(each usable video's outputs per stream, the excluded test videos with why, the unusable training
    and held-out videos with why, the (train, held-out, test) items that have outputs)."""
    two = len(streams) == 2
    skipped = dict(job.excluded)
    # Training videos: features for the SVM, scores only to choose the fusion weights (fusion_cv
    # without held-out videos). Held-out videos: scores to choose the fusion rule, features for C.
    needs = {video_id: (cfg.fusion_cv and two and not job.val, cfg.svm) for video_id, _ in job.train}
    needs.update({video_id: (True, cfg.svm) for video_id, _ in [*job.val, *job.test] if video_id not in skipped})
    device = resolve_device(cfg.device, "eval.device")
    outputs, failed = collect(job.store, [s.spec for s in streams], needs, cfg, device, out_dir / "cache")
    train_failed = {v: failed[v] for v, _ in [*job.train, *job.val] if v in failed}
    skipped.update({v: failed[v] for v, _ in job.test if v in failed})
    train, val, test = ([item for item in items if item[0] in outputs] for items in (job.train, job.val, job.test))
    if not test:
        raise FusionError(f"none of the test videos could be evaluated ({len(skipped)} excluded{_example(skipped)}): "
                          "run `make flow` first (it redoes damaged videos)")
    if cfg.svm and not train:
        raise FusionError(f"the SVM needs training videos with frames and flow, and none of the "
                          f"{len(train_failed)} given is usable{_example(train_failed)}: run `make flow`, or set "
                          "eval.svm = false")
    return outputs, skipped, train_failed, (train, val, test)


def _example(reasons: dict[str, str]) -> str:
    """`, e.g. VIDEO: why` of the first video of `reasons` (on one line), or "" when there is none."""
    return "".join(f", e.g. {video}: {' '.join(why.split())}" for video, why in list(reasons.items())[:1])


def average_splits(tables: Sequence[pd.DataFrame], out_dir: Path, protocol: str, config_toml: str = "") -> pd.DataFrame:
    """The three-split protocol (UCF101, HMDB51, SynthActions): each method's metrics averaged over
    the splits' tables, written as `out_dir`/results.csv and results.md (report.write_average, with
    `config_toml`). Returns the averaged table."""
    table = report.average_tables(tables, protocol)
    title = f"Evaluation: {protocol}"
    notes = [f"Mean over {len(tables)} splits; videos and excluded are summed over the splits; "
             "each split's report is in its split<k>/ folder."]
    report.write_average(Path(out_dir), table, title, notes, config_toml=config_toml)
    print(report.to_markdown(table[["method", *report.PERCENT, "videos"]], title, notes))
    return table


def svm_methods(train: dict[str, np.ndarray], train_labels: Labels, test: dict[str, np.ndarray],
                num_classes: int, cfg: EvalConfig, groups: Sequence[str] | None = None) -> list[MethodScores]:
    """Linear SVMs on raw pool5 features ({"rgb": [N, D], "flow": [N, D]}): per stream, and on the
    concatenated two-stream feature when both are given. C by cross-validation on the training rows,
    on group-disjoint folds when `groups` (one per training row) is given."""
    inputs = _svm_inputs(train, test)
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


def svm_methods_held_out(train: dict[str, np.ndarray], train_labels: Labels, held: dict[str, np.ndarray],
                         held_labels: Labels, test: dict[str, np.ndarray], *, num_classes: int,
                         cfg: EvalConfig) -> list[MethodScores]:
    """The SVM rows with C chosen honestly: each C of `svm_cs` is fitted on the training videos and
    scored on the held-out ones (groups the streams never saw; hit@1, or mAP for multi-label), the
    best (the smallest among ties) is refitted on training + held-out videos and scores the test."""
    fit_inputs = _svm_inputs(train, held)
    test_inputs = _svm_inputs(train, test)
    multilabel = any(len(lab) > 1 for lab in [*train_labels, *held_labels])
    both = [*train_labels, *held_labels]
    methods = []
    for name, (x_train, x_held) in fit_inputs.items():
        score = {float(c): svm._score(svm._fit(x_train, train_labels, num_classes, c, multilabel), x_held,
                                      held_labels, multilabel) for c in sorted(cfg.svm_cs)}
        best = max(score.values())
        c = min(v for v, acc in score.items() if acc == best)
        final = svm._fit(np.concatenate([x_train, x_held]), both, num_classes, c, multilabel)
        edge = " (the largest tried: add larger svm_cs)" if len(cfg.svm_cs) > 1 and c == max(cfg.svm_cs) else ""
        methods.append(MethodScores(
            f"svm_{name}", final.scores(test_inputs[name][1]),
            f"pool5 of {cfg.svm_clips} centre clips + mirrors, sign-sqrt + L2; linear SVM C={c:g}{edge} "
            f"(chosen on {len(held_labels)} held-out videos: {100 * best:.1f}{' mAP' if multilabel else '% hit@1'}; "
            f"fitted on {len(both)} videos)"))
    return methods


def _svm_inputs(train: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Normalised SVM inputs per stream ({"rgb": (train rows, test rows), ...}) and, with both
    streams, their two-stream concatenation."""
    inputs = {name: (svm.normalise(train[name]), svm.normalise(test[name])) for name in MODALITIES if name in train}
    if len(inputs) == 2:
        inputs["two_stream"] = (svm.two_stream(train["rgb"], train["flow"]), svm.two_stream(test["rgb"], test["flow"]))
    return inputs


def svm_from_features(features_dir: Path, cfg: EvalConfig) -> pd.DataFrame:
    """Rerun the SVMs from saved features (`out_dir/features/<stream>.npz`) without the network or
    the store: the SVM rows of the results table, for other `svm_cs`, `svm_folds` or `seed`. C is
    chosen as the report chose it: on the held-out videos when the evaluation had them (then refitted
    on training + held-out), else by cross-validation on the training videos; the rows describe the
    features as they were made (their `svm_clips`), whatever `cfg` says."""
    loaded, metas = {}, {}
    for name in MODALITIES:
        path = Path(features_dir) / f"{name}.npz"
        if path.is_file():
            loaded[name], metas[name] = _read_features(path)
    if not loaded:
        raise FusionError(f"no saved features in {features_dir} (rgb.npz / flow.npz): run `make eval` "
                          "with eval.svm = true first")
    first, meta = next(iter(loaded.values())), next(iter(metas.values()))
    for name, data in loaded.items():
        for key in ("train_ids", "val_ids", "test_ids", "train_labels", "val_labels", "test_labels", "classes"):
            ours, theirs = ((metas[name], meta) if key == "classes" else (data, first))
            if not np.array_equal(np.asarray(ours.get(key, [])), np.asarray(theirs.get(key, []))):
                raise FusionError(f"{features_dir}/{name}.npz: its {key} differ from the other stream's; "
                                  "rerun `make eval` so that both come from the same run")
    train_labels = report.unpad_labels(first["train_labels"])
    test_labels = report.unpad_labels(first["test_labels"])
    made = dataclasses.replace(cfg, svm_clips=int((meta.get("eval_config") or {}).get("svm_clips", cfg.svm_clips)))
    train = {n: d["train_features"] for n, d in loaded.items()}
    test = {n: d["test_features"] for n, d in loaded.items()}
    if len(first.get("val_ids", [])):  # files from before held-out videos were saved have no key: CV
        val = {n: d["val_features"] for n, d in loaded.items()}
        methods = svm_methods_held_out(train, train_labels, val, report.unpad_labels(first["val_labels"]), test,
                                       num_classes=len(meta["classes"]), cfg=made)
    else:
        ids = [str(v) for v in first["train_ids"]]
        groups = [str(g) for g in first.get("train_groups", [""] * len(ids))]  # "" = no group (older files: no key)
        methods = svm_methods(train, train_labels, test, len(meta["classes"]), made,
                              groups=svm.fold_groups(groups, ids))
    return report.results_table(methods, test_labels, meta["protocol"], meta["excluded"])


def _check_stream(name: str, path: Path, classes: list[str], cfg: EvalConfig, out_dir: Path) -> _Scored:
    """The stream's checkpoint, checked against the dataset (FusionError naming what to run)."""
    # fusion knows no config: the command that trains it, in the words the user typed this one in
    train = (f"`python -m pipeline train --stream {name}` with this eval's --config, --run and --set "
             f"(`make train-{name}` for `make all`'s)")
    if not path.exists():
        raise FusionError(f"no checkpoint for the {name} stream at {path}: run {train}, or give --{name} CKPT")
    if path.is_dir() and not (path / LAST).is_file():
        raise FusionError(f"no finished checkpoint for the {name} stream: training in {path} has not finished "
                          f"(no {LAST}): run {train} again to finish it")
    _, ckpt = load_stream(path)  # builds the model: its weights must fit (StreamsError naming the file)
    if ckpt.modality != name:
        raise FusionError(f"checkpoint {ckpt.path} is a {ckpt.modality} stream but was given as the {name} stream: "
                          f"point eval at the output of {train}")
    columns = class_columns(ckpt.classes, classes, ckpt.path, train)
    stream = stream_of(name, ckpt)  # its outputs are cached under out_dir/cache (fusion.engine.OutputCache)
    return _Scored(stream, ckpt, stream.sha256, columns)


def _name_key(name: str) -> str:
    """Class names compared loosely: case, spaces, underscores and hyphens aside ("Air drumming" = "air_drumming")."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def class_columns(known: Sequence[str], classes: Sequence[str], path: Path, hint: str = "") -> np.ndarray | None:
    """Which output column of a checkpoint that knows the classes `known` scores each of the dataset's
    `classes`, matched by name (exactly, else ignoring case, spaces, '_' and '-'): None when the lists
    are equal. A checkpoint may know more classes than the dataset (Kinetics weights on a subset);
    FusionError listing the dataset's classes it does not know otherwise."""
    known, classes = list(known), list(classes)
    if known == classes:
        return None
    exact = {c: i for i, c in enumerate(known)}
    loose: dict[str, list[int]] = {}
    for i, c in enumerate(known):
        loose.setdefault(_name_key(c), []).append(i)
    columns, unmatched = [], []
    for c in classes:
        if c in exact:
            columns.append(exact[c])
        elif len(loose.get(_name_key(c), [])) == 1:
            columns.append(loose[_name_key(c)][0])
        else:
            unmatched.append(c)
    if unmatched:
        more = f" and {len(unmatched) - 10} more" if len(unmatched) > 10 else ""
        shown = ", ".join(repr(c) for c in unmatched[:10]) + more
        example = ", ".join(repr(c) for c in known[:3])
        raise FusionError(f"checkpoint {path} does not know {len(unmatched)} of the dataset's {len(classes)} classes "
                          f"({shown}; it has {len(known)} classes, e.g. {example}): it was "
                          f"trained on another dataset or split{'; run ' + hint if hint else ''}")
    if len(set(columns)) != len(columns):
        raise FusionError(f"checkpoint {path}: two of the dataset's classes match the same class of the checkpoint")
    return np.array(columns)


def _checkpoint_note(s: _Scored) -> str:
    ckpt = s.checkpoint
    matched = "" if s.columns is None else f"; {len(s.columns)} of its {ckpt.num_classes} classes matched by name"
    return (f"Scored {s.name}: {ckpt.path} (sha256 {s.sha256[:12]}, {ckpt.arch}, step {ckpt.step}, "
            f"epoch {ckpt.epoch}{matched}).")


def _fusion_rule(cfg: EvalConfig, streams: Sequence[_Scored], outputs: dict[str, dict[str, Outputs]], *,
                 train_items: Sequence[Item], train_labels: Labels, val_ids: Sequence[str], val_labels: Labels,
                 val_note: str) -> tuple[str, tuple[float, float], str, str]:
    """(score kind, weights, details for the row, what it was chosen on). Held-out videos choose the
    kind and weight; else `fusion_cv` chooses the weight on the training videos; else the default."""
    default = (cfg.fusion_weights[0], cfg.fusion_weights[1])
    if val_ids:
        rgb, flow = (s.logits(outputs, val_ids) for s in streams)
        kind, weight, accuracy = fuse.choose_fusion(rgb, flow, val_labels, cfg.fusion_cv_grid, default,
                                                    cfg.fusion_scores)
        detail = (f" (chosen on {len(val_ids)} held-out videos, hit@1 {100 * accuracy[kind][weight]:.1f}%; "
                  f"default {cfg.fusion_scores} {default[0]:g}:{default[1]:g})")
        grid = ", ".join(f"{w:g}" for w in cfg.fusion_cv_grid)
        where = f"the held-out videos ({_held_count(len(val_ids), val_note)})"
        return kind, (1.0, weight), detail, f"chosen on {where} among raw/softmax x flow weights {grid}"
    if not cfg.fusion_cv:
        return cfg.fusion_scores, default, "", ("the fixed default (eval.fusion_scores, eval.fusion_weights); "
                                                "no held-out groups to choose on")
    if not train_items:
        raise FusionError("eval.fusion_cv needs training videos with frames and flow, and none is usable")
    ids = [v for v, _ in train_items]
    rgb, flow = (fuse.video_scores(s.logits(outputs, ids), cfg.fusion_scores) for s in streams)
    weight, accuracy = fuse.choose_flow_weight(rgb, flow, train_labels, cfg.fusion_cv_grid, cfg.fusion_weights)
    detail = (f" (chosen on {len(train_items)} train videos, hit@1 {100 * accuracy[weight]:.1f}%; "
              f"default {default[0]:g}:{default[1]:g})")
    return cfg.fusion_scores, (1.0, weight), detail, (
        "flow weight chosen on the training videos (eval.fusion_cv), which the streams were trained on: "
        "not an honest selection (set train.val_groups or train.val_fraction)")


def _held_count(count: int, note: str) -> str:
    """"12 videos of 1 of the training split's 4 groups: g04": the held-out videos used (those with
    outputs), of the groups `note` names."""
    return f"{count} videos of {note}" if note else f"{count} videos"


def _train_groups(items: Sequence[Item], groups: dict[str, str] | None) -> list[str] | None:
    """The training rows' groups for the SVM's folds (svm.fold_groups)."""
    ids = [v for v, _ in items]
    return svm.fold_groups([(groups or {}).get(v) for v in ids], ids)


def _features(streams: Sequence[_Scored], outputs: dict[str, dict[str, Outputs]],
              items: Sequence[Item]) -> dict[str, np.ndarray]:
    return {s.name: np.stack([outputs[v][s.name].feature for v, _ in items]) for s in streams}


def _save_features(features_dir: Path, streams: Sequence[_Scored], outputs: dict[str, dict[str, Outputs]], *,
                   train_items: Sequence[Item], val_items: Sequence[Item], test_items: Sequence[Item],
                   cfg: EvalConfig, protocol: str, excluded: int, train_groups: Sequence[str] | None = None) -> None:
    """features/<stream>.npz: raw pool5 (averaged over clips and mirrors) of the train, held-out (none:
    0 rows) and test videos, their labels (and the training videos' groups, "" without), and `meta`
    (JSON: the checkpoint, its model and train configs, the eval config)."""
    for s in streams:
        width = s.spec.widths()["pool5"]
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
            # held-out videos: svm_from_features then chooses C on them, as the report did
            "val_ids": np.array([v for v, _ in val_items], dtype=str),
            "val_labels": report.pad_labels([lab for _, lab in val_items]),
            "val_features": (_features([s], outputs, val_items)[s.name] if val_items
                             else np.zeros((0, width), np.float32)),
            "test_ids": np.array([v for v, _ in test_items], dtype=str),
            "test_labels": report.pad_labels([lab for _, lab in test_items]),
            "test_features": _features([s], outputs, test_items)[s.name],
            "meta": np.array(json.dumps(meta, sort_keys=True)),
        })


RERUN = "rerun `make eval`"
FEATURE_KEYS = ("train_ids", "train_labels", "train_features", "test_ids", "test_labels", "test_features", "meta")


def _read_features(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A features/<stream>.npz (_save_features) and its `meta`, checked as fusion.html_report checks
    scores.npz: a hand-edited or cut file is one FusionError naming the file, the key and what is wrong,
    not a KeyError or a scikit-learn ValueError from deep in the SVM. Files from before held-out videos
    (val_*) and groups (train_groups) were saved lack those keys."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise FusionError(f"{shown(path)}: cannot read saved features ({e}): {RERUN}") from None
    roles = ["train", *(["val"] if "val_ids" in arrays else []), "test"]
    missing = [k for k in [*FEATURE_KEYS, *(("val_labels", "val_features") if "val" in roles else ())]
               if k not in arrays]
    if missing:
        raise _damaged(path, f"no {', '.join(map(repr, missing))} (not the features an evaluation saved)")
    meta = _features_meta(path, arrays["meta"])
    num_classes = len(meta["classes"])
    width = arrays["train_features"].shape[-1] if arrays["train_features"].ndim == 2 else None
    for role in roles:
        ids, labels, features = (arrays[f"{role}_{k}"] for k in ("ids", "labels", "features"))
        if ids.ndim != 1 or ids.dtype.kind != "U":
            raise _damaged(path, f"'{role}_ids' is {ids.dtype} {tuple(ids.shape)}, not a list of video ids")
        if role != "val" and not len(ids):  # eval refuses to run without them: an edit
            raise _damaged(path, f"'{role}_ids' is empty (no {role} videos)")
        n = len(ids)
        if (labels.ndim != 2 or len(labels) != n or labels.dtype.kind not in "iu"
                or bool(((labels < -1) | (labels >= num_classes)).any())):
            raise _damaged(path, f"'{role}_labels' is not {n} rows (one per '{role}_ids') of class numbers below "
                                 f"{num_classes} (the classes of 'meta'), -1 padded")
        if features.dtype.kind != "f" or features.ndim != 2 or features.shape != (n, width) or not width:
            raise _damaged(path, f"'{role}_features' is {features.dtype} {tuple(features.shape)}, not floats of "
                                 f"{n} videos ('{role}_ids') x {width} ('train_features' width)")
        if not np.isfinite(features).all():
            raise _damaged(path, f"'{role}_features' holds NaN or inf")
    groups = arrays.get("train_groups")
    if groups is not None and (groups.ndim != 1 or groups.dtype.kind != "U" or len(groups) != len(arrays["train_ids"])):
        raise _damaged(path, f"'train_groups' is not {len(arrays['train_ids'])} group names, one per 'train_ids'")
    return arrays, meta


def _features_meta(path: Path, text: np.ndarray) -> dict[str, Any]:
    """A features file's `meta` (JSON), with the keys svm_from_features reads checked."""
    if text.ndim != 0 or text.dtype.kind != "U":
        raise _damaged(path, f"'meta' is {text.dtype} {tuple(text.shape)}, not a JSON text")
    try:
        meta = json.loads(str(text))
    except ValueError as e:
        raise _damaged(path, f"'meta' is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise _damaged(path, f"'meta' is not a JSON object (it is {excerpt(str(text))})")
    report.check_inputs(path, meta, {  # eval_config (with svm_clips) is absent in the oldest files
        "classes": (lambda v: isinstance(v, list) and bool(v) and all(isinstance(c, str) for c in v),
                    "a list of class names"),
        "protocol": (lambda v: isinstance(v, str), "a text"),
        "excluded": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a count"),
        "eval_config": (lambda v: v is None or isinstance(v, dict), "an object"),
    }, RERUN, optional=("eval_config",), within="'meta'")
    clips = (meta.get("eval_config") or {}).get("svm_clips", 1)
    if not isinstance(clips, int) or isinstance(clips, bool) or clips < 1:
        raise _damaged(path, f"'svm_clips' in 'meta' 'eval_config' is not a count of clips (it is "
                             f"{excerpt(json.dumps(clips))})")
    return meta


def _damaged(path: Path, what: str) -> FusionError:
    return report.damaged(path, what, RERUN)
