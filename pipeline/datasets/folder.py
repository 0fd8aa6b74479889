"""A folder of class folders: root/<class>/<video> (every video "train"), or with split folders
root/{train,val,test}/<class>/<video>. Classes are the sorted class-folder names."""
from __future__ import annotations

from pathlib import PurePosixPath

from pipeline.datasets.config import DatasetConfig
from pipeline.datasets.files import VIDEO_EXTENSIONS, Entry, build, check_root
from pipeline.datasets.records import Dataset
from pipeline.errors import DatasetError

SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}


def read_folder(cfg: DatasetConfig, split: str) -> Dataset:
    root = check_root(cfg.root, "folder")
    top = sorted(d.name for d in root.iterdir() if d.is_dir())
    split_folders = [d for d in top if d in SPLIT_FOLDERS]
    if split_folders and len(split_folders) != len(top):
        others = [d for d in top if d not in SPLIT_FOLDERS]
        raise DatasetError(f"{root}: holds split folders ({', '.join(split_folders)}) and class folders "
                           f"({', '.join(others[:3])}); use root/<class>/ or root/<split>/<class>/, not both")
    bases = [(root / d, SPLIT_FOLDERS[d]) for d in split_folders] or [(root, "train")]
    found = []  # (class, relative path, subset)
    for base, subset in bases:
        for cls in sorted(d for d in base.iterdir() if d.is_dir()):
            videos = (p for p in cls.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
            for video in sorted(videos):
                found.append((cls.name, PurePosixPath(video.relative_to(root).as_posix()), subset))
    if not found:
        raise DatasetError(f"{root}: no videos in class folders (looked for {', '.join(VIDEO_EXTENSIONS)})")
    classes = sorted({cls for cls, _, _ in found})
    label_of = {c: i for i, c in enumerate(classes)}
    entries = [Entry(rel, (label_of[cls],), subset, str(root / rel)) for cls, rel, subset in found]
    return build("folder", root, classes, entries, split, str(root))
