"""The transfer stage: the paper's representation test across benchmarks, one table.

`run_transfer` takes the benchmarks as plain records (`Benchmark`: videos, labels, splits, View-2
pairs; the pipeline reads them with its dataset readers) and, for each: computes the flow its videos
need (the flow stage's code, a store per benchmark under `<out>/flow/NAME`, resumable, broken videos
recorded in its manifest) when a flow stream is given, extracts the cached features
(fusion.transfer_features), and runs its protocol (fusion.transfer) for each stream: rgb, flow and,
with both, two_stream. It returns the results table with what the report says about it; the caller
writes the report (results.csv, results.md, results.png, excluded.csv).

With `shard = (i, n)`, n > 1, only flow and features of every n-th video are computed (each shard
writes its own cache files) and nothing is scored; a run without a shard then finds every feature
cached and scores.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from flow.config import FlowConfig
from flow.stage import FlowJob, config_flow_settings, run_flow
from flow.store import Store, open_store
from fusion import svm, transfer
from fusion.engine import Stream
from fusion.errors import FusionError
from fusion.transfer_config import PROTOCOLS, TransferConfig
from fusion.transfer_features import LAYERS, Extraction, VideoJob, extract, load_stream_spec
from p3dbase.errors import shown
from streams.checkpoint import check_flow_settings

STREAMS = ("rgb", "flow")
# The columns of results.csv, in order.
COLUMNS = ["benchmark", "protocol", "stream", "accuracy", "se", "auc", "hit@3", "mAP", "videos", "excluded",
           "selected", "details"]
EXCLUDED_COLUMNS = ["benchmark", "stream", "video_id", "reason"]


@dataclass(frozen=True)
class TransferVideo:
    video_id: str  # ASLAN: the clip number ("0001"), which View-2's pairs name
    path: Path  # the video file
    labels: tuple[int, ...]  # indices into Benchmark.classes; the first is the single-label protocols' label
    group: str | None = None  # clips of one group share actor and scene: kept on one side of CV folds


@dataclass
class Benchmark:
    """One benchmark as its protocol sees it."""
    name: str  # the [benchmark.NAME] table
    protocol: str  # one of fusion.transfer_config.PROTOCOLS
    root: Path  # where its videos lie (for messages)
    classes: list[str]
    videos: list[TransferVideo]
    # three_split: (training ids, scored ids) per split, in split order; train_val: one such pair (the
    # scored videos are the validation set, or the test set without one); loo, aslan_view2: none.
    splits: list[tuple[list[str], list[str]]] = field(default_factory=list)
    pairs: np.ndarray | None = None  # aslan_view2: View-2's action_splits_pairs [pairs, 5, splits]
    flow_store: Path | None = None  # an existing frame + flow store of these videos; None = compute one
    refused: list[tuple[str, str]] = field(default_factory=list)  # files found but refused: (path, why)
    # Videos the protocol scores (in `splits`; loo: any) that the annotations list but that are not under
    # `root`: misses, excluded.
    absent: list[TransferVideo] = field(default_factory=list)
    scored: str = ""  # train_val: the subset scored, "val", or "test" when the annotations list no val video
    paper: str = ""  # the paper's benchmark it stands for in the report ("" = none)


@dataclass
class TransferResult:
    table: pd.DataFrame  # COLUMNS, a row per benchmark and stream
    notes: list[str]  # the report's lines above the table
    excluded: pd.DataFrame  # EXCLUDED_COLUMNS: every video left out of a stream, and why
    paper_of: dict[str, str]  # benchmark -> the paper's benchmark it stands for
    classes: dict[str, int]  # benchmark -> its number of classes


def run_transfer(benchmarks: Sequence[Benchmark], cfg: TransferConfig, flow_cfg: FlowConfig, out: Path, *,
                 shard: tuple[int, int] = (0, 1)) -> TransferResult | None:
    """Every benchmark through its protocol; None for a shard run (n > 1), which only computes."""
    started = time.monotonic()
    out = Path(out)

    # 1. The benchmarks and the streams, checked before anything is computed.
    for bench in benchmarks:
        _check_benchmark(bench)
    specs = [load_stream_spec(name, Path(getattr(cfg, name))) for name in STREAMS if getattr(cfg, name)]
    if not specs:
        raise FusionError("[transfer] rgb / flow: give an RGB and/or a flow stream checkpoint")
    flow_spec = next((s for s in specs if s.name == "flow"), None)

    # 2. The flow stream's input: every store it will read must hold flow made with its training settings.
    # A given flow_store is opened here, once, and handed on.
    given = {b.name: open_store(b.flow_store) for b in benchmarks if flow_spec is not None and b.flow_store}
    if flow_spec is not None:
        _check_flow_input(flow_spec, benchmarks, flow_cfg, given)

    rows: list[dict] = []
    notes: list[str] = []
    excluded: list[tuple[str, str, str, str]] = []
    for bench in benchmarks:
        # 3. Flow (when a flow stream is given) and the features of this shard's videos.
        videos = sorted(bench.videos, key=lambda v: v.video_id)
        mine = videos[shard[0]::shard[1]]
        flow_root, flow_failed = _flow(bench, videos, out / "flow" / bench.name, flow_cfg, shard, flow_spec,
                                       given=given.get(bench.name))
        print(f"transfer: {bench.name}: features of {len(mine)} videos ({bench.protocol})", flush=True)
        got = extract([VideoJob(v.video_id, v.path) for v in mine], specs, out / "features" / bench.name, flow_root,
                      flow_cfg, clips=cfg.svm_clips, batch_views=cfg.batch_views, device=cfg.device, jobs=cfg.jobs,
                      desc=f"transfer {bench.name}")
        cached = sum(len(f) for f in got.features.values()) - got.computed
        print(f"transfer: {bench.name}: {got.computed} video features computed, {cached} from the cache, "
              f"{sum(len(f) for f in got.failed.values())} failed (per stream)", flush=True)

        # 4. What was left out, and why: videos without features, and files the reader refused.
        if bench.name in given:  # a given store's flow of another file is no flow of this video
            for video_id, reason in _other_sources(given[bench.name], mine).items():
                if got.features.get("flow", {}).pop(video_id, None) is not None:
                    got.failed.setdefault("flow", {})[video_id] = reason
        for video_id, reason in flow_failed.items():  # the flow stage's reason says more than "no flow"
            if video_id in got.failed.get("flow", {}):
                got.failed["flow"][video_id] = reason
        excluded += [(bench.name, stream, v, reason) for stream, reasons in got.failed.items()
                     for v, reason in sorted(reasons.items())]
        excluded += [(bench.name, s.name, path, f"refused: {why}") for path, why in bench.refused for s in specs]
        excluded += [(bench.name, s.name, v.video_id, f"listed in the annotations but not under {shown(bench.root)}")
                     for v in bench.absent for s in specs]
        notes += _exclusion_notes(bench, got)
        if shard[1] > 1:
            continue

        # 5. The protocol, once per stream.
        scored, skipped = _score(bench, got, cfg)
        rows += scored
        notes += skipped
    if shard[1] > 1:
        print(f"transfer: shard {shard[0] + 1}/{shard[1]} computed; run without --shard to score and report "
              f"({time.monotonic() - started:.0f} s)")
        return None

    # 6. The table and what the report says about it.
    head = [f"Streams: {', '.join(f'{s.name} = {s.checkpoint} (sha256 {s.sha256[:12]})' for s in specs)}. "
            f"Features: {cfg.svm_clips} uniformly spaced clips per video, short side resized to the crop, centre "
            "crop, each clip averaged with its mirror, mean over clips; signed square root + L2 (ASLAN: 12 "
            "measures on pool5, prob, res5c, res4); linear SVMs, C by cross-validation on training data only.",
            "excluded: videos without features for that stream (broken or without flow) and files the dataset "
            "reader refused, left out of it."]
    return TransferResult(pd.DataFrame(rows, columns=COLUMNS), head + [f"- {n}" for n in notes],
                          pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS), {b.name: b.paper for b in benchmarks},
                          {b.name: len(b.classes) for b in benchmarks})


def _check_benchmark(bench: Benchmark) -> None:
    if bench.protocol not in PROTOCOLS:
        raise FusionError(f"benchmark.{bench.name}: unknown protocol {bench.protocol!r} "
                          f"(one of {', '.join(PROTOCOLS)})")
    labels = {lab for v in bench.videos for lab in v.labels}
    if len(labels) < 2:
        raise FusionError(f"benchmark.{bench.name}: its videos (under {bench.root}) hold {len(labels)} class(es); "
                          "a classifier needs at least 2")
    if bench.protocol == "aslan_view2":
        if bench.pairs is None:
            raise FusionError(f"benchmark.{bench.name}: aslan_view2 needs View-2's pairs")
        try:  # refused here, before any flow or feature is computed, naming the benchmark
            transfer.check_pairs(bench.pairs)
        except FusionError as err:
            raise FusionError(f"benchmark.{bench.name}: {err}") from None
        if len(np.unique(bench.pairs[:, 2, :])) < 2:
            raise FusionError(f"benchmark.{bench.name}: its View-2 pairs are all "
                              f"{'same' if bench.pairs[0, 2, 0] else 'not-same'}; the protocol needs both")
    for k, (train, scored) in enumerate(bench.splits, 1):
        both = sorted(set(train) & set(scored))
        if both:
            lists = f"split {k} lists" if bench.protocol == "three_split" else "its training and scored subsets list"
            raise FusionError(f"benchmark.{bench.name}: {lists} {len(both)} video(s) both for training and for "
                              f"scoring, e.g. {both[0]}")


def _check_flow_input(spec: Stream, benchmarks: Sequence[Benchmark], flow_cfg: FlowConfig,
                      given: dict[str, Store]) -> None:
    """The flow stream's training flow settings against each store it will read: a given `flow_store`'s
    own (`given`: the opened stores by benchmark), or `[flow]`'s for the stores this stage computes.
    StreamsError naming the differing keys that change what the stream is fed (as eval refuses them);
    a warning line for the others."""
    for bench in benchmarks:
        if bench.flow_store is None:
            settings = config_flow_settings(flow_cfg)
            where = f"[flow] (what benchmark.{bench.name}'s flow is computed with)"
        else:
            settings = given[bench.name].flow_settings
            where = f"benchmark.{bench.name}.flow_store {bench.flow_store}"
        for line in check_flow_settings(spec.info, settings, where):
            print(f"warning: {line}", file=sys.stderr, flush=True)


def _flow(bench: Benchmark, videos: Sequence[TransferVideo], root: Path, flow_cfg: FlowConfig,
          shard: tuple[int, int], flow_spec: Stream | None, *,
          given: Store | None = None) -> tuple[Store | Path | None, dict[str, str]]:
    """The flow store of a benchmark (`given`: its flow_store, opened; else computing what it lacks at
    `root`) and this run's failures by video."""
    if flow_spec is None:
        return None, {}
    if given is not None:
        return given, {}
    print(f"transfer: {bench.name}: flow into {root}", flush=True)
    # run_flow shards the id-sorted list itself (the same videos as this stage's shard) and keeps a
    # manifest per shard.
    summary = run_flow([FlowJob(v.video_id, v.path) for v in videos], root, flow_cfg, shard=shard)
    return root, dict(summary.failures)


