"""Stages as functions from artifacts on disk to artifacts on disk.

This is the one place that knows the datasets and every stage's config: it turns dataset records into
the plain (video_id, label) lists the stage packages take, and chooses where each stage writes.
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from flow.manifest import read_manifest
from flow.stage import FlowJob, FlowSummary, read_only_store, run_flow
from flow.store import Store, open_store, store_exists
from flow.verify import VerifyReport, verify_store
from p3dbase.atomic import write_text
from p3dbase.errors import P3DError, file_problem, refusal, shown
from p3dbase.lock import try_lock
from p3dbase.overwrite import output_folder, refuse_overwrite
from pipeline.config import Config, dump_toml, write_resolved
from pipeline.datasets import Dataset, read_dataset
from pipeline.datasets.files import video_id_of
from pipeline.datasets.records import training_item
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import pandas as pd

    from fusion.transfer_stage import Benchmark

# The stages of the network packages (synth, train, eval, transfer) import them when they run: `flow` and
# `verify` over 650,000 videos should not pay for torch, scikit-learn and matplotlib (bench/scale.py).

MISSING = "missing.txt"  # in the store: the listed videos not found under dataset.root, one a line


def flow_dir(cfg: Config) -> Path:
    return cfg.work / "flow"


def run_dir(cfg: Config) -> Path:
    """Where a run's training and eval go: work_dir itself for the default run (`train.run = ""`),
    work_dir/runs/<run> for a named one. Every run shares work_dir/flow."""
    return cfg.work / "runs" / cfg.train.run if cfg.train.run else cfg.work


def train_dir(cfg: Config, stream: str, split: str) -> Path:
    return run_dir(cfg) / "train" / stream / f"split{split}"


def eval_dir(cfg: Config) -> Path:
    return run_dir(cfg) / "eval"


def explicit_eval_dir(cfg: Config, checkpoints: dict[str, Path], out: Path | None = None) -> Path:
    """Where `eval --rgb/--flow` reports: `--out`; else the run's eval folder when `--run` names one;
    else beside the checkpoints (`<folder of the first>/eval-<their names>`), so that scoring some
    checkpoint never overwrites `make eval`'s report."""
    if out is not None:
        return Path(out)
    if cfg.train.run:
        return eval_dir(cfg)
    paths = [Path(checkpoints[name]) for name in ("rgb", "flow") if name in checkpoints]
    names = "+".join(p.name if p.is_dir() else p.stem for p in paths)
    return paths[0].absolute().parent / f"eval-{names}"


def held_out(cfg: Config, dataset: Dataset) -> tuple[set[str], str]:
    """The training-split videos held out as validation (`train.val_groups` by name, or
    `train.val_fraction` of the split's groups, chosen by `train.seed`), and a phrase naming their groups.
    Whole groups go, so no actor or scene of a held-out video is trained on; a video without a group
    is its own group. PipelineError for a named group the split lacks, or when nothing would be left."""
    tc = cfg.train
    if not tc.val_groups and not tc.val_fraction:
        return set(), ""
    train = dataset.train()
    group_of = {v.video_id: v.group if v.group is not None else v.video_id for v in train}
    groups = sorted(set(group_of.values()))
    if tc.val_groups:
        unknown = sorted(set(tc.val_groups) - set(groups))
        if unknown:
            raise PipelineError(f"train.val_groups: {', '.join(unknown)} not among the groups of split "
                                f"{dataset.split}'s training videos (e.g. {', '.join(groups[:5])})")
        chosen = sorted(set(tc.val_groups))
    else:
        count = max(1, round(tc.val_fraction * len(groups)))
        order = np.random.default_rng(tc.seed).permutation(len(groups))
        chosen = sorted(groups[i] for i in order[:count])
    if len(chosen) >= len(groups):
        raise PipelineError(f"train.val_groups / val_fraction would hold out all {len(groups)} groups of split "
                            f"{dataset.split}'s training videos: nothing would be left to train on")
    shown = ", ".join(chosen[:8]) + (f" and {len(chosen) - 8} more" if len(chosen) > 8 else "")
    videos = {v for v, g in group_of.items() if g in set(chosen)}
    # No video count: the callers count the held-out videos they use (those with frames and flow).
    return videos, f"{len(chosen)} of the training split's {len(groups)} groups: {shown}"


