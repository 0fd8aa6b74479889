"""HMDB51: one `<class>_test_split<N>.txt` per class and split, lines "<video>.avi <0|1|2> " (with a
trailing space): 0 unused, 1 train, 2 test. Videos at root/<class>/<video>.avi. There is no class
index file: labels are the sorted class names' positions.

A video's group is the source video its clip was cut from: the name before the class and the six
tags of HMDB51's naming, `<source>_<class>_<body parts>_<camera motion>_np<people>_<viewpoint>_<quality>_<clip>`
(April_09_brush_hair_u_nm_np1_ba_goo_0: April_09). The clips of one source share actor and scene (the
official splits never put them on both sides), so the SVM's C folds and held-out groups keep them
together; a name not in that form is its own group."""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from p3dbase.errors import excerpt, shown
from pipeline.datasets.config import DatasetConfig
from pipeline.datasets.files import (
    Entry,
    UniqueIds,
    build,
    check_root,
    name_problem,
    parse_int,
    read_list,
    relative_path,
    video_id_of,
)
from pipeline.datasets.records import Dataset
from pipeline.errors import DatasetError

SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<split>[123])\.txt$")
ROLES = {0: "unused", 1: "train", 2: "test"}
TAGS = r"_[afhlu]_(?:cm|nm)_np\d+_(?:fr|ba|le|ri)_(?:bad|med|goo)_\d+"


def source_of(stem: str, cls: str) -> str | None:
    """The source video of an HMDB51 clip named `stem` in class `cls` (the module doc), or None."""
    match = re.fullmatch(rf"(?P<source>.+)_{re.escape(cls)}{TAGS}", stem)
    return match["source"] if match else None


def read_hmdb51(cfg: DatasetConfig, split: str) -> Dataset:
    root = check_root(cfg.root, "hmdb51")
    annotations = Path(cfg.annotations)
    if not annotations.is_dir():
        raise DatasetError(f"annotation folder not found: {annotations} (format hmdb51 wants the folder "
                           "of <class>_test_split<N>.txt files)")
    files = {}
    for path in sorted(annotations.iterdir()):
        match = SPLIT_FILE.match(path.name)
        if match:
            # The file names the class: the folder of its videos, a name in class lists and reports.
            cls = match["cls"]
            problem = name_problem(path.name)
            if cls in (".", ".."):
                problem = f"its name gives the class {cls!r}, which is no folder under the root: rename it"
            if problem:
                raise DatasetError(f"{shown(path)}: {problem}")
            files[cls, match["split"]] = path
    # Classes from every split's files, so that the three splits agree on the labels.
    classes = sorted({cls for cls, _ in files})
    if not classes:
        raise DatasetError(f"{annotations}: no <class>_test_split<N>.txt files")
    seen = UniqueIds()
    entries = []
    for label, cls in enumerate(classes):
        path = files.get((cls, split))
        if path is None:
            raise DatasetError(f"{annotations}: {cls}_test_split{split}.txt is missing "
                               f"(another split lists class {cls!r})")
        for n, line in read_list(path):
            where = f"{path}:{n}"
            parts = line.split()
            if len(parts) != 2:
                raise DatasetError(f"{where}: expected '<video>.avi <0|1|2>', got {excerpt(line)}")
            role = parse_int(parts[1], "split id", where)
            if role not in ROLES:
                raise DatasetError(f"{where}: split id must be 0 (unused), 1 (train) or 2 (test), got {role}")
            name = relative_path(parts[0], where)
            if len(name.parts) != 1:
                raise DatasetError(f"{where}: expected a file name, got the path {parts[0]!r}")
            rel = PurePosixPath(cls) / name
            seen.add(video_id_of(rel), where)
            entries.append(Entry(rel, (label,), ROLES[role], where, source_of(PurePosixPath(name).stem, cls)))
    return build("hmdb51", root, classes, entries, split, f"{annotations} split {split}")
