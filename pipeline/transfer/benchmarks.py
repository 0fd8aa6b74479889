"""The transfer stage's benchmarks, read with the dataset readers into the records the stage takes
(fusion.transfer_stage.Benchmark): only the pipeline knows the datasets."""
from __future__ import annotations

import difflib
from pathlib import Path

from flow.store import store_exists
from fusion.transfer_stage import Benchmark, TransferVideo
from p3dbase.errors import shown
from pipeline.config import Config
from pipeline.datasets import read_dataset
from pipeline.datasets.aslan import read_view2
from pipeline.errors import PipelineError
from pipeline.transfer.config import PAPER_BENCHMARKS, BenchmarkConfig


def check_transfer_config(cfg: Config) -> None:
    """What the transfer stage needs beyond each section's own checks, named by key."""
    t = cfg.transfer
    if not t.rgb and not t.flow:
        raise PipelineError("[transfer] rgb / flow: give an RGB and/or a flow stream checkpoint")
    if not t.benchmarks:
        raise PipelineError("[transfer] benchmarks: name at least one [benchmark.NAME] table")
    for name in t.benchmarks:
        if name not in cfg.benchmark:
            close = difflib.get_close_matches(name, list(cfg.benchmark), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PipelineError(f"transfer.benchmarks names {name!r} but there is no [benchmark.{name}] "
                                f"section{hint}")
        given = cfg.benchmark[name].flow_store
        if given and t.flow and not store_exists(given):
            raise PipelineError(f"benchmark.{name}.flow_store: no flow store at {shown(given)} (no store description "
                                "there): point it at a `make flow` output, or leave it empty to compute one")
    for name in ("rgb", "flow"):
        path = getattr(t, name)
        if path and not Path(path).exists():
            raise PipelineError(f"transfer.{name}: {path} does not exist: point it at a stream checkpoint or a "
                                "training folder (configs/transfer.toml uses `make all`'s: run `make all` first; "
                                "configs/tiny_transfer.toml `make all CONFIG=configs/tiny.toml`'s)")


def read_benchmark(name: str, bench: BenchmarkConfig) -> Benchmark:
    """The benchmark's videos with their labels, groups and splits, as its protocol needs them."""
    dataset = read_dataset(bench)
    protocol = bench.resolved_protocol()
    videos = [TransferVideo(v.video_id, v.path, v.labels, v.group) for v in dataset.videos]
    splits: list[tuple[list[str], list[str]]] = []
    scored = ""
    if protocol == "three_split":
        splits = [([v.video_id for v in d.train()], [v.video_id for v in d.test() + d.val() + d.absent_scored()])
                  for _, d in sorted(dataset.splits().items())]
    elif protocol == "train_val":
        # The scored subset is chosen by what the annotations list, not by what is on disk: validation
        # videos all missing were the test subset scored instead, without a word.
        listed = [*dataset.videos, *dataset.absent]
        scored = "val" if any(v.split == "val" for v in listed) else "test"
        splits = [([v.video_id for v in dataset.train()], [v.video_id for v in listed if v.split == scored])]
    # Videos the protocol scores that the annotations list but that are not under the root: misses, not
    # a smaller test set. Leave-one-out scores every video, whatever its role.
    tested = {v for _, ids in splits for v in ids}
    absent = [TransferVideo(v.video_id, v.path, v.labels, v.group) for v in dataset.absent
              if protocol == "loo" or v.video_id in tested]
    return Benchmark(
        name=name, protocol=protocol, root=dataset.root, classes=list(dataset.classes), videos=videos,
        splits=splits, pairs=read_view2(bench.annotations) if protocol == "aslan_view2" else None,
        flow_store=Path(bench.flow_store) if bench.flow_store else None, absent=absent,
        scored=scored,
        refused=list(dataset.refused), paper=bench.paper or (name if name in PAPER_BENCHMARKS else ""))
