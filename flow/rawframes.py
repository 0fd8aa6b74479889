"""Existing rawframes (mmaction2 / TSN / denseflow JPEG trees) into the store, without recomputing flow.

`[flow] source = "rawframes"` makes the flow stage read each video's frame folder instead of decoding
and running TV-L1. The images are copied into the store (either layout), not indexed in place: the
names vary between tools (below), the flow must be re-encoded when its bound differs from the
store's, and every reader (training, eval, show-flow) then reads one layout. Names recognised, per
video folder:

* frames `img_00001.jpg` (mmaction2 / TSN), `frame_0000000001.jpg` (EPIC, 10 digits), `image_*`,
  `rgb_*`, in the folder itself or in `rgb/`;
* flow `flow_x_00001.jpg` / `flow_y_00001.jpg` or `x_00001.jpg` / `y_00001.jpg`, in the folder or in
  `flow/`; or any numbered image in `x/` + `y/` or `u/` + `v/` (EPIC), in the folder or in `flow/`;
* numbered from 1 (mmaction2, TSN) or from 0 (denseflow); frames and flow must start alike;
* whole names, in ASCII: `img_00003.jpg\\n` or digits other than 0-9 make no frame.

JPEGs are kept byte for byte when the store keeps that modality as JPEG (the mmaction layout, or the
packed layout's jpeg codecs), they already have the store's size (and, for flow, its bound), and
their IJG quality, estimated from the luminance quantisation table, is at least
`flow.rawframes_min_quality`, and they carry no EXIF orientation to apply: no second JPEG loss and
no encoding time. Every image is decoded once on the way in, kept or not: JPEGs strictly (simplejpeg,
where installed), so one that does not decode, or decodes only with libjpeg's "Corrupt JPEG data"
warning, fails its video with its name; the EXIF orientation ignored (as simplejpeg and nvJPEG read
the store; a tagged JPEG is never kept, so no reader turns it); and of the first frame's size, flow
images too, or the video fails naming the file. Other images are decoded, resized or re-bounded as
needed and encoded with the store's codec.

N frames need N - 1 flow images (flow i: frame i -> i + 1). N flow images for N frames (tools that
cut a segment out of a longer video, like adl_P11 in ../shared/data) keep the first N - 1: the last
one ends on a frame the folder does not hold. A gap in the numbering, fewer flows, more than N, or x
without its y fail the video with the reason (the flow stage lists it in the manifest).
"""
from __future__ import annotations

import collections
import itertools
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from flow import codec
from flow.config import FlowConfig
from flow.encoding import decode, encode
from flow.errors import FlowError
from flow.store import VideoWriter, other_size
from flow.video import output_size, resize
from p3dbase.errors import file_problem, shown

# Whole names, ASCII only (fullmatch, re.ASCII): `$` also matches before a final newline and `\d` takes
# any Unicode digit (IGNORECASE folds non-ASCII letters too), so `img_00003.jpg\n` and `img_` + five
# Arabic-Indic digits were both taken for frame 3.
_NAMES = re.IGNORECASE | re.ASCII
_IMAGE = r"\.(?:jpe?g|png)"
_RGB = re.compile(rf"(?:img|image|frame|rgb)_([0-9]+){_IMAGE}", _NAMES)
_FLOW = re.compile(rf"(?:flow_)?([xy])_([0-9]+){_IMAGE}", _NAMES)
_NUMBERED = re.compile(rf"(?:[a-z]+_)?([0-9]+){_IMAGE}", _NAMES)  # in x/, y/, u/, v/ folders
_AXIS_DIRS = {"x": "x", "y": "y", "u": "x", "v": "y"}


