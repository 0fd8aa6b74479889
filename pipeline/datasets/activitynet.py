"""ActivityNet v1.3: one JSON file `{version, taxonomy, database: {id: {subset, duration, url,
annotations: [{segment: [start, end], label}]}}}`. Video-level classification: a video's labels are
the distinct labels of its segments in order of appearance. Videos are found anywhere under root as
v_<id>.<ext> (the official crawler's and mmaction2's naming) or <id>.<ext>; the testing subset has no
annotations and is skipped like videos that were never downloaded."""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path, PurePosixPath
from typing import Any

from p3dbase.errors import excerpt, shown, text_problem
from pipeline.datasets.config import DatasetConfig
from pipeline.datasets.files import (
    NO_LABEL,
    Entry,
    build,
    check_file,
    check_root,
    decode,
    index_videos,
)
from pipeline.datasets.records import Dataset
from pipeline.errors import DatasetError

log = logging.getLogger("pipeline.datasets")

SUBSETS = {"training": "train", "validation": "val", "testing": "test"}


def _no_duplicate_keys(path: Path):
    """json.loads silently keeps the last of two equal keys; a video listed twice must fail instead."""
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = set()
        for key, _ in pairs:
            if key in keys:
                raise DatasetError(f"{shown(path)}: duplicate key {key!r} (a video listed twice?)")
            keys.add(key)
        return dict(pairs)
    return hook


