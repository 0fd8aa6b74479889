"""`python -m pipeline transfer`: the paper's representation test across benchmarks, one table.

For each benchmark of `[transfer] benchmarks`: read its videos with the dataset readers, compute
the flow its videos need (the flow stage's code, a store per benchmark under
work_dir/transfer/flow/NAME, resumable, broken videos recorded in its manifest) when a flow stream
is given, extract the cached features (fusion.transfer_features), and run its protocol
(fusion.transfer) for each stream: rgb, flow and, with both, two_stream. Then one report:
work_dir/transfer/results.csv, results.md (the paper's figures beside ours), results.png.

`--shard i/n` computes flow and features for every n-th video only (each shard writes its own cache
files) and scores nothing; a run without --shard then finds every feature cached and writes the report.
"""
from __future__ import annotations

import difflib
import time
from pathlib import Path

import numpy as np
import pandas as pd

from flow.stage import FlowJob, run_flow
from fusion import svm, transfer
from fusion.errors import FusionError
from fusion.transfer_features import LAYERS, Extraction, VideoJob, extract, load_stream_spec
from p3dbase.atomic import write_text
from pipeline.config import Config, write_resolved
from pipeline.datasets import Dataset, read_dataset
from pipeline.datasets.aslan import read_view2
from pipeline.errors import ConfigError, PipelineError
from pipeline.synth.companions import generate_companions
from pipeline.transfer.config import PAPER_BENCHMARKS, BenchmarkConfig
from pipeline.transfer.report import COLUMNS, write_report
from streams.errors import StreamsError

STREAMS = ("rgb", "flow")


def transfer_dir(cfg: Config) -> Path:
    return cfg.work / "transfer"


def check_config(cfg: Config, source: str = "<config>") -> None:
    """What the transfer stage needs beyond each section's own checks, named by key."""
    t = cfg.transfer
    if not t.rgb and not t.flow:
        raise ConfigError(f"{source}: [transfer] rgb / flow: give an RGB and/or a flow stream checkpoint")
    if not t.benchmarks:
        raise ConfigError(f"{source}: [transfer] benchmarks: name at least one [benchmark.NAME] table")
    for name in t.benchmarks:
        if name not in cfg.benchmark:
            close = difflib.get_close_matches(name, list(cfg.benchmark), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: transfer.benchmarks names {name!r} but there is no [benchmark.{name}] "
                              f"section{hint}")