def split_datasets(cfg: Config) -> list[tuple[str, Dataset]]:
    """(split name, the videos with their roles in it): three of them for `dataset.split = "all"` on
    UCF101, HMDB51 and SynthActions (the three-split protocol), else one."""
    dataset = read_dataset(cfg.dataset)
    if dataset.per_split:
        return sorted(dataset.per_split.items())
    return [("1" if dataset.split == "all" else dataset.split, dataset)]


def synth_stage(cfg: Config, *, force: bool = False) -> None:
    from pipeline.synth import generate

    if cfg.dataset.format != "synth":
        raise PipelineError(f"the synth stage writes SynthActions, but dataset.format is "
                            f"{cfg.dataset.format!r}: use configs/synth.toml or --set dataset.format=synth")
    if not cfg.dataset.root:
        raise PipelineError("dataset.root is empty: set the folder SynthActions is written to, "
                            "e.g. --set dataset.root=work/synth")
    root = Path(cfg.dataset.root)
    generate(cfg.synth, root, force=force)  # prints its own summary
    write_resolved(cfg, root)


def flow_stage(cfg: Config, *, shard: tuple[int, int] = (0, 1), force: bool = False,
               strict: bool = False) -> FlowSummary:
    dataset = read_dataset(cfg.dataset)
    # A finished store on a read-only mount is reported as done (run_flow); any other is made writable here.
    out = flow_dir(cfg)
    read_only = read_only_store(out, force)
    if not read_only:
        out = output_folder(out, "the flow store")
    if dataset.missing:
        print(f"{len(dataset.missing)} video(s) listed in the annotations are not under {dataset.root} and "
              f"are skipped (all listed in {out / MISSING}), e.g. {', '.join(dataset.missing[:3])}")
    # source = "rawframes": each video's frame folder, under flow.rawframes_root or the dataset's own path
    frames_root = Path(cfg.flow.rawframes_root) if cfg.flow.source == "rawframes" and cfg.flow.rawframes_root else None
    jobs = [FlowJob(v.video_id, frames_root / v.video_id if frames_root else v.path) for v in dataset.videos]
    jobs += _refused_jobs(dataset)
    summary = run_flow(jobs, out, cfg.flow, shard=shard, force=force, strict=strict, config_toml=dump_toml(cfg))
    if read_only:
        return summary
    # One file, not a line each: Sports-1M lists about 100k videos no longer online. None missing: no
    # file (and none left from a run that had some).
    if dataset.missing:
        write_text(out / MISSING, "".join(f"{video}\n" for video in dataset.missing))
    else:
        (out / MISSING).unlink(missing_ok=True)
    if cfg.flow.store == "mmaction" and shard[1] == 1:
        for path in write_mmaction_lists(cfg, out):
            print(f"flow: mmaction2 list {path}")
    return summary


def _refused_jobs(dataset: Dataset) -> list[FlowJob]:
    """The manifest lists refused files (a link out of the root, an odd name) as failed, with why: a
    row per video id. A refused file whose id is a video's computed here (`a1.mp4` beside `a1.avi`)
    has no row of its own; it is named here (and in the log), not taken for a second video of that id."""
    if not dataset.refused:  # the common case: no set of 650,000 ids to build
        return []
    computed = {v.video_id for v in dataset.videos}
    reasons: dict[str, list[tuple[str, str]]] = {}
    for rel, why in dataset.refused:
        reasons.setdefault(video_id_of(PurePosixPath(rel)), []).append((rel, why))
    beside = [f"{rel}: {why}" for video_id, refused in reasons.items() if video_id in computed for rel, why in refused]
    if beside:
        print(f"flow: {len(beside)} refused file(s) share the id of a video computed here, so the manifest has "
              f"no row of theirs: {'; '.join(beside[:3])}{' ...' if len(beside) > 3 else ''}")
    return [FlowJob(video_id, dataset.root / refused[0][0], error="refused: " + "; ".join(
                why if len(refused) == 1 else f"{rel}: {why}" for rel, why in refused))
            for video_id, refused in reasons.items() if video_id not in computed]


