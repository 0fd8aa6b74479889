"""mmaction2 list files: `path label [label ...]` (video lists) or `dir total_frames label [label ...]`
(rawframe lists), labels 0-based, several labels for a multi-label video. Paths are relative to root
(mmaction2's data_prefix). Class names come from a label map (one name a line, in label order)."""
from __future__ import annotations

import logging
from pathlib import Path

from p3dbase.errors import excerpt, text_problem
from pipeline.datasets.config import DatasetConfig
from pipeline.datasets.files import (
    Entry,
    UniqueIds,
    build,
    check_root,
    parse_int,
    read_list,
    relative_path,
    video_id_of,
)
from pipeline.datasets.records import Dataset
from pipeline.errors import DatasetError

log = logging.getLogger("pipeline.datasets")

# Without a label map the classes are "0" .. the largest label: a label past any action dataset's
# classes (Kinetics-700, 700; ImageNet-21k, 21,841) is a typo, not a class list of that length.
MAX_UNMAPPED_CLASSES = 100_000


def read_label_map(path: Path) -> list[str]:
    """Class names, line n being label n - 1. A blank line before the last name is an error: it shifted
    every later label by one without a word (blank lines at the end are nothing)."""
    names: dict[str, int] = {}
    for n, name in read_list(path, "classes"):
        if n != len(names) + 1:
            raise DatasetError(f"{path}:{len(names) + 1}: a blank line among the class names (line n is label "
                               "n - 1: every later label would shift by one): remove it, or name the class")
        if name in names:
            raise DatasetError(f"{path}:{n}: class {name!r} given twice (first on line {names[name]})")
        problem = text_problem(name)
        if problem:  # it would reach class lists, reports and one-line messages as it is
            raise DatasetError(f"{path}:{n}: class name {excerpt(name)} {problem}")
        names[name] = n
    return list(names)


def read_mmaction(cfg: DatasetConfig, split: str) -> Dataset:
    root = check_root(cfg.root, "mmaction")
    names = read_label_map(Path(cfg.label_map)) if cfg.label_map else None
    rawframes = cfg.list_type == "rawframes"
    form = "'<dir> <total_frames> <label> [label ...]'" if rawframes else "'<path> <label> [label ...]'"
    seen = UniqueIds()
    entries = []
    lists = [(cfg.train_list, "train"), (cfg.val_list, "val"), (cfg.test_list, "test")]
    for list_file, subset in lists:
        if not list_file:
            continue
        path = Path(list_file)
        for n, line in read_list(path):
            where = f"{path}:{n}"
            parts = line.split()
            first_label = 2 if rawframes else 1
            if len(parts) <= first_label:
                raise DatasetError(f"{where}: expected {form}, got {excerpt(line)}")
            rel = relative_path(parts[0], where)
            if rawframes and parse_int(parts[1], "total_frames", where) < 1:
                raise DatasetError(f"{where}: total_frames must be >= 1, got {parts[1]}")
            labels = tuple(dict.fromkeys(parse_int(p, "label", where) for p in parts[first_label:]))
            for label in labels:
                if label < 0 or (names is not None and label >= len(names)):
                    known = f"0..{len(names) - 1} in {cfg.label_map}" if names is not None else ">= 0"
                    raise DatasetError(f"{where}: label {label} is not a class ({known})")
                if names is None and label >= MAX_UNMAPPED_CLASSES:
                    raise DatasetError(f"{where}: label {label} is past any action dataset's classes (0.."
                                       f"{MAX_UNMAPPED_CLASSES - 1:,} without a label map): a typo? give "
                                       "dataset.label_map to name the classes")
            seen.add(video_id_of(rel), where)
            entries.append(Entry(rel, labels, subset, where))
    source = ", ".join(f for f, _ in lists if f)
    if not entries:
        raise DatasetError(f"no videos listed in {source}")
    classes = names or [str(i) for i in range(max(max(e.labels) for e in entries) + 1)]
    if names is None:
        empty = len(classes) - len({label for e in entries for label in e.labels})
        if empty:  # a label of 999 among 0..9 makes 990 classes no video has
            log.warning("%s: %d of the %d classes 0..%d have no listed video: a mistyped label? give "
                        "dataset.label_map to check the labels against the class names", source, empty,
                        len(classes), len(classes) - 1)
    return build("mmaction", root, classes, entries, split, source)