def _other_sources(store: Store, videos: Sequence[TransferVideo]) -> dict[str, str]:
    """Videos of a given flow_store whose stored flow was made from another file than the benchmark's,
    with why. The store's index records each source's size: a copy keeps it, another video (a swapped
    or re-encoded file) does not. Paths and times are not compared: a store made on another machine, or
    copied, names its own. Before this, such flow was scored as the video's, and two_stream paired each
    RGB with another video's flow without a word."""
    entries = store.index.read().entries
    found = {}
    for video in videos:
        entry = entries.get(video.video_id)
        if entry is None or entry.state != "done" or not entry.source_size:
            continue
        try:
            size = os.stat(video.path).st_size
        except OSError:
            continue  # the features fail for it, saying why
        if size != entry.source_size:
            found[video.video_id] = (f"its flow in {shown(store.root)} was made from a file of {entry.source_size} "
                                     f"bytes, but {shown(video.path)} has {size}: another video's flow?")
    return found


def _exclusion_notes(bench: Benchmark, got: Extraction) -> list[str]:
    notes = []
    failed = sorted({v for reasons in got.failed.values() for v in reasons})
    if failed:
        notes.append(f"{bench.name}: {len(failed)} video(s) without features for some stream, left out: "
                     + "; ".join(f"{v} ({_first_reason(got, v)})" for v in failed[:3])
                     + (" ... (all in excluded.csv)" if len(failed) > 3 else ""))
    if bench.absent:
        notes.append(f"{bench.name}: {len(bench.absent)} scored video(s) listed in the annotations are not under "
                     f"{shown(bench.root)}: counted as misses, e.g. {bench.absent[0].video_id} (all in excluded.csv)")
    if bench.refused:
        notes.append(f"{bench.name}: {len(bench.refused)} file(s) under {bench.root} refused by the dataset reader, "
                     "left out: " + "; ".join(f"{path} ({why})" for path, why in bench.refused[:3])
                     + (" ... (all in excluded.csv)" if len(bench.refused) > 3 else ""))
    return notes