def write_mmaction_lists(cfg: Config, store_root: Path) -> list[Path]:
    """mmaction2 rawframe lists of the store (`<video_id> <frames> <label> [label ...]`, data_prefix =
    the store): per split and subset, `<format>_<subset>_split_<k>_rawframes.txt` with the RGB frame
    count N and `..._rawframes_flow.txt` with the flow count N - 1 (mmaction2 reads `total_frames`
    images of the modality). Counts from the store's manifest; videos that failed are left out, and so
    are ids holding whitespace (mmaction2 splits a line at it: the list would not read back), named in
    one line. With them `<format>_label_map.txt`, the class names one a line in label order (mmaction2's
    label map)."""
    rows = {v: r for v, r in read_manifest(store_root / "manifest.csv").items() if r.status == "done"}
    if spaced := {v for v in rows if any(c.isspace() for c in v)}:
        named = sorted(spaced)
        print(f"flow: {len(named)} video id(s) hold whitespace, which splits a line of mmaction2's lists: left "
              f"out of them (rename their folders, e.g. spaces to _ as Kinetics' tools do): "
              f"{', '.join(shown(v) for v in named[:3])}{' ...' if len(named) > 3 else ''}")
        rows = {v: r for v, r in rows.items() if v not in spaced}
    written = []
    for split, dataset in split_datasets(cfg):
        if not written:
            label_map = store_root / f"{cfg.dataset.format}_label_map.txt"
            write_text(label_map, "".join(f"{name}\n" for name in dataset.classes))
            written.append(label_map)
        for subset in ("train", "val", "test"):
            videos = [v for v in dataset.videos if v.split == subset and v.video_id in rows]
            if not videos:
                continue
            for suffix, count in (("", "frames"), ("_flow", "flow_pairs")):
                path = store_root / f"{cfg.dataset.format}_{subset}_split_{split}_rawframes{suffix}.txt"
                text = "".join(f"{v.video_id} {getattr(rows[v.video_id], count)} {' '.join(map(str, v.labels))}\n"
                               for v in videos)
                write_text(path, text)
                written.append(path)
    return written


def verify_stage(cfg: Config) -> VerifyReport:
    """`verify`: read every finished video of the run's flow store and check it (flow.verify); damaged
    videos are listed in the store's verify-report.csv and redone by the next `flow` run."""
    if store_exists(flow_dir(cfg)) and (running := open_store(flow_dir(cfg)).running_flows()):
        print(f"verify: a `flow` run ({running[0]}) is writing this store: the videos it finishes after this "
              "check are not checked")
    return verify_store(flow_dir(cfg), jobs=cfg.flow.jobs)


def _flow_store(cfg: Config, stage: str) -> tuple[Store, set[str]]:
    """The run's frame + flow store, opened once for a stage (flow.store.StoreMissing says to run the flow
    stage first), and its finished videos."""
    store = open_store(flow_dir(cfg), purpose=stage)
    running = store.running_flows()
    if running:  # it would take the videos finished so far for the whole store
        more = f" and {len(running) - 1} more" if len(running) > 1 else ""
        raise PipelineError(f"the flow store {shown(store.root)} is being written by a running `flow` "
                            f"({running[0]}{more}): {stage} would read only the videos finished so far; "
                            "wait for it to end, then re-run")
    return store, set(store.video_ids())


def _left_out(store: Store, dataset: Dataset, done: set[str]) -> None:
    """Say which of the dataset's videos have no frames and flow in the store."""
    missing = sorted(v.video_id for v in dataset.videos if v.video_id not in done)
    if missing:
        print(f"{len(missing)} video(s) have no frames/flow (failed or not run in `make flow`; see "
              f"{store.manifest_path()}) and are left out, e.g. {', '.join(missing[:3])}")