def transfer_stage(cfg: Config, *, shard: tuple[int, int] = (0, 1), source: str = "<config>") -> pd.DataFrame | None:
    """Run every benchmark; returns the results table (None for a shard run, which only computes)."""
    started = time.monotonic()
    check_config(cfg, source)
    t = cfg.transfer
    out = transfer_dir(cfg)
    specs = []
    for name in STREAMS:
        path = getattr(t, name)
        if not path:
            continue
        if not Path(path).exists():
            raise PipelineError(f"transfer.{name}: {path} does not exist: point it at a stream checkpoint or a "
                                "training folder (configs/transfer.toml uses `make all`'s: run `make all` first)")
        try:
            specs.append(load_stream_spec(name, Path(path)))
        except (StreamsError, FusionError) as e:
            raise PipelineError(f"transfer.{name}: {e}") from None
    write_resolved(cfg, out)
    if t.companions:
        generate_companions(t.companions)
    rows: list[dict] = []
    notes: list[str] = []
    excluded: list[tuple[str, str, str, str]] = []  # benchmark, stream, video, why
    for name in t.benchmarks:
        bench = cfg.benchmark[name]
        dataset, pairs = _read(name, bench)
        videos = sorted(dataset.videos, key=lambda v: v.video_id)
        mine = videos[shard[0]::shard[1]]
        flow_root, flow_failed = _flow(cfg, name, bench, videos, shard, any(s.name == "flow" for s in specs))
        print(f"transfer: {name}: features of {len(mine)} videos ({bench.resolved_protocol()})", flush=True)
        got = extract([VideoJob(v.video_id, v.path) for v in mine], specs, out / "features" / name, flow_root,
                      cfg.flow, clips=t.clips, batch_views=t.batch_views, device=t.device, jobs=t.jobs,
                      desc=f"transfer {name}")
        cached = sum(len(f) for f in got.features.values()) - got.computed
        print(f"transfer: {name}: {got.computed} video features computed, {cached} from the cache, "
              f"{sum(len(f) for f in got.failed.values())} failed (per stream)", flush=True)
        for video_id, reason in flow_failed.items():  # the flow stage's reason says more than "no flow"
            if video_id in got.failed.get("flow", {}):
                got.failed["flow"][video_id] = reason
        excluded += [(name, stream, v, reason) for stream, reasons in got.failed.items()
                     for v, reason in sorted(reasons.items())]
        failed = sorted({v for reasons in got.failed.values() for v in reasons})
        if failed:
            notes.append(f"{name}: {len(failed)} video(s) without features for some stream, left out: "
                         + "; ".join(f"{v} ({_first_reason(got, v)})" for v in failed[:3])
                         + (" ... (all in excluded.csv)" if len(failed) > 3 else ""))
        if shard[1] > 1:
            continue
        scored, skipped = _score(name, bench, dataset, pairs, got, cfg)
        rows += scored
        notes += skipped
    if shard[1] > 1:
        print(f"transfer: shard {shard[0] + 1}/{shard[1]} computed; run without --shard to score and report "
              f"({time.monotonic() - started:.0f} s)")
        return None
    table = pd.DataFrame(rows, columns=COLUMNS)
    paper_of = {name: cfg.benchmark[name].paper or (name if name in PAPER_BENCHMARKS else "")
                for name in t.benchmarks}
    head = [f"Streams: {', '.join(f'{s.name} = {s.checkpoint} (sha256 {s.sha256[:12]})' for s in specs)}. "
            f"Features: {t.clips} uniformly spaced clips per video, short side resized to the crop, centre crop, "
            "each clip averaged with its mirror, mean over clips; signed square root + L2 (ASLAN: 12 "
            "measures on pool5, prob, res5c, res4); linear SVMs, C by cross-validation on training data only.",
            "excluded: videos without features for that stream (broken or without flow), left out of it."]
    if t.companions:
        head.append(f"The benchmarks under {t.companions} are generated stand-ins in the real layouts "
                    "(pipeline/synth/companions.py): they exercise each protocol, and their numbers are not "
                    "comparable with the paper's, which are shown for reference.")
    text = write_report(table, out, paper_of, head + [f"- {n}" for n in notes])
    write_text(out / "excluded.csv", pd.DataFrame(excluded, columns=["benchmark", "stream", "video_id", "reason"])
               .to_csv(index=False))
    print(text)
    print(f"transfer: report in {out} (results.csv, results.md, results.png, excluded.csv; "
          f"{time.monotonic() - started:.0f} s)")
    return table


def _read(name: str, bench: BenchmarkConfig) -> tuple[Dataset, np.ndarray | None]:
    dataset = read_dataset(bench)
    pairs = read_view2(bench.annotations) if bench.format == "aslan" else None
    labels = {lab for v in dataset.videos for lab in v.labels}
    if len(labels) < 2:
        raise PipelineError(f"benchmark.{name}: its videos (under {bench.root}) hold {len(labels)} class(es); "
                            "a classifier needs at least 2")
    if pairs is not None and len(np.unique(pairs[:, 2, :])) < 2:
        raise PipelineError(f"benchmark.{name}: {bench.annotations} has only "
                            f"{'same' if pairs[0, 2, 0] else 'not-same'} pairs; the protocol needs both")
    return dataset, pairs


def _flow(cfg: Config, name: str, bench: BenchmarkConfig, videos, shard: tuple[int, int],
          needed: bool) -> tuple[Path | None, dict[str, str]]:
    """The flow store of a benchmark (computing what it lacks) and this run's failures by video."""
    if not needed:
        return None, {}
    if bench.flow_store:
        root = Path(bench.flow_store)
        if not (root / "store.json").is_file():
            raise PipelineError(f"benchmark.{name}.flow_store: no frame + flow store at {root} (no store.json); "
                                "run `make flow` for it, or set flow_store = \"\" to compute one")
        return root, {}
    root = transfer_dir(cfg) / "flow" / name
    print(f"transfer: {name}: flow into {root}", flush=True)
    # run_flow shards the id-sorted list itself (the same videos as this stage's shard) and keeps a
    # manifest per shard.
    summary = run_flow([FlowJob(v.video_id, v.path) for v in videos], root, cfg.flow, shard=shard)
    return root, dict(summary.failures)


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