def _first_reason(got: Extraction, video_id: str) -> str:
    for stream, reasons in got.failed.items():
        if video_id in reasons:
            return f"{stream}: {reasons[video_id][:120]}"
    return ""


def _pre_normalised(z: np.ndarray) -> np.ndarray:
    """Rows whose signed square root + L2 (what the protocols apply) is `z` again, for z of unit rows
    (svm.two_stream's are, unless a stream's feature is all zero: that row comes back scaled to unit)."""
    return z * np.abs(z)


def _stream_matrix(got: Extraction, stream: str, ids: list[str]) -> np.ndarray:
    if stream == "two_stream":
        return _pre_normalised(svm.two_stream(_stream_matrix(got, "rgb", ids), _stream_matrix(got, "flow", ids)))
    return np.stack([got.features[stream][v]["pool5"] for v in ids]).astype(np.float64)


def aslan_layers(got: Extraction, parts: Sequence[str], usable: set[str]) -> dict[str, dict[int, np.ndarray]]:
    """The layers ASLAN's pair vector is made of, in order: each stream's LAYERS (4 layers x 12
    measures: 48 values; two streams: `rgb_pool5`, ..., `flow_res4`, 96 values), by clip number."""
    return {f"{p}_{layer}" if len(parts) > 1 else layer: {int(v): got.features[p][v][layer] for v in usable}
            for p in parts for layer in LAYERS}


