"""Sports-1M (Karpathy et al., CVPR 2014), read as the release gtoderici/sports-1m-dataset publishes it.

`dataset.annotations` is the release folder:
    labels.txt                                  the 487 names, line 1 = label 0 (boomerang)
    original/train_partition.txt[.gz]           `URL<space><CSV of 0-based label indices>` a line
    original/test_partition.txt[.gz]
    cross-validation/sportsX_{train,test}.txt[.gz]   X = 0..9: the ten folds, same line format
The text files are distributed gzip-compressed; each is read as `name.txt` or `name.txt.gz`.

`dataset.root` is the folder of the videos the user could still download, flat:
`<root>/<youtube id>.<container>` (any extension of flow.video.VIDEO_EXTENSIONS; ids hold `-` and `_`).
Every local copy is a subset: the unavailable videos are counted in one line and listed in
`Dataset.missing`, never one error each. A malformed line is an error naming the file and line.

Multi-label: every label of a line is kept (VideoRecord.labels). A URL listed twice in one file has
the union of its labels. The fold files list a video once per label, so one video can be in a fold's
training and test files (the README's ABPsSSS2uY0: class 49 train, class 26 test); such a video, in a
fold or in the original partitions, is a test video only: nothing is trained on a video it is scored on.

At 1.1M lines the reader makes no per-video system call: one directory scan of root answers which
videos exist, and only links and special files found there are looked at closer.
"""
from __future__ import annotations

import gzip
import logging
import os
import re
import zlib
from pathlib import Path

from flow.video import VIDEO_EXTENSIONS
from p3dbase.bulk import no_cycle_collection
from p3dbase.errors import excerpt, shown, text_problem
from pipeline.datasets.config import DatasetConfig
from pipeline.datasets.files import check_root, decode, file_problem, parse_int
from pipeline.datasets.records import Dataset, VideoRecord
from pipeline.errors import DatasetError

log = logging.getLogger("pipeline.datasets")

FOLDS = tuple(f"fold{x}" for x in range(10))  # dataset.split names of cross-validation/sportsX_*.txt
NUM_LABELS = 487
_ID = re.compile(r"[A-Za-z0-9_-]+")
_CONTAINERS = frozenset(ext[1:] for ext in VIDEO_EXTENSIONS)
_URL_ID = re.compile(r"(?:[?&]v=|youtu\.be/|/embed/|/shorts/)([A-Za-z0-9_-]+)(?:[&#?]|$)")


def partition_files(release: Path, split: str) -> dict[str, Path]:
    """{"train": path, "test": path} of `split`: the original partitions ("1", "all") or fold "foldX"."""
    if split in FOLDS:
        names = {s: f"cross-validation/sports{split[4:]}_{s}.txt" for s in ("train", "test")}
    else:
        names = {s: f"original/{s}_partition.txt" for s in ("train", "test")}
    return {subset: _plain_or_gz(release, name) for subset, name in names.items()}


def _plain_or_gz(release: Path, name: str) -> Path:
    for candidate in (release / name, release / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"Sports-1M release file not found: {shown(release / name)} (nor {Path(name).name}.gz); "
                       "dataset.annotations must be the release folder (labels.txt, original/, cross-validation/)")


def _lines(path: Path) -> list[str]:
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as err:  # zlib.error: a damaged deflate body
        raise DatasetError(f"{shown(path)}: cannot be read ({err})") from None
    return decode(data, path).splitlines()


def read_labels(path: Path) -> list[str]:
    """The class names of labels.txt, one a line in label order (487 in the release)."""
    if not path.is_file():
        raise DatasetError(f"Sports-1M labels.txt not found: {shown(path)} (dataset.annotations must be the "
                           "release folder)")
    names = [line.strip() for line in _lines(path)]
    while names and not names[-1]:
        names.pop()
    for n, name in enumerate(names, 1):
        if not name:
            raise DatasetError(f"{shown(path)}:{n}: empty class name (line {n} names label {n - 1})")
        problem = text_problem(name)
        if problem:  # it would reach class lists, reports and one-line messages as it is
            raise DatasetError(f"{shown(path)}:{n}: class name {excerpt(name)} {problem}")
    seen: dict[str, int] = {}
    for n, name in enumerate(names, 1):
        if name in seen:
            raise DatasetError(f"{shown(path)}:{n}: class name {name!r} repeats line {seen[name]}")
        seen[name] = n
    if not names:
        raise DatasetError(f"{shown(path)}: no class names")
    return names


_WATCH = "https://www.youtube.com/watch?v="  # every line of the release


def youtube_id(url: str) -> str:
    """The video id of a YouTube URL (watch?v=, youtu.be/, embed/) or of a bare id; "" when none."""
    if url.startswith(_WATCH) and _ID.fullmatch(url, len(_WATCH)):
        return url[len(_WATCH):]
    found = _URL_ID.search(url)
    video = found.group(1) if found else url
    return video if _ID.fullmatch(video) else ""