def train_stage(cfg: Config, stream: str) -> None:
    """Train the `stream` of every split (one, or three for `dataset.split = "all"`) on the store's videos:
    work_dir/train/<stream>/split<k> (streams.train.train_stream)."""
    from streams.distributed import main_process_speaks

    with main_process_speaks():
        _train_splits(cfg, stream)


def _train_splits(cfg: Config, stream: str) -> None:
    from streams.checkpoint import LAST
    from streams.loaders import StreamData
    from streams.train import train_stream

    store, done = _flow_store(cfg, f"train-{stream}")
    for split, dataset in split_datasets(cfg):
        _left_out(store, dataset, done)
        held, note = held_out(cfg, dataset)
        train = [training_item(v) for v in dataset.videos
                 if v.split == "train" and v.video_id in done and v.video_id not in held]
        if held:  # validation (and the accuracy it prints) on the held-out groups, never the test split
            val = [training_item(v) for v in dataset.videos if v.video_id in held and v.video_id in done]
            print(f"train: held out as validation: {len(val)} videos of {note}")
        else:
            val = [training_item(v) for v in dataset.videos
                   if v.split in ("test", "val") and v.video_id in done]
        if not train:
            raise PipelineError(f"split {split} of {cfg.dataset.format} has no training video with flow")
        _unseen_classes(dataset, train)
        out = train_dir(cfg, stream, split)
        if not (out / LAST).is_file():  # a finished run on a read-only disk: train_stream reports it as trained
            output_folder(out, "the training folder")
        # config.toml is written beside the checkpoints once train_stream has accepted the settings
        train_stream(StreamData(store, train, val, dataset.classes), stream, cfg.model, cfg.train, out,
                     config_toml=dump_toml(cfg))


def _unseen_classes(dataset: Dataset, train: list[tuple[str, int | tuple[int, ...]]]) -> None:
    """A warning naming the classes no training video has (all failed in `make flow`, held out, or
    none listed): the network can never predict them, and it trained without a word."""
    seen = {label for _, labels in train for label in (labels if isinstance(labels, tuple) else (labels,))}
    unseen = [c for i, c in enumerate(dataset.classes) if i not in seen]
    if unseen:
        print(f"train: warning: {len(unseen)} of the {len(dataset.classes)} classes have no training video "
              f"(e.g. {', '.join(shown(c) for c in unseen[:3])}): the network can never predict them", flush=True)


def eval_out_dir(cfg: Config, checkpoints: dict[str, Path] | None, out: Path | None = None) -> Path:
    """Where eval reports: `--out` when given (with or without --rgb/--flow); else beside given
    checkpoints (explicit_eval_dir), or the run's eval folder for its own streams."""
    if checkpoints:
        return explicit_eval_dir(cfg, checkpoints, out)
    return Path(out) if out is not None else eval_dir(cfg)


_SPLIT = re.compile(r"split\d+")  # a split's report folder under a three-split eval's


def not_a_report_folder(folder: Path) -> str:
    """A few entries of an existing folder that is neither empty nor an evaluation's ("" when it is one
    of those): one with a report (report.json, or a split's), or only what a killed eval leaves (its
    cache, its log, split folders, hidden staging folders)."""
    from fusion.report import MOVING, REPORT_MARKER

    def a_report(where: Path) -> bool:  # MOVING: a report killed while its files moved in (its re-run repairs it)
        return (where / REPORT_MARKER).is_file() or (where / MOVING).exists()

    if not folder.is_dir() or a_report(folder):
        return ""
    names = sorted(os.listdir(folder))
    if any(a_report(folder / n) for n in names if _SPLIT.fullmatch(n)):
        return ""
    own = ("cache", "eval.log")
    foreign = [n for n in names if not (n in own or n.startswith(".") or _SPLIT.fullmatch(n))]
    return ", ".join(shown(n) for n in foreign[:3]) + (" ..." if len(foreign) > 3 else "")