@dataclass
class RawframeVideo:
    """The images of one video folder: number -> file, for frames and each flow axis."""

    folder: Path
    frames: dict[int, Path]
    flow_x: dict[int, Path]
    flow_y: dict[int, Path]
    kind: str  # how the names look, e.g. "img_/flow_x_, 5 digits, 1-based"
    # Image names that are no file (a FIFO, a folder, a dangling link): the video fails naming the first
    # (refuse_broken), as a gap in the numbering it read as nothing. Kept here, not raised by scan, so
    # that the folder is still a frame folder (predict and features list it, and it fails on its own).
    broken: list[Path] = field(default_factory=list)


class BrokenImageError(FlowError):
    """An image entry of a frame folder that is no file. Raised by scan too when no frame image is a
    file (frames moved away, links left behind): such a folder is still a video of the inputs
    (fusion.inputs.is_frame_folder), which fails naming the entry."""


def refuse_broken(video: RawframeVideo) -> None:
    """BrokenImageError naming the first image entry of `video` that is no file, and what it is."""
    if video.broken:
        first = video.broken[0]
        raise BrokenImageError(f"{shown(first)}: {file_problem(first, 'JPEG or PNG file')}")


@dataclass
class CheckedVideo:
    """What is imported: frame and flow files in order (flows[i] is frame i -> i + 1)."""

    frames: list[Path]
    flows: list[tuple[Path, Path]]
    kind: str
    dropped_last_flow: bool
    copied: int = 0  # JPEG files stored byte for byte by import_video (frames + 2 per flow image)