def read_partition(path: Path, num_classes: int) -> tuple[dict[str, tuple[int, ...]], int]:
    """({youtube id: labels}, number of repeated lines merged) of one partition or fold file."""
    videos: dict[str, tuple[int, ...]] = {}
    parsed: dict[str, tuple[int, ...]] = {}  # the few distinct label strings, each parsed once and shared
    repeats = 0
    for n, line in enumerate(_lines(path), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DatasetError(f"{shown(path)}:{n}: expected 'URL label[,label...]', got {excerpt(line.strip())}")
        url, text = parts
        labels = parsed.get(text)
        if labels is None:
            labels = parsed[text] = _parse_labels(text, num_classes, f"{shown(path)}:{n}")
        video = youtube_id(url)
        if not video:
            raise DatasetError(f"{shown(path)}:{n}: no YouTube video id in {url[:120]!r}")
        known = videos.get(video)
        if known is None:
            videos[video] = labels
        else:
            repeats += 1
            videos[video] = tuple(dict.fromkeys(known + labels))
    return videos, repeats


def _parse_labels(text: str, num_classes: int, where: str) -> tuple[int, ...]:
    labels = tuple(dict.fromkeys(parse_int(t, "label", where) for t in text.split(",")))
    bad = [label for label in labels if not 0 <= label < num_classes]
    if bad:
        raise DatasetError(f"{where}: label {bad[0]} is outside 0..{num_classes - 1} (labels.txt has "
                           f"{num_classes} names)")
    return labels


def scan_videos(root: Path) -> tuple[dict[str, str], set[str]]:
    """({stem: file name} of every video file directly in root, stems to look at closer): one scandir,
    no stat per file. Links and anything not a plain file are looked at closer (file_problem) only
    when listed. Two files of one id (x.mp4, x.webm): the first name in sorted order, one warning."""
    found: dict[str, str] = {}
    closer: set[str] = set()
    clashes: set[str] = set()
    with os.scandir(root) as entries:
        for entry in entries:
            name = entry.name
            stem, dot, ext = name.rpartition(".")
            if not stem or name[0] == "." or ext.lower() not in _CONTAINERS:
                continue
            if stem in found:
                clashes.add(stem)
                if name > found[stem]:
                    continue
            found[stem] = name
            closer.discard(stem)  # of a file this one replaces
            if not entry.is_file(follow_symlinks=False):  # a link (d_type: no stat) or a special file
                closer.add(stem)
    if clashes:
        log.warning("%s: %d video id(s) have more than one file (e.g. %s); using the first name in sorted order",
                    shown(root), len(clashes), min(clashes))
    return found, closer


def read_sports1m(cfg: DatasetConfig, split: str) -> Dataset:
    with no_cycle_collection():  # a million records and tuples, no cycles among them
        return _read(cfg, split)


def _read(cfg: DatasetConfig, split: str) -> Dataset:
    release = Path(cfg.annotations)
    if not release.is_dir():
        raise DatasetError(f"dataset.annotations must be the Sports-1M release folder (labels.txt, original/, "
                           f"cross-validation/), got {shown(release)}")
    classes = read_labels(release / "labels.txt")
    files = partition_files(release, split)
    listed = {subset: read_partition(path, len(classes)) for subset, path in files.items()}
    train, test = listed["train"][0], listed["test"][0]
    repeats = listed["train"][1] + listed["test"][1]
    both = [video for video in train if video in test]
    for video in both:  # a test video only (see the module docstring)
        del train[video]
    root = check_root(cfg.root, "sports1m")
    found, closer = scan_videos(root)
    videos: list[VideoRecord] = []
    missing: list[str] = []
    refused: list[tuple[str, str]] = []
    # Path's own child constructor (what Path.iterdir uses) skips re-parsing the root: 3x faster than
    # root / name, which matters at a million videos.
    child = getattr(root, "_make_child_relpath", root.joinpath)
    for subset, listing in (("train", train), ("test", test)):
        for video, labels in listing.items():
            name = found.get(video)
            if name is None:
                missing.append(video)
                continue
            path = child(name)
            problem = file_problem(path, root) if video in closer else ""
            if problem:
                refused.append((name, problem))
                continue
            videos.append(VideoRecord(video, path, labels[0], labels, classes[labels[0]], subset))
    total = len(train) + len(test)
    source = f"{shown(files['train'])} + {files['test'].name}"
    if not videos and not refused:
        example = next(iter(test or train), "?")
        raise DatasetError(f"none of the {total} videos listed in {source} exist under {shown(root)} "
                           f"(looked up as <root>/<youtube id>.<ext>, e.g. {example}.mp4): is dataset.root right?")
    notes = [f"{len(missing)} of {total} listed videos are not under {shown(root)} (unavailable or not "
             f"downloaded; Dataset.missing, the flow stage's missing.txt)"]
    if both:
        notes.append(f"{len(both)} video(s) in both training and test lists kept as test only (e.g. {both[0]})")
    if repeats:
        notes.append(f"{repeats} repeated line(s) merged")
    if refused:
        notes.append(f"{len(refused)} refused (e.g. {refused[0][0]}: {refused[0][1]})")
    log.warning("Sports-1M split %s: %d videos found (%d train, %d test); %s", split, len(videos),
                sum(v.split == "train" for v in videos), sum(v.split == "test" for v in videos), "; ".join(notes))
    return Dataset("sports1m", root, classes, videos, split, missing, refused=refused)