def eval_stage(cfg: Config, checkpoints: dict[str, Path] | None = None, *, allow_trained: bool = False,
               out: Path | None = None) -> None:
    """Evaluate a run's streams (default: both, the finished models of its training runs) or the given
    checkpoints ({"rgb": path, "flow": path}, one or both: files, imported weights or run folders), split
    by split (fusion.stage.run_eval); three splits are averaged. `allow_trained`: score test videos (or
    choose on held-out videos) a checkpoint was trained on, saying so in the report, instead of refusing.
    The report goes to `out`, else beside given checkpoints, never into `make eval`'s folder
    (eval_out_dir); one eval at a time writes a report folder (a second one's files would be renamed from
    under the first)."""
    from fusion.stage import EvalJob, average_splits, run_eval
    from streams.checkpoint import LAST

    tables = []
    out_root = eval_out_dir(cfg, checkpoints, out)
    if out_root.exists() and not out_root.is_dir():
        raise PipelineError(f"eval --out {shown(out_root)} is a file; the report is a folder: give a folder name")
    if foreign := not_a_report_folder(out_root):
        raise PipelineError(f"eval --out {shown(out_root)} holds files no evaluation wrote ({foreign}) and no report: "
                            "a report's files would replace or delete them (results.md, features/, ...); give a "
                            "new or empty folder")
    output_folder(out_root, "the eval report folder")
    with try_lock(out_root.parent / f".{out_root.name}.lock") as holder:
        if holder:
            raise PipelineError(f"{shown(out_root)} is being written by another eval run (pid {holder}): wait for "
                                "it to finish, or report elsewhere (--out FOLDER)")
        splits = split_datasets(cfg)
        if checkpoints and len(splits) > 1:
            raise PipelineError("--rgb/--flow give one checkpoint per stream, but dataset.split = \"all\" "
                                "evaluates three splits, each with its own training: evaluate one split "
                                "(--set dataset.split=1)")
        if not checkpoints and len(splits) > 1:  # every split's training, before a report of any is written
            untrained = [(stream, split) for split, _ in splits for stream in ("rgb", "flow")
                         if not (train_dir(cfg, stream, split) / LAST).is_file()]
            if untrained:
                stream, split = untrained[0]
                where = shown(train_dir(cfg, stream, split))
                raise PipelineError(f"no finished {stream} stream for split {split} ({where}; {len(untrained)} of the "
                                    f"{2 * len(splits)} the three splits need): train them "
                                    "with `python -m pipeline train --stream rgb|flow` and this eval's --config, "
                                    '--run and --set dataset.split="all" (make: ARGS=\'--set dataset.split="all"\')')
        store, done = _flow_store(cfg, "eval")
        for split, dataset in splits:
            _left_out(store, dataset, done)
            held, note = held_out(cfg, dataset)
            train = [(v.video_id, v.labels) for v in dataset.videos
                     if v.split == "train" and v.video_id in done and v.video_id not in held]
            val = [(v.video_id, v.labels) for v in dataset.videos if v.video_id in held and v.video_id in done]
            # Only test videos count as excluded in the report; missing training videos just shrink the SVM's set.
            # The excluded ones stay test videos (never read): ActivityNet's metrics count them as misses.
            absent = f"listed in the {cfg.dataset.format} annotations but not under {shown(dataset.root)}"
            excluded = {v.video_id: absent for v in dataset.absent_scored()}
            excluded |= {v.video_id: "no frames/flow in the store (failed or not run in `make flow`)"
                         for v in dataset.videos if v.split in ("test", "val") and v.video_id not in done}
            test = [(v.video_id, v.labels) for v in [*dataset.videos, *dataset.absent_scored()]
                    if v.split in ("test", "val")]
            streams = checkpoints or {stream: train_dir(cfg, stream, split) for stream in ("rgb", "flow")}
            out = out_root if len(splits) == 1 else out_root / f"split{split}"
            # Groups (UCF101, SynthActions) keep the clips of one group on one side of the SVM's CV folds.
            groups = {v.video_id: v.group for v in dataset.videos if v.split == "train" and v.group}
            job = EvalJob(store, streams, train, test, dataset.classes, protocol=f"{cfg.dataset.format} split {split}",
                          excluded=excluded, val=val, val_note=note, train_groups=groups or None,
                          allow_trained=allow_trained)
            # config.toml moves in with the report: a refused, failed or killed evaluation leaves the last one's
            tables.append(run_eval(job, cfg.eval, out, config_toml=dump_toml(cfg)))
        if len(tables) > 1:
            average_splits(tables, out_root, protocol=f"{cfg.dataset.format} 3-split average",
                           config_toml=dump_toml(cfg))


