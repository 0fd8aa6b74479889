"""Stages as functions from artifacts on disk to artifacts on disk.

This is the one place that knows the datasets and every stage's config: it turns dataset records into
the plain (video_id, label) lists the stage packages take, and chooses where each stage writes.
"""
from __future__ import annotations

import os
from pathlib import Path

from flow.stage import FlowJob, run_flow
from flow.store import open_store
from fusion.stage import average_splits, run_eval
from pipeline.config import Config, write_resolved
from pipeline.datasets import Dataset, read_dataset
from pipeline.errors import PipelineError
from pipeline.synth import generate
from streams.train import train_stream



def flow_dir(cfg: Config) -> Path:
    return cfg.work / "flow"


def train_dir(cfg: Config, stream: str, split: str) -> Path:
    return cfg.work / "train" / stream / f"split{split}"


def eval_dir(cfg: Config) -> Path:
    return cfg.work / "eval"


def split_datasets(cfg: Config) -> list[tuple[str, Dataset]]:
    """(split name, the videos with their roles in it): three of them for `dataset.split = "all"` on
    UCF101, HMDB51 and SynthActions (the three-split protocol), else one."""
    dataset = read_dataset(cfg.dataset)
    if dataset.per_split:
        return sorted(dataset.per_split.items())
    return [("1" if dataset.split == "all" else dataset.split, dataset)]


def synth_stage(cfg: Config, *, force: bool = False) -> None:
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
               strict: bool = False) -> None:
    dataset = read_dataset(cfg.dataset)
    if dataset.missing:
        print(f"{len(dataset.missing)} video(s) listed in the annotations are not under "
              f"{dataset.root} and are skipped, e.g. {', '.join(dataset.missing[:3])}")
    jobs = [FlowJob(v.video_id, v.path) for v in sorted(dataset.videos, key=lambda v: v.video_id)]
    out = flow_dir(cfg)
    write_resolved(cfg, out)
    run_flow(jobs, out, cfg.flow, shard=shard, force=force, strict=strict)


def _stored(cfg: Config, dataset: Dataset, stage: str) -> tuple[set[str], list[str]]:
    """Videos with frames and flow in the store, and the dataset's videos that have none."""
    store_root = flow_dir(cfg)
    if not (store_root / "store.json").is_file():
        raise PipelineError(f"no flow store at {store_root}: run `make flow` (python -m pipeline flow "
                            f"--config ...) before `{stage}`")
    done = set(open_store(store_root).video_ids())
    missing = sorted(v.video_id for v in dataset.videos if v.video_id not in done)
    if missing:
        print(f"{len(missing)} video(s) have no frames/flow (failed or not run in `make flow`; see "
              f"{store_root / 'manifest.csv'}) and are left out, e.g. {', '.join(missing[:3])}")
    return done, missing


def train_stage(cfg: Config, stream: str) -> None:
    for split, dataset in split_datasets(cfg):
        done, _ = _stored(cfg, dataset, f"train-{stream}")
        train = [(v.video_id, v.label) for v in dataset.videos if v.split == "train" and v.video_id in done]
        val = [(v.video_id, v.label) for v in dataset.videos
               if v.split in ("test", "val") and v.video_id in done]
        if not train:
            raise PipelineError(f"split {split} of {cfg.dataset.format} has no training video with flow")
        out = train_dir(cfg, stream, split)
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every process runs this stage
            write_resolved(cfg, out)
        train_stream(flow_dir(cfg), train, val, dataset.classes, stream, cfg.model, cfg.train, out)


def eval_stage(cfg: Config) -> None:
    tables = []
    out_root = eval_dir(cfg)
    splits = split_datasets(cfg)
    for split, dataset in splits:
        done, _ = _stored(cfg, dataset, "eval")
        train = [(v.video_id, v.labels) for v in dataset.videos if v.split == "train" and v.video_id in done]
        test = [(v.video_id, v.labels) for v in dataset.videos
                if v.split in ("test", "val") and v.video_id in done]
        # Only test videos count as excluded in the report; missing training videos just shrink the SVM's set.
        missing = [v.video_id for v in dataset.videos if v.split in ("test", "val") and v.video_id not in done]
        checkpoints = {stream: train_dir(cfg, stream, split) for stream in ("rgb", "flow")}
        out = out_root if len(splits) == 1 else out_root / f"split{split}"
        write_resolved(cfg, out)
        # Groups (UCF101, SynthActions) keep the clips of one group on one side of the SVM's CV folds.
        groups = {v.video_id: v.group for v in dataset.videos if v.split == "train" and v.group}
        tables.append(run_eval(flow_dir(cfg), checkpoints, train, test, dataset.classes, cfg.eval, out,
                               protocol=f"{cfg.dataset.format} split {split}", excluded=missing,
                               train_groups=groups or None))
    if len(tables) > 1:
        average_splits(tables, out_root, protocol=f"{cfg.dataset.format} 3-split average")