def _score(bench: Benchmark, got: Extraction, cfg: TransferConfig) -> tuple[list[dict], list[str]]:
    """The benchmark's rows, one per stream; and notes on what was not scored: a stream with no usable
    video or with nothing its protocol can score (no row), a split or View-2 fold left out (the row is
    the others')."""
    streams = [s for s in STREAMS if s in got.features]
    if len(streams) == 2:
        streams.append("two_stream")
    rows, notes = [], []
    for stream in streams:
        parts = ("rgb", "flow") if stream == "two_stream" else (stream,)
        usable = {v.video_id for v in bench.videos if all(v.video_id in got.features[p] for p in parts)}
        excluded = len(bench.videos) - len(usable) + len(bench.refused) + len(bench.absent)
        if not usable:
            notes.append(f"{bench.name}: no {stream} row: none of its {len(bench.videos)} videos has {stream} "
                         "features")
            continue
        try:
            result, details = _protocol(bench, got, stream, parts, usable, cfg)
        except transfer.NothingToScore as err:  # every scored video broken, say: this benchmark x stream only
            notes.append(f"{bench.name}: no {stream} row: {bench.protocol}: {err} (the videos left out are in "
                         "excluded.csv)")
            continue
        except FusionError as err:  # what an SVM refuses stops this benchmark x stream, not the whole report
            notes.append(f"{bench.name}: no {stream} row: {bench.protocol}: {err}")
            continue
        if result.skipped:
            notes.append(f"{bench.name} / {stream}: not scored: {'; '.join(result.skipped)}; its figures are "
                         "those of the others")
            details = "; ".join([d for d in (details, f"not scored: {'; '.join(result.skipped)}") if d])
        rows.append({"benchmark": bench.name, "protocol": bench.protocol, "stream": stream,
                     "accuracy": result.accuracy, "se": result.metrics.get("se", float("nan")),
                     "auc": result.metrics.get("auc", float("nan")),
                     "hit@3": result.metrics.get("hit@3", float("nan")),
                     "mAP": result.metrics.get("mAP", float("nan")), "videos": result.videos,
                     "excluded": excluded, "selected": result.selected, "details": details})
    return rows, notes


