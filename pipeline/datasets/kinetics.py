"""Kinetics (400/600/700): CSV files `label,youtube_id,time_start,time_end,split`, clips named
`{youtube_id}_{time_start:06d}_{time_end:06d}.mp4`.

Downloaders lay clips out differently (root/<label>/, root/<split>/, root/videos_train/<label>/, flat),
so clips are looked up by file name anywhere under root. Clips that were never downloaded (8-10% in
practice) and test rows without a label are reported and skipped.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from p3dbase.bulk import no_cycle_collection
from p3dbase.errors import excerpt, shown
from pipeline.datasets.config import DatasetConfig
from pipeline.datasets.files import (
    NO_LABEL,
    Entry,
    UniqueIds,
    build,
    check_file,
    check_root,
    decode,
    text_problem,
    walk_videos,
)
from pipeline.datasets.records import Dataset
from pipeline.errors import DatasetError

SUBSETS = {"train": "train", "training": "train", "val": "val", "validate": "val", "validation": "val",
           "test": "test", "testing": "test"}
REQUIRED = ("youtube_id", "time_start", "time_end", "split")  # the first test release has no label


def clip_name(youtube_id: str, start: int, end: int) -> str:
    return f"{youtube_id}_{start:06d}_{end:06d}"


# A time as the CSVs write it: whole seconds ("417"), now and then as a float ("417.0"). Plain ASCII
# decimals only: float() would also take "nan", "inf", "1e400", "1_0" and other scripts' digits.
_DECIMAL = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?")
_DIGITS = 9  # whole seconds of 10 digits and more (over 31 years) are a damaged cell, not a clip


def _seconds(text: str, column: str, where: str) -> int:
    number = _DECIMAL.fullmatch(text)
    if number is None or not (number[2] or number[3]):
        raise DatasetError(f"{where}: {column} must be a number of seconds, got {excerpt(text)}")
    sign, whole, fraction = number[1], number[2].lstrip("0"), (number[3] or "").strip("0")
    if fraction or (sign == "-" and whole):
        raise DatasetError(f"{where}: {column} must be a whole number of seconds >= 0, got {excerpt(text)}")
    if len(whole) > _DIGITS:
        raise DatasetError(f"{where}: {column} is too large for a time in seconds, got {excerpt(text)}")
    return int(whole or "0")


def read_rows(path: Path, seen: UniqueIds) -> list[tuple[str, str, str, str]]:
    """(clip name, label or "", subset, "file:line") of every row."""
    text = decode(check_file(path, "Kinetics annotation CSV").read_bytes(), path)
    reader = csv.reader(io.StringIO(text, newline=""))  # as open(newline=""): CR LF kept in quoted cells
    try:
        return _rows(reader, path, seen)
    except csv.Error as err:  # a cell over csv.field_size_limit() (128 kB): a damaged file
        raise DatasetError(f"{shown(path)}:{reader.line_num}: cannot be read as CSV ({err})") from None


def _rows(reader, path: Path, seen: UniqueIds) -> list[tuple[str, str, str, str]]:
    """The loop of read_rows, kept lean: a Kinetics-700 listing is 650,000 rows."""
    rows = []
    header = [h.strip().lower() for h in next(reader, [])]
    absent = [c for c in REQUIRED if c not in header]
    if absent:
        raise DatasetError(f"{shown(path)}:1: missing column(s) {', '.join(absent)} (expected "
                           f"label,youtube_id,time_start,time_end,split), got {excerpt(','.join(header))}")
    twice = sorted({c for c in header if c in (*REQUIRED, "label") and header.count(c) > 1})
    if twice:  # header.index would take the first of two, whatever the other holds
        raise DatasetError(f"{shown(path)}:1: column(s) {', '.join(twice)} given twice, in "
                           f"{excerpt(','.join(header))}")
    width, at = len(header), f"{shown(path)}:"
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
        if not youtube_id or "/" in youtube_id or "\\" in youtube_id or youtube_id.startswith("."):
            raise DatasetError(f"{where}: bad youtube_id {excerpt(youtube_id)}")
        problem = text_problem(youtube_id)  # it names a file and reaches messages and reports
        if problem:
            raise DatasetError(f"{where}: youtube_id {excerpt(youtube_id)} {problem}")
        start, end = row[start_at].strip(), row[end_at].strip()
        # Whole seconds as written ("417"), read at once; anything else ("4.0", "-3", "4x") checked.
        start = int(start) if start.isdecimal() and start.isascii() and len(start) <= _DIGITS \
            else _seconds(start, "time_start", where)
        end = int(end) if end.isdecimal() and end.isascii() and len(end) <= _DIGITS \
            else _seconds(end, "time_end", where)
        if end <= start:  # no clip: a row whose columns were swapped or mistyped
            raise DatasetError(f"{where}: time_end ({end}) must be after time_start ({start})")
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
    for label in classes:  # each name once, not each of 650,000 rows
        problem = text_problem(label)
        if problem:  # it would reach class lists, reports and one-line messages as it is
            where = next(where for _, text, _, where in rows if text == label)
            raise DatasetError(f"{where}: label {excerpt(label)} {problem}")
    label_of = {c: i for i, c in enumerate(classes)}
    clips, irregular = walk_videos(root)
    entries, skipped, absent = [], [], []
    for name, label, subset, where in rows:
        if not label:
            skipped.append(name + NO_LABEL)
        elif name not in clips:
            absent.append(Entry(name, (label_of[label],), subset, where))
        else:
            entries.append(Entry(clips[name], (label_of[label],), subset, where))
    if not entries:
        raise DatasetError(f"none of the {len(rows)} clips listed in {annotations} were found (labelled) "
                           f"under {root}; clips are looked up as <youtube_id>_<start:06d>_<end:06d>.<ext>, "
                           f"e.g. {rows[0][0] if rows else '?'}.mp4")
    return build("kinetics", root, classes, entries, split, str(annotations), skipped=skipped, irregular=irregular,
                 absent=absent)
