"""Kinetics (400/600/700): CSV files `label,youtube_id,time_start,time_end,split`, clips named
`{youtube_id}_{time_start:06d}_{time_end:06d}.mp4`.

Downloaders lay clips out differently (root/<label>/, root/<split>/, root/videos_train/<label>/, flat),
so clips are looked up by file name anywhere under root. Clips that were never downloaded (8-10% in
practice) and test rows without a label are reported and skipped.
"""
from __future__ import annotations

import csv
from pathlib import Path

from p3dbase.bulk import no_cycle_collection
from p3dbase.errors import excerpt
from pipeline.datasets.config import DatasetConfig
from pipeline.datasets.files import Entry, UniqueIds, build, check_file, check_root, walk_videos
from pipeline.datasets.records import Dataset
from pipeline.errors import DatasetError

SUBSETS = {"train": "train", "training": "train", "val": "val", "validate": "val", "validation": "val",
           "test": "test", "testing": "test"}
REQUIRED = ("youtube_id", "time_start", "time_end", "split")  # the first test release has no label


def clip_name(youtube_id: str, start: int, end: int) -> str:
    return f"{youtube_id}_{start:06d}_{end:06d}"


def _seconds(text: str, column: str, where: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{where}: {column} must be a number of seconds, got {excerpt(text)}") from None
    if value < 0 or value != int(value):
        raise DatasetError(f"{where}: {column} must be a whole number of seconds >= 0, got {excerpt(text)}")
    return int(value)


def read_rows(path: Path, seen: UniqueIds) -> list[tuple[str, str, str, str]]:
    """(clip name, label or "", subset, "file:line") of every row. The loop is kept lean: a
    Kinetics-700 listing is 650,000 rows."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        absent = [c for c in REQUIRED if c not in header]
        if absent:
            raise DatasetError(f"{path}:1: missing column(s) {', '.join(absent)} (expected "
                               f"label,youtube_id,time_start,time_end,split), got {','.join(header)!r}")
        width, at = len(header), f"{path}:"
        youtube, start_at, end_at, split_at = (header.index(name) for name in REQUIRED)
        label_at = header.index("label") if "label" in header else None
        for row in reader:
            where = f"{at}{reader.line_num}"
            if len(row) != width or not row[youtube].strip():
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != width:
                    raise DatasetError(f"{where}: expected {width} columns ({','.join(header)}), got {len(row)}")
            youtube_id = row[youtube].strip()
            if not youtube_id or "/" in youtube_id or youtube_id.startswith("."):
                raise DatasetError(f"{where}: bad youtube_id {youtube_id!r}")
            start, end = row[start_at].strip(), row[end_at].strip()
            # Whole seconds as written ("417"), read at once; anything else ("4.0", "-3", "4x") checked.
            start = int(start) if start.isdecimal() and start.isascii() else _seconds(start, "time_start", where)
            end = int(end) if end.isdecimal() and end.isascii() else _seconds(end, "time_end", where)
            subset = SUBSETS.get(row[split_at].strip().lower())
            if subset is None:
                raise DatasetError(f"{where}: split must be train, val or test, got {excerpt(row[split_at])}")
            name = clip_name(youtube_id, start, end)
            seen.add(name, where)
            rows.append((name, row[label_at].strip() if label_at is not None else "", subset, where))
    return rows


def read_kinetics(cfg: DatasetConfig, split: str) -> Dataset:
    with no_cycle_collection():  # 650,000 rows and records for Kinetics-700, none in a cycle
        return _read_kinetics(cfg, split)


def _read_kinetics(cfg: DatasetConfig, split: str) -> Dataset:
    root = check_root(cfg.root, "kinetics")
    annotations = Path(cfg.annotations)
    files = sorted(annotations.glob("*.csv")) if annotations.is_dir() else [
        check_file(annotations, "Kinetics annotation CSV")]
    if not files:
        raise DatasetError(f"{annotations}: no .csv files (expected train.csv, validate.csv, test.csv)")
    seen = UniqueIds()
    rows = [row for path in files for row in read_rows(path, seen)]
    # Classes from every labelled row, found or not, so labels do not depend on what downloaded.
    classes = sorted({label for _, label, _, _ in rows if label})
    label_of = {c: i for i, c in enumerate(classes)}
    clips, irregular = walk_videos(root)
    entries, skipped = [], []
    for name, label, subset, where in rows:
        if not label:
            skipped.append(f"{name} (no label)")
        elif name not in clips:
            skipped.append(name)
        else:
            entries.append(Entry(clips[name], (label_of[label],), subset, where))
    if not entries:
        raise DatasetError(f"none of the {len(rows)} clips listed in {annotations} were found (labelled) "
                           f"under {root}; clips are looked up as <youtube_id>_<start:06d>_<end:06d>.<ext>, "
                           f"e.g. {rows[0][0] if rows else '?'}.mp4")
    return build("kinetics", root, classes, entries, split, str(annotations), skipped=skipped, irregular=irregular)
