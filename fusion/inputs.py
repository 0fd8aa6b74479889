"""What `predict` and `features` take as videos: video files, frame folders and list files.

* a video file (`flow.video.VIDEO_EXTENSIONS`);
* a frame folder: one video's JPEG/PNG frames in a rawframes layout the flow stage recognises
  (`img_00001.jpg`, `frame_0000000001.jpg`, `image_*`, `rgb_*`, in the folder or in `rgb/`;
  flow.rawframes.scan). Its frames are read in order; the flow is computed from them with TV-L1
  under the stream's flow settings like a video's (flow images beside them are not read: they were
  made by another tool with its own settings);
* a directory holding any of these (recursively: every video file, and every frame folder);
* a list file: one path per line, or an mmaction2 list (`<path> <label>` for videos,
  `<dir> <total_frames> <label>` for rawframes: the first field is the path, the rest ignored); a
  relative path is taken from the list's folder.

A video's id is its path relative to the directory or list given, without the extension (for a
single file or folder: its name), with `/`, like the datasets' video ids; outputs are named by it.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from flow.errors import FlowError
from flow.rawframes import BrokenImageError, in_order, read_image, refuse_broken, same_size, scan
from flow.video import VIDEO_EXTENSIONS, VideoReader, output_size, resize
from fusion.engine import file_signature
from fusion.errors import FusionError
from p3dbase.errors import brief, path_is, shown

LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclass(frozen=True)
class VideoInput:
    video_id: str
    path: Path  # a video file or a frame folder


def is_frame_folder(path: Path) -> bool:
    try:
        scan(path)
    except BrokenImageError:  # its frames are links to nothing, say: a video that fails naming them
        return True
    except (FlowError, OSError):  # OSError: a symbolic link loop or an unreadable entry in it
        return False
    return True


def _under(folder: Path) -> list[VideoInput]:
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
            # shown(): a file name that is not UTF-8 keeps its path but gets a printable id (\xNN)
            found.append(VideoInput(shown(rel.with_suffix("").as_posix()), path))
        elif path.is_dir() and is_frame_folder(path):
            found.append(VideoInput(shown(rel.as_posix()), path))
    return found


def _inside(name: Path, path: Path, folder: Path) -> Path:
    """A list line's path as an id's: as written when it is relative and stays in the list's `folder`;
    an absolute one or one leading out (`..`) is taken from `folder` when it lies under it, else it is
    its whole absolute path without the leading "/". Outputs are named by ids, so every id is a
    relative path without "..": an mmaction2 list of absolute paths wrote beside the videos, and
    deleted a user's `five.json` there."""
    if not name.is_absolute() and ".." not in name.parts:
        return name
    full = Path(os.path.normpath(path.absolute()))
    try:
        return full.relative_to(os.path.normpath(folder.absolute()))
    except ValueError:
        return full.relative_to(full.anchor)


def _from_list(source: Path) -> list[VideoInput]:
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FusionError(f"{shown(source)}: cannot read the list of videos: {e}") from None
    found = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        # mmaction2's lists: "<path> <label>" or "<dir> <total_frames> <label>": numbers after the path
        name = parts[0] if len(parts) > 1 and all(p.lstrip("-").isdigit() for p in parts[1:]) else line
        path = Path(name) if Path(name).is_absolute() else source.parent / name
        rel = _inside(Path(name), path, source.parent)
        video_id = (rel if path_is(Path.is_dir, path) else rel.with_suffix("")).as_posix().removeprefix("./")
        if not video_id or video_id == ".":
            raise FusionError(f"{shown(source)}, line {number}: {name!r} names no video")
        found.append(VideoInput(video_id, path))
    if not found:
        raise FusionError(f"{shown(source)}: the list of videos is empty")
    return sorted(found, key=lambda v: v.video_id)


