"""UCF101 and SynthActions (written in UCF101's layout): classInd.txt, trainlist0N.txt, testlist0N.txt.

classInd.txt is "1 ApplyEyeMakeup" with CRLF line ends; trainlist lines are "Class/v_Class_gGG_cCC.avi
label" (1-based), testlist lines the path alone. The label comes from the folder, looked up in classInd
without regard to case: the folder HandstandPushups holds v_HandStandPushups_* files, so the class in
a file name is never used.
"""
from __future__ import annotations

import re
from pathlib import Path

from p3dbase.errors import excerpt, text_problem
from pipeline.datasets.config import DatasetConfig
from pipeline.datasets.files import (
    Entry,
    UniqueIds,
    build,
    check_root,
    parse_int,
    read_lines,
    read_list,
    relative_path,
    video_id_of,
)
from pipeline.datasets.records import Dataset
from pipeline.errors import DatasetError

GROUP = re.compile(r"_(g\d+)_c\d+$")


def read_class_ind(path: Path) -> list[str]:
    """Class names in id order; ids must be exactly 1..N."""
    names: dict[int, str] = {}
    lower: dict[str, str] = {}
    for n, line in read_lines(path):
        where = f"{path}:{n}"
        parts = line.split()
        if len(parts) != 2:
            raise DatasetError(f"{where}: expected '<id> <ClassName>', got {excerpt(line)}")
        cid = parse_int(parts[0], "class id", where)
        problem = text_problem(parts[1])
        if problem:  # it would reach class lists, reports and one-line messages as it is
            raise DatasetError(f"{where}: class name {excerpt(parts[1])} {problem}")
        if cid in names:
            raise DatasetError(f"{where}: class id {cid} given twice")
        if parts[1].lower() in lower:
            raise DatasetError(f"{where}: class {parts[1]!r} given twice (as {lower[parts[1].lower()]!r})")
        names[cid] = lower[parts[1].lower()] = parts[1]
    if not names:
        raise DatasetError(f"{path}: no classes")
    if sorted(names) != list(range(1, len(names) + 1)):
        raise DatasetError(f"{path}: class ids must be 1..{len(names)} without gaps, got "
                           f"{sorted(names)[:3]} ... {sorted(names)[-1]}")
    return [names[i] for i in range(1, len(names) + 1)]


def read_ucf101(cfg: DatasetConfig, split: str) -> Dataset:
    root = check_root(cfg.root, cfg.format)
    if cfg.format == "synth":
        annotations = Path(cfg.annotations) if cfg.annotations else root / "annotations"
        videos = root / "videos"
    else:
        annotations, videos = Path(cfg.annotations), root
    class_ind = annotations / "classInd.txt"
    classes = read_class_ind(class_ind)
    by_folder = {c.lower(): i for i, c in enumerate(classes)}
    seen = UniqueIds()
    entries = []
    for path, subset in ((annotations / f"trainlist0{split}.txt", "train"),
                         (annotations / f"testlist0{split}.txt", "test")):
        for n, line in read_list(path):
            where = f"{path}:{n}"
            parts = line.split()
            # Test lines carry no class id; some edited copies add one, which is then checked.
            if len(parts) not in ((2,) if subset == "train" else (1, 2)):
                form = "'<Class>/<video>.avi <class id>'" if subset == "train" else "'<Class>/<video>.avi'"
                raise DatasetError(f"{where}: expected {form}, got {excerpt(line)}")
            rel = relative_path(parts[0], where)
            if len(rel.parts) != 2:
                raise DatasetError(f"{where}: expected a '<Class>/<video>' path, got {parts[0]!r}")
            label = by_folder.get(rel.parts[0].lower())
            if label is None:
                raise DatasetError(f"{where}: folder {rel.parts[0]!r} is not a class in {class_ind}")
            if len(parts) == 2:
                cid = parse_int(parts[1], "class id", where)
                if not 1 <= cid <= len(classes):
                    raise DatasetError(f"{where}: class id {cid} is not in {class_ind} (1..{len(classes)})")
                if cid - 1 != label:
                    raise DatasetError(f"{where}: class id {cid} ({classes[cid - 1]}) disagrees with the "
                                       f"folder {rel.parts[0]!r} (id {label + 1})")
            seen.add(video_id_of(rel), where)
            group = GROUP.search(rel.stem)
            entries.append(Entry(rel, (label,), subset, where, group.group(1) if group else None))
    return build(cfg.format, videos, classes, entries, split, f"{annotations} split {split}")
