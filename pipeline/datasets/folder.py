"""A folder of class folders: root/<class>/<video> (every video "train"), or with split folders
root/{train,val,test}/<class>/<video>. Classes are the sorted class-folder names.

Hidden files and folders (`.DS_Store`, macOS `._x.mp4` metadata) are not videos and are skipped.
A video whose name cannot be a video id (not UTF-8, a backslash, a control character), a link out
of the root, a dangling link, a FIFO, or a linked folder (not followed) is refused with the reason
(`Dataset.refused`) and the rest is read. So are a folder that cannot be read and a video lying beside
the class folders (it has no class); a class folder without any video is no class, with a warning
naming it. Of two files of one video id the first in name order is kept, unless it is a dangling link."""
from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath

from p3dbase.errors import refusal, shown
from pipeline.datasets.config import DatasetConfig
from pipeline.datasets.files import VIDEO_EXTENSIONS, Entry, build, check_root, name_problem, video_id_of
from pipeline.datasets.records import Dataset
from pipeline.errors import DatasetError

log = logging.getLogger("pipeline.datasets")

SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}


def _folders(path: Path) -> list[str]:
    """The folders in `path`, hidden ones and links to folders aside (a link is not followed: `C -> A`
    made every video of A a video of C too, and `D -> /usr` walked a tree outside the root)."""
    return sorted(d.name for d in path.iterdir() if d.is_dir() and not d.is_symlink() and not d.name.startswith("."))


def _dangling(path: Path) -> bool:
    """A link that leads to no file: `build` refuses it, so it must not keep a real video's id. (Any
    other problem, an unreadable file, is the kept video's to fail with.)"""
    return os.path.islink(path) and not os.path.exists(path)


def _linked_folders(path: Path, root: Path) -> list[tuple[str, str]]:
    return [(shown(d.relative_to(root).as_posix()), "a symbolic link to a folder, not followed")
            for d in sorted(path.iterdir()) if d.is_symlink() and d.is_dir() and not d.name.startswith(".")]


def read_folder(cfg: DatasetConfig, split: str) -> Dataset:
    root = check_root(cfg.root, "folder")
    top = _folders(root)
    split_folders = [d for d in top if d in SPLIT_FOLDERS]
    if split_folders and len(split_folders) != len(top):
        others = [d for d in top if d not in SPLIT_FOLDERS]
        raise DatasetError(f"{shown(root)}: holds split folders ({', '.join(split_folders)}) and class "
                           f"folders ({shown(', '.join(others[:3]))}); use root/<class>/ or "
                           "root/<split>/<class>/, not both")
    bases = [(root / d, SPLIT_FOLDERS[d]) for d in split_folders] or [(root, "train")]
    found = []  # (class, relative path, subset)
    refused: list[tuple[str, str]] = _linked_folders(root, root)  # a linked class or split folder
    kept: dict[str, PurePosixPath] = {}  # video id -> the file that has it
    unreadable: list[OSError] = []
    for base, subset in bases:
        if split_folders:
            refused += _linked_folders(base, root)
        for name in sorted(os.listdir(base)):  # a video beside the class folders has no class
            if not name.startswith(".") and (base / name).is_file() \
                    and os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                refused.append((shown((base / name).relative_to(root).as_posix()),
                                "not in a class folder: its class is the folder it lies in"))
        for cls in _folders(base):
            # A folder that cannot be listed (no permission) is refused, not skipped without a word.
            for folder, dirs, files in os.walk(base / cls, onerror=lambda e: unreadable.append(e)):
                here = Path(folder)
                for d in [d for d in dirs if not d.startswith(".") and (here / d).is_symlink()]:
                    refused.append((shown((here / d).relative_to(root).as_posix()),
                                    "a symbolic link to a folder, not followed"))
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (here / d).is_symlink())
                for name in sorted(files):
                    if name.startswith(".") or os.path.splitext(name)[1].lower() not in VIDEO_EXTENSIONS:
                        continue
                    rel = PurePosixPath((here / name).relative_to(root).as_posix())
                    problem = next((p for p in map(name_problem, rel.parts) if p), "")
                    first = kept.setdefault(video_id_of(rel), rel) if not problem else rel
                    if not problem and first != rel and _dangling(root / first):
                        first = kept[video_id_of(rel)] = rel  # `build` refuses the first, a link to nothing
                        found.append((cls, rel, subset))
                        continue
                    if not problem and first != rel:  # a1.mp4 beside a1.avi: one id, two videos
                        problem = (f"the video id {shown(video_id_of(rel))} of {shown(first)} (ids leave out the "
                                   "extension): rename one")
                    if problem:
                        refused.append((shown(rel), problem))
                    else:
                        found.append((cls, rel, subset))
    refused += [(shown(Path(e.filename).relative_to(root).as_posix()),
                 f"a folder that cannot be read: {refusal(OSError(e.errno, e.strerror))}") for e in unreadable]
    if not found and not refused:
        raise DatasetError(f"{shown(root)}: no videos in class folders (looked for {', '.join(VIDEO_EXTENSIONS)})")
    classes = sorted({cls for cls, _, _ in found})
    empty = sorted({shown(cls) for base, _ in bases for cls in _folders(base)} - set(classes)
                   - {shown(Path(e.filename).name) for e in unreadable})
    if empty and found:
        log.warning("%s: %d class folder(s) hold no video and are not classes: %s%s", shown(root), len(empty),
                    ", ".join(empty[:5]), " ..." if len(empty) > 5 else "")
    label_of = {c: i for i, c in enumerate(classes)}
    entries = [Entry(rel, (label_of[cls],), subset, str(root / rel)) for cls, rel, subset in found]
    return build("folder", root, classes, entries, split, shown(root), refused=refused)