def gather_inputs(sources: Sequence[Path | str]) -> tuple[list[VideoInput], list[tuple[str, str]]]:
    """The videos of `sources` (each a video file, a frame folder, a directory of them or a list
    file), in the order given, each directory's and list's sorted by id; and the inputs refused, as
    (path, why). Two inputs with one id (`a.avi` beside `a.mkv`) would write one output: the first
    in that order is kept and the other refused, as the `folder` dataset reader does, so that a batch
    fails that input alone. FusionError naming the source when it holds no video."""
    found: list[VideoInput] = []
    for source in map(Path, sources):
        if path_is(Path.is_dir, source):
            if is_frame_folder(source):  # `.` is named by the folder it is (an empty id made hidden outputs)
                found.append(VideoInput(shown(Path(os.path.abspath(source)).name or "video"), source))
                continue
            inside = _under(source)
            if not inside:
                raise FusionError(f"{shown(source)}: no video files ({', '.join(VIDEO_EXTENSIONS)}) or frame folders "
                                  "(img_00001.jpg, ...) under this directory")
            found += inside
        elif source.suffix.lower() in LIST_SUFFIXES and path_is(Path.is_file, source):
            found += _from_list(source)
        elif path_is(Path.exists, source) or source.suffix.lower() in VIDEO_EXTENSIONS:
            # a video file; one that is missing or unreadable fails on its own, the others going on
            found.append(VideoInput(shown(source.with_suffix("").name), source))
        else:
            raise FusionError(f"{brief(source)}: no such video file, frame folder, directory or list file")
    kept: dict[str, VideoInput] = {}
    refused: list[tuple[str, str]] = []
    for v in found:
        first = kept.setdefault(v.video_id, v)
        if first.path != v.path:  # the same file named twice is one video, not a clash
            refused.append((shown(v.path), f"the video id {v.video_id} of {shown(first.path)} (ids leave out the "
                                           "extension): rename one"))
    return list(kept.values()), refused


def input_signature(path: Path) -> str:
    """What ties an output to its input: a video file's size and mtime; a frame folder's image
    count, total size and newest mtime (fusion.engine.file_signature, which the store's videos share)."""
    return file_signature(path)


class FolderReader:
    """A frame folder read like a video file (VideoReader's interface): frames in order, resized
    like the flow stage resizes a video's (`size`), BGR uint8."""

    def __init__(self, path: Path | str, size: str = "", max_pixels: int = 0):
        self.path = Path(path)
        self.size = size
        self.max_pixels = max_pixels
        video = scan(self.path)
        refuse_broken(video)
        self.files = in_order(video.frames, shown(self.path))
        self.declared_frames = len(self.files)
        self.fps = 0.0  # a folder of images says nothing about time
        self.timestamps: list[float] = []
        self.frames_read = 0

    def frames(self) -> Iterator[np.ndarray]:
        first = out_size = None
        for path in self.files:
            image = read_image(path, cv2.IMREAD_COLOR)
            if first is None:
                first = image
                out_size = output_size(image.shape[1], image.shape[0], self.size)
                if self.max_pixels > 0 and out_size[0] * out_size[1] > self.max_pixels:
                    raise FlowError(f"{shown(path)}: frames of {image.shape[1]}x{image.shape[0]} would be processed "
                                    f"at {out_size[0]}x{out_size[1]}, more than [flow] max_pixels = "
                                    f"{self.max_pixels:,}: set [flow] size")
            self.frames_read += 1
            yield resize(same_size(image, first, path), out_size)  # refused like the rawframes import does

    def check_complete(self, tolerance: float) -> None:
        if self.frames_read == 0:
            raise FlowError(f"{shown(self.path)}: no frame could be read")


def open_reader(path: Path | str, size: str = "", max_pixels: int = 0) -> VideoReader | FolderReader:
    """A reader of a video file or a frame folder (FlowError naming it when it is neither)."""
    path = Path(path)
    if path.is_dir():
        return FolderReader(path, size, max_pixels)
    return VideoReader(path, size, max_pixels)