def _protocol(bench: Benchmark, got: Extraction, stream: str, parts: tuple[str, ...], usable: set[str],
              cfg: TransferConfig) -> tuple[transfer.ProtocolResult, str]:
    """The benchmark's protocol on one stream's usable videos, and the row's details;
    transfer.NothingToScore when they leave it nothing to score."""
    by_id = {v.video_id: v for v in [*bench.videos, *bench.absent]}
    kwargs = dict(cs=cfg.svm_cs, folds=cfg.svm_folds, seed=cfg.seed)
    if bench.protocol == "aslan_view2":
        result = transfer.aslan_view2(aslan_layers(got, parts, usable), bench.pairs, cfg.aslan_normalisation,
                                      **kwargs)
        total = bench.pairs.shape[0] * bench.pairs.shape[2]
        return result, f"{result.excluded} of {total} pairs left out (a clip without features)"
    if bench.protocol == "three_split":
        ids = [v.video_id for v in bench.videos if v.video_id in usable]
        row = {v: i for i, v in enumerate(ids)}
        splits = [(np.array([row[v] for v in train if v in row], dtype=int),
                   np.array([row[v] for v in scored if v in row], dtype=int)) for train, scored in bench.splits]
        groups = svm.fold_groups([by_id[v].group for v in ids], ids)
        missing = [[v for v in scored if v not in row] for _, scored in bench.splits]
        result = transfer.three_split(_stream_matrix(got, stream, ids), [by_id[v].labels[0] for v in ids],
                                      groups, splits, len(bench.classes), missing=missing, **kwargs)
        tested = {v for _, scored in bench.splits for v in scored}
        absent = (f"; {result.excluded} of the splits' {len(tested)} test videos have no features: counted as "
                  "misses") if result.excluded else ""
        return result, ", ".join(f"{k} {v:.2f}" for k, v in result.metrics.items()) + absent
    if bench.protocol == "train_val":
        (train_ids, scored_ids), = bench.splits
        train = [v for v in train_ids if v in usable]
        test = [v for v in scored_ids if v in usable]
        missing = [by_id[v].labels for v in scored_ids if v not in usable]
        subset = {"val": "validation", "test": "test (the annotations list no validation video)"}.get(
            bench.scored, "validation (or test)")
        if not train or not test:  # before the feature matrices, which cannot be empty
            raise transfer.NothingToScore(f"{len(train)} training and {len(test)} {subset} videos with "
                                          f"{' and '.join(parts)} features; it needs both")
        # C on group-disjoint folds where the format has groups (UCF101, HMDB51, SynthActions), as every SVM's
        result = transfer.train_validation(
            _stream_matrix(got, stream, train), [by_id[v].labels for v in train],
            _stream_matrix(got, stream, test), [by_id[v].labels for v in test], len(bench.classes),
            groups_train=svm.fold_groups([by_id[v].group for v in train], train), labels_missing=missing,
            **kwargs)
        return result, (f"{len(train)} training videos; scored: the {subset} videos; {len(missing)} of them "
                        "without features count as misses")
    ids = [v.video_id for v in bench.videos if v.video_id in usable]  # loo
    missing = len(bench.videos) + len(bench.absent) - len(ids)
    # C's folds inside each N - 1 keep a group on one side, as every SVM's where groups are known
    return (transfer.leave_one_out(_stream_matrix(got, stream, ids), [by_id[v].labels[0] for v in ids],
                                   len(bench.classes), missing=missing,
                                   groups=svm.fold_groups([by_id[v].group for v in ids], ids), **kwargs),
            f"{missing} of the {len(bench.videos) + len(bench.absent)} videos have no features: counted as misses"
            if missing else "")