def transfer_dir(cfg: Config) -> Path:
    return cfg.work / "transfer"


def transfer_stage(cfg: Config, *, shard: tuple[int, int] = (0, 1)) -> pd.DataFrame | None:
    """`[transfer]`: every `[benchmark.NAME]` through its protocol (fusion.transfer_stage), one report in
    work_dir/transfer (results.csv/.md/.png, excluded.csv, report.html), replaced as a whole. A benchmark
    (or stream) left nothing to score gets no row and a note; PipelineError when no benchmark has a row.
    A shard run (n > 1) only computes; None."""
    from fusion.transfer_stage import run_transfer
    from pipeline.synth.companions import generate_companions
    from pipeline.transfer.benchmarks import check_transfer_config, read_benchmark

    # 1. The settings, the companions and every benchmark's annotations: a refusal writes nothing.
    check_transfer_config(cfg)
    if cfg.transfer.companions:
        generate_companions(cfg.transfer.companions)
    benchmarks = [read_benchmark(name, cfg.benchmark[name]) for name in cfg.transfer.benchmarks]
    # 2. Flow, features and protocols.
    out = output_folder(transfer_dir(cfg), "the transfer report folder")
    if shard != (0, 1):  # shards only compute, side by side by design: no report, no lock
        # No config.toml either: it is the report's (staged with it), and the caches carry their settings.
        run_transfer(benchmarks, cfg.transfer, cfg.flow, out, shard=shard)
        return None
    # One report-writing run at a time: a second one computed everything again, then failed on the
    # first one's staged report ("cannot read it ... re-run make transfer").
    with try_lock(out.parent / f".{out.name}.lock") as holder:
        if holder:
            raise PipelineError(f"{shown(out)} is being written by another transfer run (pid {holder}): wait for it "
                                "to finish (a shard run, --shard I/N, may share the work meanwhile)")
        return _transfer_report(cfg, benchmarks, out)


def _transfer_report(cfg: Config, benchmarks: list[Benchmark], out: Path) -> pd.DataFrame:
    """transfer_stage's run that writes the report, holding the folder's lock."""
    from fusion.transfer_stage import run_transfer
    from pipeline.transfer.report import TransferReport, write_report

    result = run_transfer(benchmarks, cfg.transfer, cfg.flow, out)
    assert result is not None  # None is a shard run's
    # 3. The report; generated benchmarks (SynthActions, the companions) are marked as stand-ins.
    companions = Path(cfg.transfer.companions).resolve() if cfg.transfer.companions else None
    stand_ins = [b.name for b in benchmarks if cfg.benchmark[b.name].format == "synth"
                 or (companions and b.root.resolve().is_relative_to(companions))]
    # All its files, config.toml too, replace the last report's together (a kill leaves that one whole).
    print(write_report(out, TransferReport(result.table, result.notes, result.paper_of, result.classes, stand_ins,
                                           result.excluded), config_toml=dump_toml(cfg)))
    print(f"transfer: report in {out} (results.csv, results.md, results.png, excluded.csv, report.html)")
    if result.table.empty:
        raise PipelineError(f"transfer: no benchmark could be scored for any stream (each reason in "
                            f"{out / 'results.md'}); the videos left out are in {out / 'excluded.csv'}")
    return result.table


