"""Dataset readers: annotation files in, one VideoRecord per video out (see docs/datasets.md)."""
from __future__ import annotations

import dataclasses

from pipeline.datasets.activitynet import read_activitynet
from pipeline.datasets.aslan import read_aslan
from pipeline.datasets.config import FORMATS, THREE_SPLIT_FORMATS, DatasetConfig
from pipeline.datasets.folder import read_folder
from pipeline.datasets.hmdb51 import read_hmdb51
from pipeline.datasets.kinetics import read_kinetics
from pipeline.datasets.mmaction import read_mmaction
from pipeline.datasets.records import Dataset, VideoRecord, items
from pipeline.datasets.sports1m import read_sports1m
from pipeline.datasets.ucf101 import read_ucf101
from pipeline.errors import DatasetError

READERS = {
    "ucf101": read_ucf101,
    "synth": read_ucf101,  # SynthActions is written in UCF101's layout
    "hmdb51": read_hmdb51,
    "kinetics": read_kinetics,
    "activitynet": read_activitynet,
    "mmaction": read_mmaction,
    "folder": read_folder,
    "aslan": read_aslan,  # View-2 pairs of ASLAN (pipeline.datasets.aslan.read_view2 gives the pairs)
    "sports1m": read_sports1m,  # the release's partitions or one of its ten folds (dataset.split = "foldX")
}

__all__ = ["FORMATS", "THREE_SPLIT_FORMATS", "Dataset", "DatasetConfig", "VideoRecord", "items",
           "read_dataset"]


def read_dataset(cfg: DatasetConfig, split: str | None = None) -> Dataset:
    """The videos of `split` (default cfg.split) with their roles (train/val/test/unused) in it.

    split="all" on a three-split format gives every video once, with split "unused" because its role
    depends on the split; `.splits()` then holds the three per-split datasets."""
    split = cfg.split if split is None else str(split)
    try:
        dataclasses.replace(cfg, split=split).validate()
    except ValueError as err:
        raise DatasetError(f"dataset.{err}") from None
    read = READERS[cfg.format]
    if cfg.format not in THREE_SPLIT_FORMATS or split != "all":
        return read(cfg, split)
    per_split = {name: read(cfg, name) for name in ("1", "2", "3")}
    first = per_split["1"]
    videos = {}
    for dataset in per_split.values():
        if dataset.classes != first.classes:
            raise DatasetError(f"{cfg.annotations or cfg.root}: split {dataset.split} has other classes "
                               "than split 1")
        for video in dataset.videos:
            videos.setdefault(video.video_id, dataclasses.replace(video, split="unused"))
    missing = list(dict.fromkeys(m for d in per_split.values() for m in d.missing))
    refused = list(dict.fromkeys(r for d in per_split.values() for r in d.refused))
    absent: dict[str, VideoRecord] = {}  # each once, its role per split in per_split, as for `videos`
    for dataset in per_split.values():
        for video in dataset.absent:
            absent.setdefault(video.video_id, dataclasses.replace(video, split="unused"))
    return Dataset(cfg.format, first.root, first.classes, list(videos.values()), "all", missing, per_split,
                   refused, list(absent.values()))