def _score(name: str, bench: BenchmarkConfig, dataset: Dataset, pairs: np.ndarray | None, got: Extraction,
           cfg: Config) -> tuple[list[dict], list[str]]:
    """The benchmark's rows, one per stream; and notes on streams with no usable video (no row)."""
    t = cfg.transfer
    protocol = bench.resolved_protocol()
    streams = [s for s in STREAMS if s in got.features]
    if len(streams) == 2:
        streams.append("two_stream")
    num_classes = len(dataset.classes)
    rows, skipped = [], []
    for stream in streams:
        parts = ("rgb", "flow") if stream == "two_stream" else (stream,)
        usable = {v.video_id for v in dataset.videos if all(v.video_id in got.features[p] for p in parts)}
        excluded = len(dataset.videos) - len(usable)
        if not usable:
            skipped.append(f"{name}: no {stream} row: none of its {len(dataset.videos)} videos has {stream} features")
            continue
        kwargs = dict(cs=t.cs, folds=t.folds, seed=t.seed)
        details = ""
        if protocol == "aslan_view2":
            layers = {f"{p}_{layer}" if len(parts) > 1 else layer:
                      {int(v): got.features[p][v][layer] for v in usable} for p in parts for layer in LAYERS}
            result = transfer.aslan_view2(layers, pairs, t.aslan_normalisation, **kwargs)
            details = f"{result.excluded} of {result.videos + result.excluded} pairs left out (a clip without features)"
        elif protocol == "three_split":
            videos = [v for v in dataset.videos if v.video_id in usable]
            row = {v.video_id: i for i, v in enumerate(videos)}
            splits = [(np.array([row[v.video_id] for v in d.train() if v.video_id in row], dtype=int),
                       np.array([row[v.video_id] for v in d.test() + d.val() if v.video_id in row], dtype=int))
                      for _, d in sorted(dataset.splits().items())]
            groups = [v.group for v in videos] if all(v.group for v in videos) else None
            result = transfer.three_split(_stream_matrix(got, stream, [v.video_id for v in videos]),
                                          [v.label for v in videos], groups, splits, num_classes, **kwargs)
            details = ", ".join(f"{k} {v:.2f}" for k, v in result.metrics.items())
        elif protocol == "train_val":
            train = [v for v in dataset.train() if v.video_id in usable]
            scored = dataset.val() or dataset.test()
            test = [v for v in scored if v.video_id in usable]
            missing = [v.labels for v in scored if v.video_id not in usable]
            if not train or not test:
                raise FusionError(f"benchmark.{name}: train_val needs training and validation (or test) videos "
                                  f"with features; has {len(train)} and {len(test)}")
            result = transfer.train_validation(
                _stream_matrix(got, stream, [v.video_id for v in train]), [v.labels for v in train],
                _stream_matrix(got, stream, [v.video_id for v in test]), [v.labels for v in test], num_classes,
                labels_missing=missing, **kwargs)
            details = f"{len(train)} training videos; {len(missing)} scored videos without features count as misses"
        else:  # loo
            videos = [v for v in dataset.videos if v.video_id in usable]
            result = transfer.leave_one_out(_stream_matrix(got, stream, [v.video_id for v in videos]),
                                            [v.label for v in videos], num_classes, **kwargs)
        rows.append({"benchmark": name, "protocol": protocol, "stream": stream, "accuracy": result.accuracy,
                     "se": result.metrics.get("se", float("nan")), "auc": result.metrics.get("auc", float("nan")),
                     "hit@3": result.metrics.get("hit@3", float("nan")),
                     "mAP": result.metrics.get("mAP", float("nan")), "videos": result.videos,
                     "excluded": excluded, "selected": result.selected, "details": details})
    return rows, skipped