def _files(folder: Path, broken: list[Path], pattern: re.Pattern[str]) -> list[str]:
    """The visible files of `folder`; FlowError for a symbolic link leading out of it (nothing
    outside a video's own folder is read). A name of `pattern` (a frame's or flow image's) that is no
    file (a FIFO, a folder, a dangling link) goes to `broken`: it read as a gap in the numbering, or an
    x image without its y. Other names are not looked at (a dangling `cover.jpg` fails nothing)."""
    try:
        entries = [e for e in os.scandir(folder) if not e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []
    broken += [Path(e.path) for e in entries if not _is_file(e) and pattern.fullmatch(e.name)]
    entries = [e for e in entries if _is_file(e)]
    inside = os.path.realpath(folder)
    for e in entries:
        if e.is_symlink() and os.path.commonpath([os.path.realpath(e.path), inside]) != inside:
            raise FlowError(f"{shown(e.path)}: a symbolic link to {shown(os.path.realpath(e.path))}, outside its "
                            "video's folder: refused (copy the file in, or link the whole folder)")
    return sorted(e.name for e in entries)


def _is_file(entry: os.DirEntry) -> bool:
    """Whether a folder's entry is a file; a symbolic link loop (ELOOP) is none: it is passed over,
    not the end of the scan (it raised, and stopped predict, features and the rawframes import)."""
    try:
        return entry.is_file()
    except OSError:
        return False


def scan(folder: Path | str) -> RawframeVideo:
    """The frame and flow images of a video folder; FlowError naming it when it is no folder or
    holds no frame image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FlowError(f"{shown(folder)}: not a folder of frames (flow.source = 'rawframes' reads one "
                        "folder per video: set flow.rawframes_root to the folder holding them)")
    frames: dict[int, Path] = {}
    flows: dict[str, dict[int, Path]] = {"x": {}, "y": {}}
    names: dict[int, str] = {}  # id of a table -> how its first name starts ("img_", "flow/x/")
    digits: set[int] = set()
    broken: list[Path] = []

    def put(table: dict[int, Path], number: str, path: Path, pattern: str) -> None:
        index = int(number)
        if index in table:
            raise FlowError(f"{shown(folder)}: {shown(table[index].relative_to(folder))} and "
                            f"{shown(path.relative_to(folder))} are both image {index}")
        table[index] = path
        names.setdefault(id(table), pattern)
        digits.add(len(number))

    for sub in ("", "rgb"):
        for name in _files(folder / sub, broken, _RGB):
            if m := _RGB.fullmatch(name):
                put(frames, m.group(1), folder / sub / name, f"{sub + '/' if sub else ''}{name[:m.start(1)]}")
    for sub in ("", "flow"):
        for name in _files(folder / sub, broken, _FLOW):
            if m := _FLOW.fullmatch(name):
                put(flows[m.group(1).lower()], m.group(2), folder / sub / name,
                    f"{sub + '/' if sub else ''}{name[:m.start(2)]}")
        for axis_dir, axis in _AXIS_DIRS.items():
            where = folder / sub / axis_dir
            for name in _files(where, broken, _NUMBERED):
                if m := _NUMBERED.fullmatch(name):
                    put(flows[axis], m.group(1), where / name, f"{where.relative_to(folder).as_posix()}/")
    video = RawframeVideo(folder, frames, flows["x"], flows["y"], "", sorted(set(broken)))
    if not frames:
        refuse_broken(video)  # every frame image a link to nothing, say: named, and still a frame folder
        raise FlowError(f"{shown(folder)}: no frame images (img_00001.jpg, frame_0000000001.jpg, rgb/...)")
    start = min(frames)
    shapes = " + ".join(names[id(t)] + "*" for t in (frames, flows["x"]) if id(t) in names)
    kind = f"{shapes}, {'/'.join(map(str, sorted(digits)))} digits, {start}-based"
    video.kind = kind
    return video


def in_order(table: dict[int, Path], where: str, what: str = "frame") -> list[Path]:
    """The files of `table` (number -> file) in order; FlowError naming `where` when the numbering,
    from its first number, has a gap. Found from the sorted numbers, never a list over their range:
    one stray `frame_99999999999999.jpg` is a jump to report, not 10^14 numbers to hold."""
    numbers = sorted(table)
    for before, after in itertools.pairwise(numbers):
        if after != before + 1:
            missing = numbers[-1] - numbers[0] + 1 - len(numbers)
            raise FlowError(f"{where}: {missing} {what}(s) missing in {numbers[0]}..{numbers[-1]}, e.g. image "
                            f"{before + 1} (the numbering jumps from {shown(table[before].name)} to "
                            f"{shown(table[after].name)})")
    return [table[i] for i in numbers]


def check(video: RawframeVideo) -> CheckedVideo:
    """The frames and flows to import, in order; FlowError naming the folder and what is missing or
    extra (see the module doc for what is accepted)."""
    where = shown(video.folder)
    refuse_broken(video)
    start = min(video.frames)
    if start not in (0, 1):
        raise FlowError(f"{where}: frame numbering starts at {start}, expected 0 (denseflow) or 1 (mmaction2, TSN): "
                        "is the first frame missing?")
    frames = in_order(video.frames, where)
    count = len(frames)
    if count < 2:
        raise FlowError(f"{where}: only one frame, flow needs at least two")
    unpaired = sorted(set(video.flow_x) ^ set(video.flow_y))
    if unpaired:
        i = unpaired[0]
        have, lack = ("x", "y") if i in video.flow_x else ("y", "x")
        raise FlowError(f"{where}: flow image {i} has {have} ({shown((video.flow_x | video.flow_y)[i].name)}) "
                        f"but no {lack}")
    if not video.flow_x:
        raise FlowError(f"{where}: no flow images (flow_x_00001.jpg, x_00001.jpg, flow/...) next to its "
                        f"{count} frames")
    flow_start = min(video.flow_x)
    if flow_start != start:
        raise FlowError(f"{where}: frames are numbered from {start} but flow from {flow_start}"
                        + (": is the first flow image missing?" if flow_start > start else ""))
    flows = len(in_order(video.flow_x, where, "flow image"))
    flow_stop = flow_start + flows
    if flows > count:
        raise FlowError(f"{where}: extra flow: {count} frames but {flows} flow images (N frames have N - 1, "
                        f"or N with the last one past the end); flow image {start + count} has no frame to start from")
    if flows < count - 1:
        raise FlowError(f"{where}: flow missing: {count} frames need {count - 1} flow images, found {flows} "
                        f"(none after image {flow_stop - 1})")
    used = range(start, start + count - 1)
    return CheckedVideo(frames,
                        [(video.flow_x[i], video.flow_y[i]) for i in used], video.kind, flows == count)


def _bytes(path: Path) -> bytes:
    # Bytes through Python, not cv2.imread: OpenCV crashes on a path that is not valid UTF-8.
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FlowError(f"{shown(path)}: cannot read: {e.strerror}") from None
    if not data:  # OpenCV asserts on an empty buffer, in words that name no file
        raise FlowError(f"{shown(path)}: empty file (0 bytes), not an image")
    return data


def read_image(path: Path, flags: int, data: bytes | None = None) -> np.ndarray:
    """The image at `path` (its bytes `data` when already read), BGR for cv2.IMREAD_COLOR or grey for
    cv2.IMREAD_GRAYSCALE, its EXIF orientation ignored; FlowError naming it when it does not decode,
    or is a JPEG that decodes only with libjpeg's warning of lost data (codec.strict_jpeg)."""
    return _decode(path, flags, data)[0]


def _decode(path: Path, flags: int, data: bytes | None = None) -> tuple[np.ndarray, bool]:
    """read_image, and whether its JPEG bytes may be kept as they are: not when simplejpeg (the store's
    reader) decoded them only past a harmless warning, or could not read them at all."""
    data = _bytes(path) if data is None else data
    why = ""
    if data[:2] == b"\xff\xd8":
        try:
            img, why = codec.strict_jpeg(data, flags == cv2.IMREAD_GRAYSCALE)
        except codec.CodecError as e:
            raise FlowError(f"{shown(path)}: {e}") from None
        if img is not None:
            return img, not why
    # The orientation tag ignored, as simplejpeg and nvJPEG (the store's readers) ignore it in the JPEGs
    # kept byte for byte: cv2's default turned the re-encoded ones by it, and one video held frames of
    # two orientations.
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        img = None
    if img is None:
        raise FlowError(f"{shown(path)}: " + (f"a JPEG that does not decode ({why})" if why else
                                              "not an image OpenCV can decode"))
    return img, not why


def _keepable(data: bytes, size: tuple[int, int], channels: int, min_quality: int) -> bool:
    """Whether a file (already decoded by read_image) can go into a JPEG store as it is: a JPEG of the
    store's size with `channels` components, at least `min_quality`, and no EXIF orientation to apply.
    A turned one is re-encoded as read_image decodes it (the tag ignored): kept, it would be read turned
    by cv2.imdecode (the mmaction layout's reader, the store's cv2 fallback) and as stored by simplejpeg
    and nvJPEG."""
    try:
        height, width, components, quality = codec.jpeg_header(data)
    except codec.CodecError:
        return False  # not a JPEG (a PNG frame), or one of another kind: decoded and re-encoded
    return ((width, height) == size and components == channels and quality is not None
            and quality >= min_quality and codec.exif_orientation(data) == 1)


def same_size(image: np.ndarray, first: np.ndarray, path: Path) -> np.ndarray:
    """`image`, when it has the size of the video's `first` frame (flow.store.other_size)."""
    if why := other_size(path, image.shape[:2], first.shape[:2]):
        raise FlowError(why)
    return image


def _flow_image(x: np.ndarray, y: np.ndarray, size: tuple[int, int], bound: float, cfg: FlowConfig) -> np.ndarray:
    """uint8 [H, W, 2] flow at the store's size and bound from a pair of decoded flow images (of the
    frames' size) encoded at `cfg.rawframes_bound`. Copied as it is when neither changes; else decoded
    to px, resized with the vectors scaled by the size ratio, and encoded at the store's bound."""
    native = (x.shape[1], x.shape[0])
    if native == size and cfg.rawframes_bound == bound:
        return np.stack([x, y], axis=-1)
    fx, fy = decode(x, cfg.rawframes_bound), decode(y, cfg.rawframes_bound)
    if native != size:
        fx = resize(fx, size) * (size[0] / native[0])
        fy = resize(fy, size) * (size[1] / native[1])
    return encode(np.stack([fx, fy], axis=-1), bound)


def import_video(folder: Path | str, writer: VideoWriter, cfg: FlowConfig,
                 between_chunks: Callable[[], None] = lambda: None) -> CheckedVideo:
    """Copy one video folder's frames and flow into `writer` (a store writer: the video appears once
    the caller's `with` block ends cleanly), resized to `cfg.size` (flow vectors scaled with the
    image) and with flow re-encoded from `cfg.rawframes_bound` to the store's bound when they differ.
    `batch_pairs` images at a time; `between_chunks` runs before each (the stage checks that its run
    is alive). FlowError naming the folder for a missing, extra or unreadable image, and naming the
    file for an image of another size than the first frame (frame or flow: flow of another size is
    no resize to make quietly, its vectors would be scaled by a guess)."""
    video = check(scan(folder))
    first = read_image(video.frames[0], cv2.IMREAD_COLOR)
    size = output_size(first.shape[1], first.shape[0], cfg.size)
    if cfg.max_pixels > 0 and size[0] * size[1] > cfg.max_pixels:
        raise FlowError(f"{shown(video.frames[0])}: frames of {first.shape[1]}x{first.shape[0]} would be stored at "
                        f"{size[0]}x{size[1]}, more than [flow] max_pixels = {cfg.max_pixels:,}: set [flow] size")
    bound = writer.store.bound
    keep_rgb = writer.stores_jpeg("rgb")
    keep_flow = writer.stores_jpeg("flow") and cfg.rawframes_bound == bound
    shape = (size[1], size[0])
    step = max(1, cfg.batch_pairs)
    for lo in range(0, len(video.frames), step):
        between_chunks()
        for path in video.frames[lo: lo + step]:
            # Every image decoded (strictly) and its size checked, kept or not: a kept one is read later.
            data = _bytes(path)
            image, clean = _decode(path, cv2.IMREAD_COLOR, data)
            image = same_size(image, first, path)
            if keep_rgb and clean and _keepable(data, size, 3, cfg.rawframes_min_quality):
                writer.add_rgb_jpegs([data], shape)
                video.copied += 1
            else:
                writer.add_rgb(resize(image, size)[None])
        for x_path, y_path in video.flows[lo: lo + step]:
            pair = (_bytes(x_path), _bytes(y_path))
            (x, x_clean), (y, y_clean) = (_decode(p, cv2.IMREAD_GRAYSCALE, d) for d, p in zip(pair, (x_path, y_path),
                                                                                               strict=True))
            x, y = same_size(x, first, x_path), same_size(y, first, y_path)
            if keep_flow and x_clean and y_clean and all(_keepable(d, size, 1, cfg.rawframes_min_quality)
                                                         for d in pair):
                writer.add_flow_jpegs([pair], shape)
                video.copied += 2
            else:
                writer.add_flow(_flow_image(x, y, size, bound, cfg)[None])
    return video


def survey(folders: Sequence[Path]) -> str:
    """One line on what the folders hold (before importing them): how many of each naming, how many
    have N flows for N frames (last flow dropped) and how many fail, with the first reason."""
    kinds: collections.Counter[str] = collections.Counter()
    dropped = 0
    failed: list[str] = []
    for folder in folders:
        try:
            checked = check(scan(folder))
        except FlowError as e:
            failed.append(str(e))
            continue
        kinds[checked.kind] += 1
        dropped += checked.dropped_last_flow
    found = "; ".join(f"{n} as {kind}" for kind, n in kinds.most_common()) or "none usable"
    line = f"rawframes: {len(folders)} video folders: {found}"
    if dropped:
        line += f"; {dropped} with N flows for N frames (last flow dropped)"
    if failed:
        line += f"; {len(failed)} failing (listed in the manifest), e.g. {failed[0]}"
    return line