def _time(value: Any) -> bool:
    """Whether a segment bound is a finite number of seconds (JSON's NaN and Infinity are not, nor an
    integer of 309 digits and more: no float holds it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _labels(info: dict[str, Any], where: str) -> list[str]:
    labels: list[str] = []
    annotations = info.get("annotations", [])
    if not isinstance(annotations, list):
        raise DatasetError(f"{where}: 'annotations' must be a list")
    for i, ann in enumerate(annotations):
        segment = ann.get("segment") if isinstance(ann, dict) else None
        label = ann.get("label") if isinstance(ann, dict) else None
        if (not isinstance(label, str) or not label or not isinstance(segment, list) or len(segment) != 2
                or not all(map(_time, segment)) or segment[0] > segment[1]):
            raise DatasetError(f"{where}.annotations[{i}]: expected {{segment: [start, end], label}} "
                               f"with finite times, start <= end, got {ann!r:.200}")
        problem = text_problem(label)
        if problem:  # "\ud800" is valid JSON: it would reach class lists and reports as it is
            raise DatasetError(f"{where}.annotations[{i}]: label {excerpt(label)} {problem}")
        if label not in labels:
            labels.append(label)
    return labels


def _check_taxonomy(taxonomy: object, classes: list[str], videos: list[tuple[str, list[str], str, str]],
                    path: Path) -> None:
    """Warn of labels that no taxonomy node names: a typo ("Swim" for "Swimming") makes a class of its own.
    A warning, not an error: the classes are the labels used, and an edited taxonomy may lag behind."""
    if not isinstance(taxonomy, list) or not taxonomy:
        return
    names = {node.get("nodeName") for node in taxonomy if isinstance(node, dict)}
    unknown = [label for label in classes if label not in names]
    if unknown:
        where = next(where for _, labels, _, where in videos if unknown[0] in labels)
        log.warning("%s: %d label(s) are no node of its taxonomy, e.g. %s (%s): each is a class of its own",
                    shown(path), len(unknown), excerpt(unknown[0]), where)


_LONG_INTEGER = re.compile(r"-?[0-9]{4301,}")


def read_activitynet(cfg: DatasetConfig, split: str) -> Dataset:
    root = check_root(cfg.root, "activitynet")
    path = check_file(Path(cfg.annotations), "ActivityNet annotation JSON")
    text = decode(path.read_bytes(), path)
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys(path))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{shown(path)}:{err.lineno}: not valid JSON: {err.msg}") from None
    except RecursionError:
        raise DatasetError(f"{shown(path)}: nested too deeply to be ActivityNet JSON (database -> video -> "
                           "annotations is three levels)") from None
    except ValueError:  # json.loads gives no position for an integer past int()'s 4,300 digits
        number = _LONG_INTEGER.search(text)
        line = text.count("\n", 0, number.start()) + 1 if number else 1
        raise DatasetError(f"{shown(path)}:{line}: not valid JSON for ActivityNet: an integer of more than "
                           "4,300 digits") from None
    database = data.get("database") if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise DatasetError(f"{shown(path)}: no 'database' object (expected ActivityNet v1.3 JSON)")
    videos = []
    for video, info in database.items():
        where = f"{shown(path)}: database[{video!r}]"
        if not isinstance(info, dict):
            raise DatasetError(f"{where}: must be an object with 'subset' and 'annotations', got {info!r:.80}")
        subset = info.get("subset")
        if not isinstance(subset, str) or subset not in SUBSETS:  # a list or an object cannot be looked up
            raise DatasetError(f"{where}: subset must be training, validation or testing, got {subset!r:.80}")
        if "/" in video or "\\" in video or video.startswith("."):
            raise DatasetError(f"{where}: bad video id {video!r}")
        problem = text_problem(video)  # it names a file and becomes a video id
        if problem:
            raise DatasetError(f"{where}: the video id {problem}")
        videos.append((video, _labels(info, where), SUBSETS[subset], where))
    unannotated = [video for video, labels, subset, _ in videos if not labels and subset != "test"]
    if unannotated:  # test videos have none (their labels are not published); these should
        log.warning("%s: %d training or validation video(s) have no annotation: not used, e.g. %s", shown(path),
                    len(unannotated), ", ".join(excerpt(v) for v in unannotated[:3]))
    classes = sorted({label for _, labels, _, _ in videos for label in labels})
    _check_taxonomy(data.get("taxonomy"), classes, videos, path)
    label_of = {c: i for i, c in enumerate(classes)}
    files = index_videos(root)
    entries, skipped, absent = [], [], []
    claimed: dict[str, str] = {}  # file -> the database key it was found for
    for video, labels, subset, where in videos:
        found = files.get(f"v_{video}") or files.get(video)
        if found is not None and claimed.setdefault(found, video) != video:
            # keys "aaa" and "v_aaa" both find v_aaa.mp4: one video, two entries (maybe two subsets)
            raise DatasetError(f"{where}: found as {shown(found)}, the file of database[{claimed[found]!r}] too "
                               "(looked up as v_<id>.<ext> or <id>.<ext>): one of the two keys is wrong")
        if files.get(f"v_{video}") and files.get(video):
            log.warning("%s: %s and %s hold the same video %s; using the first (the crawler's v_ name)",
                        root, files[f"v_{video}"], files[video], video)
        if not labels:
            skipped.append(video + NO_LABEL)
        elif found is None:
            absent.append(Entry(video, tuple(label_of[label] for label in labels), subset, where))
        else:
            rel = PurePosixPath(found)
            entries.append(Entry(rel, tuple(label_of[label] for label in labels), subset, where))
    if not entries:
        raise DatasetError(f"none of the {len(videos)} labelled videos in {path} were found under {root} "
                           "(looked up as v_<id>.<ext> or <id>.<ext>)")
    trained = {classes[label] for entry in entries if entry.split == "train" for label in entry.labels}
    unseen = sorted({classes[label] for entry in entries if entry.split != "train" for label in entry.labels} - trained)
    if trained and unseen:  # no classifier can name them: those labels count as misses
        log.warning("%s: %d class(es) of the validation/testing videos have no training video (%s%s): "
                    "a classifier cannot predict them", path, len(unseen), ", ".join(unseen[:5]),
                    " ..." if len(unseen) > 5 else "")
    return build("activitynet", root, classes, entries, split, str(path), skipped=skipped, absent=absent)