def report_stage(folder: Path) -> list[Path]:
    """`report WORK_DIR`: report.html of every evaluation and transfer report under `folder`, rebuilt
    from the files those runs wrote (fusion.html_report, pipeline.transfer.report); their paths. A report
    whose files are damaged is skipped with a line saying why and the rest are rebuilt; then
    PipelineError naming the skipped ones (exit status 2)."""
    from fusion.html_report import find_reports, write_average_page, write_eval_page
    from pipeline.transfer.report import write_page

    if not Path(folder).is_dir():
        raise PipelineError(f"{shown(folder)} is not a folder: give a work_dir or a report folder")
    found = find_reports(Path(folder))
    if not found:
        raise PipelineError(f"no evaluation or transfer report under {shown(folder)} (no report_inputs.json): run "
                            "`make eval` or `make transfer` first")
    build = {"eval": write_eval_page, "average": write_average_page, "transfer": write_page}
    pages, skipped = [], []
    # deepest first: an average's page links the split pages beside it, rebuilt before it
    for kind, where in sorted(found, key=lambda f: -len(f[1].parts)):
        try:
            if kind == "damaged":  # a FIFO or a folder in its place is named as such
                inputs = where / "report_inputs.json"
                problem = file_problem(inputs) or "damaged (not the JSON a report wrote)"
                raise PipelineError(f"{shown(inputs)}: {problem}: re-run the stage that wrote it")
            pages.append(build[kind](where))
            print(f"report: wrote {shown(pages[-1])}")
        except (P3DError, OSError) as err:  # OSError: a report.html that cannot be written there
            reason = err if isinstance(err, P3DError) else refusal(err)
            print(f"report: skipped {shown(where)}: {reason}")
            skipped.append(reason)
    if skipped:
        raise PipelineError(f"{len(skipped)} of {len(found)} reports could not be rebuilt (each listed above), "
                            f"e.g. {skipped[0]}")
    return pages


MAX_SHEET_FRAMES = 50  # show-flow --frames: a column of two pictures each, in one figure


def show_flow_stage(cfg: Config, video_id: str, *, out: Path | None = None, frames: int = 6,
                    max_flow: float | None = None, force: bool = False) -> Path:
    """`show-flow`: a contact sheet PNG of `frames` evenly spaced RGB frames of a stored video over
    the flow from each to the next, colour-coded at one fixed scale (`max_flow` px per frame = full
    saturation, > 0; None = a quarter of the store's flow bound), with the colour wheel as legend. An
    existing PNG is refused unless `force`, as every output of the pipeline is."""
    from flow.encoding import decode
    from flow.visualise import check_max_flow, check_png_path, contact_sheet

    if not 1 <= frames <= MAX_SHEET_FRAMES:
        raise PipelineError(f"--frames must be 1 to {MAX_SHEET_FRAMES} (a sheet of more is too small to read and "
                            f"takes minutes to draw), got {frames}")
    check_max_flow(max_flow, "--max-flow")
    if out is not None:
        check_png_path(out, "--out")
    store = open_store(flow_dir(cfg), purpose="show-flow")
    if not store.has(video_id):
        ids = store.video_ids()
        raise PipelineError(f"video {video_id!r} is not in the store at {store.root} ({len(ids)} videos, "
                            f"e.g. {', '.join(ids[:3])}); ids are paths under the dataset root without extension")
    scale = max_flow if max_flow is not None else store.bound / 4
    with store.open(video_id) as video:
        if video.num_flows < 1:
            raise PipelineError(f"video {video_id!r} has {video.num_frames} frame(s) and no flow to show")
        picks = sorted({int(round(i)) for i in np.linspace(0, video.num_flows - 1, min(frames, video.num_flows))})
        rgb, flow = video.rgb(picks), decode(video.flow(picks), store.bound)
        size = f"{video.width}x{video.height}"
    out = Path(out) if out else cfg.work / "show-flow" / f"{video_id.replace('/', '__')}.png"
    refuse_overwrite([out], force)
    output_folder(out.parent, "show-flow's folder")
    title = (f"{video_id}: {size}, frames {', '.join(map(str, picks))}; flow colour scale fixed at "
             f"{scale:g} px/frame = full saturation (store bound {store.bound:g} px)")
    contact_sheet(out, rgb, flow, picks, scale, title)
    print(f"show-flow: wrote {out} ({title})")
    return out
