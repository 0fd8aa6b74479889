"""ASLAN (Kliper-Gross, Hassner, Wolf, TPAMI 2012): action similarity labeling on pairs of clips.

Clips lie under root named by their id (`0001.avi` ... `3697.avi`). The benchmark's View-2 is
`Views/View2.mat` (the `annotations` file), variable `action_splits_pairs`, an int array
[pairs, 5, 10]: 10 splits of pairs (600 in the real set), each row `id 1, id 2, same (1) / not-same
(0), action label 1, action label 2`. The splits share no action class.

`read_aslan` gives one record per clip used in View-2 (its class is its action label, its group the
split it appears in, "1".."10"); `read_view2` gives the pairs array for the protocol. A missing or
malformed file, another variable, another shape or ids with no clip under root each stop with one
line naming the file.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path, PurePosixPath

import numpy as np

from p3dbase.cluster import die_with
from pipeline.datasets.config import DatasetConfig
from pipeline.datasets.files import VIDEO_EXTENSIONS, Entry, build, check_file, check_root
from pipeline.datasets.records import Dataset
from pipeline.errors import DatasetError

log = logging.getLogger("pipeline.datasets")

VARIABLE = "action_splits_pairs"
COLUMNS = 5  # id 1, id 2, same, action 1, action 2
SPLITS = 10


def clip_name(video_id: int) -> str:
    """The file stem of clip `video_id`: 4 digits, as ASLAN names them (0001 ... 3697)."""
    return f"{video_id:04d}"


def _load_variable(path: str) -> tuple[np.ndarray | None, list[str], str]:
    """(VARIABLE's array or None, the file's variable names, why it cannot be read or ""), in the child
    process of `read_view2`: whatever scipy raises is turned into words here."""
    from scipy.io import loadmat  # scipy comes with scikit-learn; only this reader needs it here

    try:
        data = loadmat(path)
    except NotImplementedError:  # MATLAB v7.3 files are HDF5
        return None, [], "a MATLAB v7.3 (HDF5) file; save it with -v7 or earlier"
    except Exception as err:  # damaged bytes: MatReadError, zlib.error, ZeroDivisionError, ... (scipy's C code)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, [], f"not a readable MATLAB file: {first}"
    names = sorted(k for k in data if not k.startswith("__"))
    return (np.asarray(data[VARIABLE]) if VARIABLE in data else None), names, ""


def read_view2(path: Path | str) -> np.ndarray:
    """The View-2 pairs: int64 [pairs, 5, 10] from `action_splits_pairs` of a MATLAB file. scipy reads
    it in a child process: on damaged bytes its reader raised whatever its C code met and once died of
    SIGSEGV, taking the whole run with it and saying nothing."""
    path = check_file(Path(path), "ASLAN View-2 file (Views/View2.mat)")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: the file is empty (0 bytes); copy View2.mat again")
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method), initializer=die_with,
                                 initargs=(os.getpid(),)) as pool:
            pairs, names, why = pool.submit(_load_variable, str(path)).result()
    except BrokenProcessPool:
        raise DatasetError(f"{path}: not a readable MATLAB file: scipy's reader crashed on it (damaged bytes?); "
                           "copy View2.mat again") from None
    if why:
        raise DatasetError(f"{path}: {why}")
    if pairs is None:
        raise DatasetError(f"{path}: no variable {VARIABLE!r} (found: {', '.join(names) or 'none'})")
    if pairs.ndim != 3 or pairs.shape[1:] != (COLUMNS, SPLITS) or pairs.shape[0] < 1:
        raise DatasetError(f"{path}: {VARIABLE} has shape {list(pairs.shape)}, expected [pairs, {COLUMNS}, "
                           f"{SPLITS}] (600 x 5 x 10 in ASLAN)")
    if not np.issubdtype(pairs.dtype, np.number) or np.iscomplexobj(pairs) or not np.all(np.isfinite(pairs)) \
            or not np.array_equal(pairs, np.round(pairs)):
        raise DatasetError(f"{path}: {VARIABLE} must hold whole numbers")
    if np.abs(pairs).max() >= 2**31:  # past int64 a cast gave the id -9223372036854775808
        raise DatasetError(f"{path}: {VARIABLE} holds {float(np.abs(pairs).max()):g}: clip ids and labels are "
                           "small whole numbers")
    pairs = pairs.astype(np.int64)
    if pairs[:, :2].min() < 1:
        raise DatasetError(f"{path}: {VARIABLE} has clip id {int(pairs[:, :2].min())}; ids start at 1")
    if pairs[:, 3:].min() < 1:  # Info/Actions_Ids.txt numbers the 432 actions from 1: a 0 is a damaged row
        raise DatasetError(f"{path}: {VARIABLE} has action label {int(pairs[:, 3:].min())}; labels start at 1")
    same = pairs[:, 2]
    if not np.isin(same, (0, 1)).all():
        raise DatasetError(f"{path}: {VARIABLE} column 3 (same / not-same) must be 0 or 1, "
                           f"got {sorted(set(same.ravel().tolist()) - {0, 1})[:3]}")
    return pairs


def _index_clips(root: Path) -> dict[int, Path]:
    """Clip id -> file for every video named by a number directly under root. Several files of one id
    (`1.avi`, `0001.avi`, `0001.mp4`): ASLAN's own name (4 digits) first, then by extension in sorted
    order, with a warning naming them all."""
    found: dict[int, list[Path]] = {}
    for path in sorted(root.iterdir()):
        # ASCII digits: "².avi" passed isdigit() and int() raised
        if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS and re.fullmatch("[0-9]+", path.stem):
            found.setdefault(int(path.stem), []).append(path)
    clips: dict[int, Path] = {}
    for video_id, paths in found.items():
        paths.sort(key=lambda p: (p.stem != clip_name(video_id), p.suffix.lower() != ".avi", p.name))
        clips[video_id] = paths[0]
        if len(paths) > 1:
            log.warning("%s: clip %s has %d files (%s); using %s", root, clip_name(video_id), len(paths),
                        ", ".join(p.name for p in paths), paths[0].name)
    return clips


def _warn_of_contradictions(pairs: np.ndarray, source: Path) -> None:
    """Warn of pairs whose same / not-same flag disagrees with their action labels (same = 1 with two
    actions, or 0 with one): damaged annotations, which the SVM would learn from as they are."""
    same = pairs[:, 2, :] == 1
    wrong = np.argwhere(same != (pairs[:, 3, :] == pairs[:, 4, :]))  # (row, split) pairs
    if len(wrong):
        row, fold = (int(i) for i in wrong[0])
        log.warning("%s: %d pair(s) of %s have a same / not-same flag their action labels contradict, e.g. "
                    "split %d, row %d: clips %s and %s, flag %d, actions %d and %d", source, len(wrong), VARIABLE,
                    fold + 1, row + 1, clip_name(int(pairs[row, 0, fold])), clip_name(int(pairs[row, 1, fold])),
                    pairs[row, 2, fold], pairs[row, 3, fold], pairs[row, 4, fold])


def read_aslan(cfg: DatasetConfig, split: str) -> Dataset:
    root = check_root(cfg.root, "aslan")
    source = Path(cfg.annotations)
    pairs = read_view2(source)
    clips = _index_clips(root)
    label_of: dict[int, int] = {}  # clip id -> action label
    fold_of: dict[int, int] = {}  # clip id -> first split it appears in
    for fold in range(SPLITS):
        for row in pairs[:, :, fold]:
            for video_id, label in ((int(row[0]), int(row[3])), (int(row[1]), int(row[4]))):
                if label_of.setdefault(video_id, label) != label:
                    raise DatasetError(f"{source}: clip {clip_name(video_id)} has action label {label_of[video_id]} "
                                       f"in one pair and {label} in another")
                fold_of.setdefault(video_id, fold + 1)
    _warn_of_contradictions(pairs, source)
    absent = sorted(v for v in label_of if v not in clips)
    if absent:
        raise DatasetError(f"{source}: {len(absent)} clip id(s) of View-2 have no video under {root}, e.g. "
                           f"{', '.join(clip_name(v) for v in absent[:5])} (expected {clip_name(absent[0])}.avi)")
    classes = [str(label) for label in sorted(set(label_of.values()))]
    index = {name: i for i, name in enumerate(classes)}
    entries = [Entry(PurePosixPath(clips[v].name), (index[str(label_of[v])],), "unused", f"{source}",
                     str(fold_of[v])) for v in sorted(label_of)]
    return build("aslan", root, classes, entries, split, str(source))
