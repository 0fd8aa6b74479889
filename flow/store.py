"""The frame + flow store: what `make flow` writes and the streams read.

A store is a directory with `store.json` (layout, codec, bound, the flow parameters) and one entry
per video, keyed by `video_id` (`Class/v_Class_g01_c01`):

* `packed` (default): one file `<video_id>.pack` per video holding every RGB frame and every flow
  image, each as one blob (JPEG, PNG or raw: flow.codec) listed in an offset index, so a random
  16-frame window costs one read and 16 decodes. Format in docs/flow.md.
* `mmaction`: the mmaction2 / TSN rawframes layout `<video_id>/img_00001.jpg`, `flow_x_00001.jpg`,
  `flow_y_00001.jpg` (1-based JPEGs, lossy), readable by mmaction2 unchanged.

Flow index `i` (0-based) is the motion from frame `i` to frame `i + 1`; a video of N frames has N - 1
flow images. A video exists in the store only once all of it is on disk: writers fill a hidden
temporary name (`.<name>.pack.tmp-<host>-<pid>`, `.<name>.tmp-<host>-<pid>/`) and rename it when
complete, holding the video's lock (`Store.lock`, an flock on `.<name>.lock`) so that two runs on one
store never write, clean or remove the same video at once.
"""
from __future__ import annotations

import functools
import json
import math
import os
import shutil
import struct
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from flow.codec import (
    CODECS,
    CodecError,
    decode_flow,
    decode_flow_planes,
    decode_rgb,
    encode_flow,
    encode_rgb,
    flow_jpeg_blob,
    flow_jpegs,
    jpeg_header,
)
from flow.errors import FlowError
from flow.index import StoreIndex
from flow.video import same_size
from p3dbase.atomic import TEMP_MARKER, fsync_dir, write_bytes, writer_token
from p3dbase.digest import settings_key
from p3dbase.errors import NotRegularFileError, brief, file_problem, open_regular, read_regular, shown
from p3dbase.lock import hold_lock, holder_of

STORE_FILE = "store.json"
STORE_FORMAT = "p3d-two-stream flow store"
STORE_VERSION = 1
LAYOUTS = ("packed", "mmaction")
PACK_SUFFIX = ".pack"
PACK_MAGIC = b"P3DPACK1"
# What to do about an image found damaged as it is read. A plain `flow` re-run does not see it: bit rot
# keeps a pack's size and mtime, which is all a re-run looks at; `verify` reads every image and marks
# the damaged videos in the index, and the next `flow` run redoes those.
REDO_DAMAGED = ("run `python -m pipeline verify --config ...` (it marks the damaged videos), then `make flow` "
                "(it redoes them)")
LOCK_SUFFIX = ".lock"
RUNNING_PREFIX = ".flow-running-"  # + writer token + LOCK_SUFFIX: a `flow` run writing the store (Store.running)
MMACTION_SIDE_FILE = ".p3d.json"  # in each mmaction video folder: CRC32 of every JPEG, what it was made from
_FOOTER = struct.Struct("<Q8s")  # length of the JSON meta, magic


def check_video_id(video_id: str) -> str:
    # Every '/'-separated part non-empty and not hidden (so no '.' or '..' either), told by substrings
    # rather than a split: a re-run checks 650,000 ids (tests/flow/test_store.py compares the two).
    if (not video_id or "\\" in video_id or video_id[0] in "./" or video_id[-1] == "/" or "/." in video_id
            or "//" in video_id):
        raise FlowError(f"video id {video_id!r}: must be a relative path of non-hidden names "
                        "separated by '/' (e.g. 'Class/v_Class_g01_c01')")
    return video_id


# The store's own names at its top (store.json, config.toml, manifest.csv, index/, flow.log, the
# missing list and the mmaction2 lists the pipeline writes beside them): a video's folder of one of
# these names put frames inside the index, or a class folder named config.toml made every run fail.
_TOP_NAMES = frozenset({STORE_FILE, "index"})
_TOP_SUFFIXES = (".csv", ".json", ".jsonl", ".log", ".toml", ".txt")
# A video's file names carry a marker and the writer's `host-pid` (temporaries: `.<name>.pack.tmp-
# <host>-<pid>`, up to 64 + 8 characters of host and pid): a name longer than this leaves a file
# system's 255 bytes no room for them.
MAX_NAME_BYTES = 160


def store_name_problem(video_id: str, layout: str) -> str:
    """Why the store cannot keep `video_id` (a valid id, check_video_id) under its name, "" when it
    can: its top folder has the name of one of the store's own files, a folder of it ends in `.pack`
    (where the video of that name keeps its pack), or its name is too long for the temporary names."""
    # String operations only, no split: a re-run checks 650,000 ids.
    slash = video_id.find("/")
    head = video_id if slash < 0 else video_id[:slash]
    if (slash >= 0 or layout == "mmaction") and (head in _TOP_NAMES or head.endswith(_TOP_SUFFIXES)):
        return (f"video id {shown(video_id)}: its folder {shown(head)} has the name of one of the store's own "
                f"files ({STORE_FILE}, index/, or a name ending in {', '.join(_TOP_SUFFIXES)}): rename that folder")
    if layout == "packed" and PACK_SUFFIX + "/" in video_id:
        folder = video_id[:video_id.index(PACK_SUFFIX + "/") + len(PACK_SUFFIX)]
        return (f"video id {shown(video_id)}: its folder {shown(folder)} is where video "
                f"{shown(folder[:-len(PACK_SUFFIX)])} keeps its pack: rename that folder")
    name = video_id[video_id.rfind("/") + 1:]
    if len(name) * 4 > MAX_NAME_BYTES and len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return (f"video id {brief(video_id, 120)}: its name is {len(name.encode('utf-8', 'surrogateescape'))} "
                f"bytes, the store's files for it need room for a marker within the file system's 255: at most "
                f"{MAX_NAME_BYTES}; rename it")
    return ""


def nested_problems(video_ids: Iterable[str], layout: str) -> dict[str, str]:
    """The ids among `video_ids` whose folder is another's, with why: in the mmaction layout a video
    is a folder, so `c/sub` and `c/sub/v` wrote one into the other, and finishing `c/sub` deleted
    `c/sub/v` (the packed layout keeps `c/sub.pack` beside `c/sub/`)."""
    if layout != "mmaction":
        return {}
    ids = set(video_ids)
    problems = {}
    for video_id in ids:
        folder = video_id
        while "/" in folder:
            folder = folder.rpartition("/")[0]
            if folder in ids:
                problems[video_id] = (f"video id {shown(video_id)} lies inside the frame folder of video "
                                      f"{shown(folder)} (the mmaction layout: a video is a folder): rename one")
                break
    return problems


def _check_indices(video_id: str, indices: Sequence[int], count: int, what: str) -> list[int]:
    idx = [int(i) for i in indices]
    bad = [i for i in idx if not 0 <= i < count]
    if bad:
        raise FlowError(f"video {video_id}: {what} index {bad[0]} out of range, it has {count} {what} images")
    return idx


# The largest frame side a store holds. A pack's meta (its JSON tail) is covered by no checksum, and a
# reader allocates frames of the size it states: 100000x100000 asked for 447 GiB. 16384 is twice the
# longest side of the largest video formats (H.264 and HEVC levels 6.x: 8192x4320), the flow stage
# guards at 1920x1080 by default (`max_pixels`), and TV-L1 on a frame of 16384x16384 would need about
# 32 GB per worker (30 float images per pixel): a larger side is damage, not data.
MAX_SIDE = 16384


def _meta_problem(meta: dict[str, Any], size: int, meta_start: int) -> str:
    """What is wrong with a pack's meta (its JSON tail) against the file of `size` bytes whose meta
    starts at `meta_start` ("" when nothing): integer counts, N frames and N - 1 flow images as the
    writer stores them, a plausible frame size, and the index and checksum tables between the images
    and the meta. Checked before anything is read or allocated by these numbers."""
    for name in ("codec", "flow_codec"):  # an unknown one read as "raw image of N bytes, expected M"
        if meta.get(name, "png") not in CODECS:
            return f"{name} {meta.get(name)!r} is none of {', '.join(CODECS)}"
    names = ("height", "width", "num_frames", "num_flows", "index_offset", "crc32_offset")
    for name in names:
        value = meta.get(name, 0)
        if type(value) is not int:  # not a float (1e400 is inf), not a bool, not a string
            return f"{name} is {value!r}, not an integer"
    height, width, frames, flows = meta["height"], meta["width"], meta["num_frames"], meta["num_flows"]
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        return f"frames of {width}x{height} (each side must be 1..{MAX_SIDE})"
    if frames < 1 or flows != frames - 1:
        return f"num_frames {frames} and num_flows {flows} (N frames have N - 1 flow images)"
    rows, index_offset, crc32_offset = frames + flows, meta["index_offset"], meta.get("crc32_offset")
    index_end = crc32_offset if crc32_offset is not None else meta_start
    if not len(PACK_MAGIC) <= index_offset <= index_end - rows * 16:
        return f"an index of {rows} rows at byte {index_offset} does not fit in the file of {size} bytes"
    if crc32_offset is not None and crc32_offset + rows * 4 > meta_start:
        return f"checksums of {rows} images at byte {crc32_offset} do not fit in the file of {size} bytes"
    return ""


class VideoFrames(ABC):
    """Random access to one stored video's RGB frames and flow images."""

    video_id: str
    num_frames: int
    num_flows: int
    height: int
    width: int
    origin: dict[str, Any] | None = None  # what the flow stage made it from (flow.index.Origin.as_dict)

    @abstractmethod
    def rgb(self, indices: Sequence[int], out: np.ndarray | None = None, *, fast: bool = False) -> np.ndarray:
        """uint8 [T, H, W, 3] BGR frames at `indices` (0-based); into `out` when given (a C-contiguous
        uint8 array of that shape, which a loader reuses). `fast`: JPEGs by libjpeg-turbo's fast IDCT
        and upsampling (flow.codec; training clips), a hint that readers without it ignore."""

    @abstractmethod
    def flow(self, indices: Sequence[int], out: np.ndarray | None = None, *, fast: bool = False) -> np.ndarray:
        """uint8 [T, H, W, 2] flow images at `indices`, x then y, 128 = no motion; into `out` when given."""

    def flow_planes(self, indices: Sequence[int], out: np.ndarray | None = None, *, fast: bool = False
                    ) -> np.ndarray:
        """uint8 [2, T, H, W]: the x images of `flow(indices)`, then the y images; into `out` when given
        (C-contiguous, that shape). A training loader's read: x and y are separate JPEGs, decoded
        straight into their planes, and a loader resizes plane by plane (streams.transforms), so the
        interleaving copy and the one back are not made."""
        flow = self.flow(indices, fast=fast)
        out = _output(out, (2, *flow.shape[:3]), self.video_id)
        for k in range(len(flow)):
            cv2.split(flow[k], [out[0, k], out[1, k]])
        return out

    def images(self, modality: str, indices: Sequence[int], out: np.ndarray, *, fast: bool = False) -> Iterator[int]:
        """Decode the images at `indices` one at a time into `out`, yielding each one's position in
        `indices` once it is there: a frame [H, W, 3] for "rgb", the x and y planes [2, H, W] of a flow
        image for "flow" (C-contiguous uint8). A training loader resizes each image while it is still in
        the CPU's cache (streams.transforms.CropOut), and holds one image, not a window of them."""
        for k, i in enumerate(indices):
            if modality == "rgb":
                self.rgb([i], out[None], fast=fast)
            else:
                self.flow_planes([i], out[:, None], fast=fast)
            yield k

    @abstractmethod
    def jpeg_blobs(self, modality: str, indices: Sequence[int]) -> list[np.ndarray]:
        """The JPEG files' bytes at `indices`, undecoded (a GPU decodes them: train.decode = "cuda"):
        one per frame for "rgb", x then y per flow image for "flow". FlowError naming the video when
        that modality is not stored as JPEG."""

    def verify(self) -> None:  # noqa: B027 (a no-op for layouts without checksums)
        """FlowError naming the video and image if a stored image does not match its checksum
        (packed layout; packs written before checksums existed, and mmaction JPEGs, have none)."""

    def close(self) -> None:  # noqa: B027 (a no-op for layouts that hold nothing open)
        pass

    def __enter__(self) -> VideoFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.video_id!r}, frames={self.num_frames}, "
                f"flows={self.num_flows}, {self.width}x{self.height})")


class PackedFrames(VideoFrames):
    """Reader of one `<video_id>.pack` file (see `PackWriter` for the format)."""

    def __init__(self, path: Path, video_id: str):
        self.video_id = video_id
        self.path = path
        try:
            self._fd = open_regular(path)  # a FIFO in a pack's place made every reader wait for ever
        except (IsADirectoryError, NotRegularFileError) as e:  # their strerror says which
            raise FlowError(f"video {video_id}: {path} is {e.strerror}, not a pack: move it out of the store") from None
        except OSError as e:
            raise FlowError(f"video {video_id}: cannot open {path}: {e.strerror}") from None
        try:
            self._read_index()
        except FlowError:
            self.close()
            raise

    def _read_index(self) -> None:
        def broken(detail: str = "") -> FlowError:
            return FlowError(f"video {self.video_id}: {self.path} is not a complete pack file{detail}: {REDO_DAMAGED}")

        try:
            size = os.fstat(self._fd).st_size
            if size < len(PACK_MAGIC) + _FOOTER.size or os.pread(self._fd, 8, 0) != PACK_MAGIC:
                raise broken()
            meta_len, magic = _FOOTER.unpack(os.pread(self._fd, _FOOTER.size, size - _FOOTER.size))
            if magic != PACK_MAGIC or meta_len > size - _FOOTER.size - len(PACK_MAGIC):
                raise broken()
            meta_start = size - _FOOTER.size - meta_len
            try:
                meta = json.loads(os.pread(self._fd, meta_len, meta_start))
                if not isinstance(meta, dict):  # a list read by key said "list indices must be integers"
                    raise broken(f" (meta: a JSON {type(meta).__name__}, not an object)")
                self.codec = meta["codec"]  # of the RGB frames
                self.flow_codec = meta.get("flow_codec", self.codec)  # packs before flow_codec: one codec
                self.origin = meta.get("origin")  # what it was made from (flow.index.Origin); older packs: None
                self.height, self.width, self.num_frames, self.num_flows, index_offset = (
                    meta["height"], meta["width"], meta["num_frames"], meta["num_flows"], meta["index_offset"])
                crc32_offset = meta.get("crc32_offset")  # packs written before checksums existed have none
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:  # nesting: json recurses
                raise broken(f" ({e})") from None
            problem = _meta_problem(meta, size, meta_start)
            if problem:
                raise broken(f" (meta: {problem})")
            rows = self.num_frames + self.num_flows
            index = np.frombuffer(os.pread(self._fd, rows * 16, index_offset), dtype="<i8").reshape(rows, 2)
            crcs = None  # packs written before checksums existed have none: they still open
            if crc32_offset is not None:
                crcs = np.frombuffer(os.pread(self._fd, rows * 4, crc32_offset), dtype="<u4").reshape(rows)
        except OSError as e:  # a disk that fails to read (EIO), a file cut under the reader
            raise FlowError(f"video {self.video_id}: cannot read {self.path}: {e.strerror}") from None
        # Every blob between the magic and the index (each bound checked before the sum: no int64 overflow).
        if index.size and (int(index[:, 0].min()) < len(PACK_MAGIC) or int(index[:, 1].min()) < 0
                           or int(index.max()) > index_offset
                           or int((index[:, 0] + index[:, 1]).max()) > index_offset):
            raise broken(" (its index points outside the images)")
        self._rgb_index = index[: self.num_frames]
        self._flow_index = index[self.num_frames:]
        self._rgb_crc = None if crcs is None else crcs[: self.num_frames]
        self._flow_crc = None if crcs is None else crcs[self.num_frames:]

    @property
    def has_checksums(self) -> bool:
        return self._rgb_crc is not None

    def _check_crc(self, blob: np.ndarray, crcs: np.ndarray | None, i: int, what: str) -> np.ndarray:
        if crcs is not None and zlib.crc32(blob) != int(crcs[i]):
            raise FlowError(f"video {self.video_id}: {what} {i} in {self.path} is corrupt (CRC32 "
                            f"mismatch): {REDO_DAMAGED}")
        return blob

    def verify(self) -> None:
        if self.has_checksums:
            for index, crcs, what in ((self._rgb_index, self._rgb_crc, "frame"),
                                      (self._flow_index, self._flow_crc, "flow image")):
                for i, blob in enumerate(self._blobs(index)):
                    self._check_crc(blob, crcs, i, what)
        # The frame size in the meta is covered by no checksum: the first images must decode to it.
        self.rgb([0])
        if self.num_flows:
            self.flow([0])

    @property
    def rgb_bytes(self) -> int:
        """Bytes the RGB frames take in the file (the rest is flow and a small index)."""
        return int(self._rgb_index[:, 1].sum())

    def _blobs(self, rows: np.ndarray) -> list[np.ndarray]:
        """The blobs of these index rows; one read when they lie close together (a window)."""
        if len(rows) == 0:
            return []
        start, end = int(rows[:, 0].min()), int((rows[:, 0] + rows[:, 1]).max())
        if end - start <= 2 * int(rows[:, 1].sum()):
            span = np.frombuffer(os.pread(self._fd, end - start, start), dtype=np.uint8)
            return [span[o - start: o - start + n] for o, n in rows.tolist()]
        return [np.frombuffer(os.pread(self._fd, n, o), dtype=np.uint8) for o, n in rows.tolist()]

    def _undecodable(self, e: CodecError, i: int, what: str, codec: str) -> FlowError:
        return FlowError(f"video {self.video_id}: {what} {i} in {self.path} does not decode as {codec} ({e}): "
                         f"{REDO_DAMAGED}")

    def _side(self, rgb: bool) -> tuple[str, str, np.ndarray, np.ndarray | None]:
        """(what an image is called, its codec, index rows, CRCs) of the frames or of the flow images."""
        return (("frame", self.codec, self._rgb_index, self._rgb_crc) if rgb else
                ("flow image", self.flow_codec, self._flow_index, self._flow_crc))

    def _indices(self, rgb: bool, indices: Sequence[int]) -> list[int]:
        return _check_indices(self.video_id, indices, self.num_frames if rgb else self.num_flows,
                              "frame" if rgb else "flow")

    def _decode_each(self, rgb: bool, idx: list[int],
                     decode: Callable[[int, np.ndarray, str], None]) -> Iterator[int]:
        """Every blob at the checked `idx`, its CRC checked, through decode(k, blob, codec); yields k once
        it is decoded. A blob that does not decode names the video and the image."""
        what, codec, index, crcs = self._side(rgb)
        for k, blob in enumerate(self._blobs(index[idx])):
            try:
                decode(k, self._check_crc(blob, crcs, idx[k], what), codec)
            except CodecError as e:
                raise self._undecodable(e, idx[k], what, codec) from None
            yield k

    def rgb(self, indices: Sequence[int], out: np.ndarray | None = None, *, fast: bool = False) -> np.ndarray:
        idx = self._indices(True, indices)
        out = _output(out, (len(idx), self.height, self.width, 3), self.video_id)
        for _ in self._decode_each(True, idx, lambda k, blob, codec: decode_rgb(codec, blob, out[k], fast)):
            pass
        return out

    def flow(self, indices: Sequence[int], out: np.ndarray | None = None, *, fast: bool = False) -> np.ndarray:
        idx = self._indices(False, indices)
        out = _output(out, (len(idx), self.height, self.width, 2), self.video_id)
        scratch = np.empty((2, self.height, self.width), np.uint8)
        for _ in self._decode_each(False, idx,
                                   lambda k, blob, codec: decode_flow(codec, blob, out[k], scratch, fast)):
            pass
        return out

    def flow_planes(self, indices: Sequence[int], out: np.ndarray | None = None, *, fast: bool = False
                    ) -> np.ndarray:
        idx = self._indices(False, indices)
        out = _output(out, (2, len(idx), self.height, self.width), self.video_id)
        for _ in self._decode_each(False, idx, lambda k, blob, codec: decode_flow_planes(codec, blob, out[0, k],
                                                                                          out[1, k], fast)):
            pass
        return out

    def images(self, modality: str, indices: Sequence[int], out: np.ndarray, *, fast: bool = False) -> Iterator[int]:
        rgb = modality == "rgb"
        idx = self._indices(rgb, indices)
        out = _output(out, (self.height, self.width, 3) if rgb else (2, self.height, self.width), self.video_id)
        if rgb:
            return self._decode_each(True, idx, lambda k, blob, codec: decode_rgb(codec, blob, out, fast))
        return self._decode_each(False, idx, lambda k, blob, codec: decode_flow_planes(codec, blob, out[0], out[1],
                                                                                        fast))

    def jpeg_blobs(self, modality: str, indices: Sequence[int]) -> list[np.ndarray]:
        rgb = modality == "rgb"
        what, codec, index, crcs = self._side(rgb)
        if codec != "jpeg":
            raise FlowError(f"video {self.video_id}: {self.path} stores {modality} as {codec}, not JPEG "
                            "(GPU decoding needs a store made with codec/flow_codec = \"jpeg\")")
        idx = self._indices(rgb, indices)
        blobs = [self._check_crc(b, crcs, idx[k], what) for k, b in enumerate(self._blobs(index[idx]))]
        if rgb:
            return blobs
        try:
            return [jpeg for blob in blobs for jpeg in flow_jpegs(blob)]
        except CodecError as e:
            raise FlowError(f"video {self.video_id}: a flow image in {self.path} is damaged ({e}): "
                            f"{REDO_DAMAGED}") from None

    def close(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers re-open the file
        return {"path": self.path, "video_id": self.video_id}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["video_id"])


def _output(out: np.ndarray | None, shape: tuple[int, ...], video_id: str) -> np.ndarray:
    if out is None:
        try:
            return np.empty(shape, np.uint8)
        except MemoryError:  # a frame size no video has: a damaged pack meta (MAX_SIDE bounds each side)
            raise FlowError(f"video {video_id}: {list(shape)} images take {math.prod(shape) / 2**30:.1f} GiB, "
                            "more than this machine can give: is its frame size right?") from None
    if out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise FlowError(f"video {video_id}: decoding {list(shape)} images into a {out.dtype} "
                        f"{list(out.shape)} array (needs a C-contiguous uint8 one of that shape)")
    return out


def other_size(path: Path, size: tuple[int, int], first: tuple[int, int]) -> str:
    """Why the image `path` of (height, width) `size` does not belong with a video whose first frame is
    `first` ("" when it does): a frame folder with images of two sizes is broken, not one to resize
    quietly (the rawframes import, the mmaction layout's reader, predict on a frame folder)."""
    if size == first:
        return ""
    return (f"{shown(path)} is {size[1]}x{size[0]} px, but the video's first frame is {first[1]}x{first[0]}: every "
            "image of a video must have one size")


class MmactionFrames(VideoFrames):
    """Reader of one mmaction2 rawframes directory."""

    def __init__(self, path: Path, video_id: str):
        self.video_id = video_id
        self.path = path
        try:
            names = {e.name for e in os.scandir(path)}
        except OSError as e:
            raise FlowError(f"video {video_id}: cannot read {path}: {e.strerror}") from None
        self.origin, self._crcs = self._read_side(names)
        self.num_frames = sum(n.startswith("img_") for n in names)
        self.num_flows = sum(n.startswith("flow_x_") for n in names)
        expected = {f"img_{i + 1:05d}.jpg" for i in range(self.num_frames)}
        expected |= {f"flow_{c}_{i + 1:05d}.jpg" for c in "xy" for i in range(self.num_flows)}
        if self.num_frames < 1 or self.num_flows != self.num_frames - 1 or not expected <= names:
            raise FlowError(f"video {video_id}: {path} does not hold img_00001..N and "
                            f"flow_x/flow_y_00001..N-1 JPEGs")
        self.height = self.width = 0  # the first frame's size, which every image of the video must have
        first = self._read(f"img_{1:05d}.jpg", cv2.IMREAD_COLOR)
        self.height, self.width = first.shape[:2]

    def _read_side(self, names: set[str]) -> tuple[dict[str, Any] | None, dict[str, int] | None]:
        """The origin and CRC32 of every JPEG from the side file the flow stage writes (folders
        from elsewhere have none: they still open)."""
        if MMACTION_SIDE_FILE not in names:
            return None, None
        try:
            side = json.loads(read_regular(self.path / MMACTION_SIDE_FILE))
            crcs = {str(k): int(v) for k, v in side["crc32"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            why = e.strerror if isinstance(e, OSError) else e  # not "[Errno 22] ...: '<the path again>'"
            raise FlowError(f"video {self.video_id}: {self.path / MMACTION_SIDE_FILE} is damaged ({why})") from None
        return side.get("origin"), crcs

    def verify(self) -> None:
        """Every JPEG against its CRC32, decoded and of the first frame's size (a folder without
        checksums: decoded and its size checked)."""
        names = [f"img_{i + 1:05d}.jpg" for i in range(self.num_frames)]
        names += [f"flow_{c}_{i + 1:05d}.jpg" for i in range(self.num_flows) for c in "xy"]
        for name in names:
            self._read(name, cv2.IMREAD_UNCHANGED)

    def _bytes(self, name: str) -> bytes:
        """The file `name`'s bytes, checked against its CRC32 when the side file keeps them (as a pack's
        blobs are on every read: a JPEG with flipped bytes may still decode, into a wrong image)."""
        # Bytes through Python, not cv2.imread: OpenCV crashes on a path that is not valid UTF-8.
        try:
            data = read_regular(self.path / name)  # not read_bytes: a FIFO in an image's place blocks for ever
        except OSError as e:
            raise FlowError(f"video {self.video_id}: cannot read {self.path / name}: {e.strerror}") from None
        if self._crcs is not None and zlib.crc32(data) != self._crcs.get(name):
            raise FlowError(f"video {self.video_id}: {self.path / name} is corrupt (CRC32 mismatch): "
                            f"{REDO_DAMAGED}")
        return data

    def _read(self, name: str, flags: int) -> np.ndarray:
        data = self._bytes(name)
        # The EXIF orientation ignored, as the packed store's readers (simplejpeg, nvJPEG) ignore it: one
        # rule for every reader of a store (folders from other tools may carry a tag).
        img = (cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION) if data
               else None)  # OpenCV asserts on b""
        if img is None:
            raise FlowError(f"video {self.video_id}: cannot decode {self.path / name}")
        self._check_size(name, img.shape[0], img.shape[1])
        return img

    def _check_size(self, name: str, height: int, width: int) -> None:
        """An image of another size than the first frame is a broken folder (a pack's meta has one size)."""
        if self.height and (why := other_size(self.path / name, (height, width), (self.height, self.width))):
            raise FlowError(f"video {self.video_id}: {why}")

    def rgb(self, indices: Sequence[int], out: np.ndarray | None = None, *, fast: bool = False) -> np.ndarray:
        # The layout as mmaction2 reads it (cv2, accurate): `fast` is ignored.
        idx = _check_indices(self.video_id, indices, self.num_frames, "frame")
        out = _output(out, (len(idx), self.height, self.width, 3), self.video_id)
        for k, i in enumerate(idx):
            out[k] = self._read(f"img_{i + 1:05d}.jpg", cv2.IMREAD_COLOR)
        return out

    def jpeg_blobs(self, modality: str, indices: Sequence[int]) -> list[np.ndarray]:
        if modality == "rgb":
            names = [f"img_{i + 1:05d}.jpg" for i in _check_indices(self.video_id, indices, self.num_frames, "frame")]
        else:
            names = [f"flow_{c}_{i + 1:05d}.jpg" for i in _check_indices(self.video_id, indices, self.num_flows, "flow")
                     for c in "xy"]
        blobs = []
        for name in names:
            data = self._bytes(name)
            try:  # the header's size (the GPU would resize an image of another size quietly)
                height, width = jpeg_header(data)[:2]
            except CodecError:
                pass  # not a JPEG this parser reads: the decoder says so
            else:
                self._check_size(name, height, width)
            blobs.append(np.frombuffer(data, np.uint8))
        return blobs

    def flow(self, indices: Sequence[int], out: np.ndarray | None = None, *, fast: bool = False) -> np.ndarray:
        idx = _check_indices(self.video_id, indices, self.num_flows, "flow")
        out = _output(out, (len(idx), self.height, self.width, 2), self.video_id)
        for k, i in enumerate(idx):
            for c, axis in enumerate("xy"):
                out[k, :, :, c] = self._read(f"flow_{axis}_{i + 1:05d}.jpg", cv2.IMREAD_GRAYSCALE)
        return out

    def flow_planes(self, indices: Sequence[int], out: np.ndarray | None = None, *, fast: bool = False
                    ) -> np.ndarray:
        idx = _check_indices(self.video_id, indices, self.num_flows, "flow")
        out = _output(out, (2, len(idx), self.height, self.width), self.video_id)
        for k, i in enumerate(idx):
            for c, axis in enumerate("xy"):
                out[c, k] = self._read(f"flow_{axis}_{i + 1:05d}.jpg", cv2.IMREAD_GRAYSCALE)
        return out


class VideoWriter(ABC):
    """Writes one video into a store under a temporary name; `commit()` makes it visible.

    Use as a context manager: a clean exit commits, an exception discards the partial video.
    Frames and flows may be added in any number of chunks; at commit a video of N frames must have
    exactly N - 1 flows.
    """

    def __init__(self, store: Store, video_id: str):
        self.store = store
        self.video_id = check_video_id(video_id)
        problem = store_name_problem(video_id, store.layout)
        if problem:  # the flow stage refuses such a video before (flow.stage._refuse); this guards other writers
            raise FlowError(problem)
        self.final = store.path(video_id)
        self.tmp = store.temp_path(video_id)
        self.num_frames = 0
        self.num_flows = 0
        self.shape: tuple[int, int] | None = None
        self.origin: dict[str, Any] | None = None  # what it is made from (flow.index.Origin.as_dict), kept with it
        self.final.parent.mkdir(parents=True, exist_ok=True)

    def _check(self, arr: np.ndarray, channels: int, what: str) -> np.ndarray:
        arr = np.asarray(arr)
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != channels:
            raise FlowError(f"video {self.video_id}: {what} must be uint8 [T, H, W, {channels}], "
                            f"got {arr.dtype} {list(arr.shape)}")
        self._check_shape(arr.shape[1:3], what)
        return arr

    def _check_shape(self, shape: tuple[int, int], what: str) -> None:
        if self.shape is None:
            if not (0 < shape[0] <= MAX_SIDE and 0 < shape[1] <= MAX_SIDE):
                raise FlowError(f"video {self.video_id}: {what} are {shape[1]}x{shape[0]}: a store holds frames of "
                                f"1..{MAX_SIDE} pixels a side (resize them: [flow] size)")
            self.shape = tuple(shape)
        elif tuple(shape) != self.shape:
            raise FlowError(f"video {self.video_id}: {what} are {shape[1]}x{shape[0]}, "
                            f"earlier images were {self.shape[1]}x{self.shape[0]}")

    def stores_jpeg(self, modality: str) -> bool:
        """Whether the store keeps `modality` ("rgb" or "flow") as JPEG files at its jpeg_quality: then
        JPEGs of the video's size are added as they are (`add_rgb_jpegs`, `add_flow_jpegs`)."""
        if self.store.layout == "mmaction":
            return True
        return (self.store.codec if modality == "rgb" else self.store.flow_codec) == "jpeg"

    def add_rgb_jpegs(self, jpegs: Sequence[bytes], shape: tuple[int, int]) -> None:
        """Append frames given as BGR JPEG files' bytes, stored byte for byte; `shape`: their (H, W),
        which the caller has checked (a store with `stores_jpeg("rgb")` only)."""
        self._check_shape(shape, "RGB frames")
        for jpeg in jpegs:
            self._put_rgb_jpeg(self.num_frames, bytes(jpeg))
            self.num_frames += 1

    def add_flow_jpegs(self, pairs: Sequence[tuple[bytes, bytes]], shape: tuple[int, int]) -> None:
        """Append flow images given as (x, y) greyscale JPEG files' bytes at the store's bound, stored
        byte for byte; `shape`: their (H, W) (a store with `stores_jpeg("flow")` only)."""
        self._check_shape(shape, "flow images")
        for x_jpeg, y_jpeg in pairs:
            self._put_flow_jpegs(self.num_flows, bytes(x_jpeg), bytes(y_jpeg))
            self.num_flows += 1

    def add_rgb(self, frames: np.ndarray) -> None:
        """Append uint8 [T, H, W, 3] BGR frames."""
        frames = self._check(frames, 3, "RGB frames")
        for f in frames:
            self._put_rgb(self.num_frames, f)
            self.num_frames += 1

    def add_flow(self, flow_u8: np.ndarray) -> None:
        """Append uint8 [T, H, W, 2] flow images (x then y, 128 = no motion)."""
        flow_u8 = self._check(flow_u8, 2, "flow images")
        for f in flow_u8:
            self._put_flow(self.num_flows, f)
            self.num_flows += 1

    def commit(self) -> None:
        if self.num_frames < 1 or self.num_flows != self.num_frames - 1:
            raise FlowError(f"video {self.video_id}: {self.num_frames} frames need "
                            f"{max(self.num_frames - 1, 0)} flow images, got {self.num_flows}")
        self._finish()

    def abort(self) -> None:
        _remove(self.tmp)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:  # a full disk while finishing: nothing half-written stays
            self.abort()
            raise

    @abstractmethod
    def _put_rgb(self, i: int, frame: np.ndarray) -> None:
        """Store frame `i`."""

    @abstractmethod
    def _put_flow(self, i: int, flow_u8: np.ndarray) -> None:
        """Store flow image `i`."""

    @abstractmethod
    def _put_rgb_jpeg(self, i: int, jpeg: bytes) -> None:
        """Store frame `i`, a JPEG file's bytes."""

    @abstractmethod
    def _put_flow_jpegs(self, i: int, x_jpeg: bytes, y_jpeg: bytes) -> None:
        """Store flow image `i`, two JPEG files' bytes."""

    @abstractmethod
    def _finish(self) -> None:
        """Make the complete video visible under its final name."""


class PackWriter(VideoWriter):
    """`<video_id>.pack`: magic, every RGB blob in frame order, every flow blob in order, an int64
    index of (offset, length) rows (frames, then flows), the uint32 CRC32 of every blob in the same
    order, a JSON meta, its length (uint64) and the magic again. Flow blobs wait in a side file until
    commit, so the bytes do not depend on how the video was chunked, nor on time or machine: equal
    inputs give equal files. The frames of a window lie next to each other and are read with one
    system call."""

    def __init__(self, store: Store, video_id: str):
        super().__init__(store, video_id)
        self._side = self.tmp.with_name(self.tmp.name + ".flow")
        self._rgb_file = open(self.tmp, "wb")
        self._flow_file = open(self._side, "wb")
        self._rgb_file.write(PACK_MAGIC)
        self._rgb_rows: list[tuple[int, int, int]] = []  # offset, length, CRC32
        self._flow_rows: list[tuple[int, int, int]] = []

    @staticmethod
    def _put(f: Any, blob: bytes) -> tuple[int, int, int]:
        offset = f.tell()
        f.write(blob)
        return offset, len(blob), zlib.crc32(blob)

    def _put_rgb(self, i: int, frame: np.ndarray) -> None:
        blob = encode_rgb(self.store.codec, frame, self.store.jpeg_quality)
        self._rgb_rows.append(self._put(self._rgb_file, blob))

    def _put_flow(self, i: int, flow_u8: np.ndarray) -> None:
        blob = encode_flow(self.store.flow_codec, flow_u8, self.store.jpeg_quality)
        self._flow_rows.append(self._put(self._flow_file, blob))

    def _put_rgb_jpeg(self, i: int, jpeg: bytes) -> None:
        self._rgb_rows.append(self._put(self._rgb_file, jpeg))

    def _put_flow_jpegs(self, i: int, x_jpeg: bytes, y_jpeg: bytes) -> None:
        self._flow_rows.append(self._put(self._flow_file, flow_jpeg_blob(x_jpeg, y_jpeg)))

    def _finish(self) -> None:
        f = self._rgb_file
        base = f.tell()
        self._flow_file.close()
        with open(self._side, "rb") as side:
            shutil.copyfileobj(side, f, 1 << 20)
        rows = self._rgb_rows + [(base + offset, length, crc) for offset, length, crc in self._flow_rows]
        index_offset = f.tell()
        f.write(np.asarray([r[:2] for r in rows], dtype="<i8").reshape(-1, 2).tobytes())
        crc32_offset = f.tell()
        f.write(np.asarray([r[2] for r in rows], dtype="<u4").tobytes())
        codecs = {"codec": self.store.codec}
        if self.store.flow_codec != self.store.codec:
            codecs["flow_codec"] = self.store.flow_codec
        meta = json.dumps({**codecs, "height": self.shape[0], "width": self.shape[1],
                           "num_frames": self.num_frames, "num_flows": self.num_flows,
                           "index_offset": index_offset, "crc32_offset": crc32_offset,
                           **({"origin": self.origin} if self.origin else {})},
                          sort_keys=True).encode()
        f.write(meta)
        f.write(_FOOTER.pack(len(meta), PACK_MAGIC))
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)
        self._side.unlink()

    def abort(self) -> None:
        self._rgb_file.close()
        self._flow_file.close()
        _remove(self._side)
        super().abort()


class MmactionWriter(VideoWriter):
    """Fills `.<video>.tmp/` with TSN-named JPEGs, then renames it to `<video>/`."""

    def __init__(self, store: Store, video_id: str):
        super().__init__(store, video_id)
        self.tmp.mkdir()
        self._params = [cv2.IMWRITE_JPEG_QUALITY, self.store.jpeg_quality]
        self._crcs: dict[str, int] = {}

    def _imwrite(self, name: str, img: np.ndarray) -> None:
        ok, buf = cv2.imencode(".jpg", img, self._params)
        if not ok:
            raise FlowError(f"video {self.video_id}: JPEG encoding failed")
        self._write(name, buf.tobytes())

    def _write(self, name: str, data: bytes) -> None:
        (self.tmp / name).write_bytes(data)
        self._crcs[name] = zlib.crc32(data)

    def _put_rgb_jpeg(self, i: int, jpeg: bytes) -> None:
        self._write(f"img_{i + 1:05d}.jpg", jpeg)

    def _put_flow_jpegs(self, i: int, x_jpeg: bytes, y_jpeg: bytes) -> None:
        self._write(f"flow_x_{i + 1:05d}.jpg", x_jpeg)
        self._write(f"flow_y_{i + 1:05d}.jpg", y_jpeg)

    def _put_rgb(self, i: int, frame: np.ndarray) -> None:
        self._imwrite(f"img_{i + 1:05d}.jpg", frame)

    def _put_flow(self, i: int, flow_u8: np.ndarray) -> None:
        self._imwrite(f"flow_x_{i + 1:05d}.jpg", np.ascontiguousarray(flow_u8[..., 0]))
        self._imwrite(f"flow_y_{i + 1:05d}.jpg", np.ascontiguousarray(flow_u8[..., 1]))

    def _finish(self) -> None:
        # The side file (hidden: mmaction2 reads only img_/flow_ names) holds every JPEG's CRC32 and the origin.
        side = {"crc32": dict(sorted(self._crcs.items())), **({"origin": self.origin} if self.origin else {})}
        (self.tmp / MMACTION_SIDE_FILE).write_text(json.dumps(side, sort_keys=True))
        old = self.final.with_name(f".{self.final.name}.old-{writer_token()}")
        if self.final.exists():
            os.rename(self.final, old)
        try:
            os.rename(self.tmp, self.final)
        except OSError:
            if not self.final.is_dir():
                raise
            _remove(self.tmp)  # another writer of the same video (an orphaned worker) finished first
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _remove_all(paths: Sequence[Path]) -> int:
    for path in paths:
        _remove(path)
    return len(paths)


class Store:
    """A frame + flow store on disk. Get one with `open_store` or `create_store`."""

    def __init__(self, root: Path, info: dict[str, Any]):
        self.root = Path(root)
        self.info = info
        self.layout: str = info["layout"]
        self.codec: str = info.get("codec", "")  # packed: of the RGB frames
        self.flow_codec: str = info.get("flow_codec", self.codec)  # packed: of the flow images
        self.bound: float = float(info["bound"])
        self.jpeg_quality: int = int(info.get("jpeg_quality", 95))
        self.params: dict[str, Any] = info.get("params", {})

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r}, layout={self.layout!r}, codec={self.codec!r}, bound={self.bound})"

    @property
    def description_path(self) -> Path:
        """store.json: layout, codec, bound and the settings the frames and flow were made with."""
        return self.root / STORE_FILE

    def manifest_path(self, shard: tuple[int, int] = (0, 1)) -> Path:
        """The flow stage's per-video CSV (one per shard of a sharded run)."""
        from flow.manifest import manifest_name

        return self.root / manifest_name(shard)

    @property
    def flow_settings(self) -> dict[str, Any]:
        """The flow settings a stream trained on this store learnt from, as checkpoints record them and
        `eval`, `predict` and `features` compare them: the bound, `source` ("videos" or "rawframes")
        and the store's params."""
        return {"bound": float(self.bound), "source": "videos", **self.params}

    @functools.cached_property
    def settings_digest(self) -> str:
        """A short digest of store.json's settings: an indexed video made under another one is redone,
        and one that records another is refused by `open` (once per Store: `info` is not changed)."""
        return settings_key(self.info)

    @property
    def index(self) -> StoreIndex:
        """The index of finished videos (flow.index): what each was made from."""
        return StoreIndex(self.root)

    def path(self, video_id: str) -> Path:
        """Where a completed video lives."""
        check_video_id(video_id)
        return self.root / (video_id + PACK_SUFFIX if self.layout == "packed" else video_id)

    def temp_path(self, video_id: str) -> Path:
        """This process's temporary name for the video (hidden, unique per host and process)."""
        final = self.path(video_id)
        return final.with_name(f".{final.name}{TEMP_MARKER}{writer_token()}")

    def has(self, video_id: str) -> bool:
        """True if the video is complete in the store."""
        return self.path(video_id).exists()

    def video_ids(self) -> list[str]:
        """Completed videos, sorted."""
        ids: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = Path(dirpath).relative_to(self.root).as_posix()
            prefix = "" if rel == "." else rel + "/"
            if self.layout == "packed":
                ids += [prefix + f[: -len(PACK_SUFFIX)] for f in filenames
                        if f.endswith(PACK_SUFFIX) and not f.startswith(".")]
            elif "img_00001.jpg" in filenames and rel != ".":
                ids.append(rel)
                dirnames[:] = []
        return sorted(ids)

    def open(self, video_id: str) -> VideoFrames:
        """Reader of a completed video; FlowError naming the video if it is absent or broken, or if what
        it records it was made for is another video (a pack copied over another's) or other settings
        than the store's (a `flow --force` with new settings stopped before it redid this video:
        store.json has the new ones, and training would mix both encodings without a word)."""
        path = self.path(video_id)
        if not path.exists():
            if path.is_symlink():  # exists() follows the link: a loop, or a target gone
                raise FlowError(f"video {video_id}: {path} is {file_problem(path)}: re-run `make flow` to redo it")
            raise FlowError(f"video {video_id}: not in the store at {self.root} (no {path})")
        frames = PackedFrames(path, video_id) if self.layout == "packed" else MmactionFrames(path, video_id)
        made = frames.origin if isinstance(frames.origin, dict) else {}  # older videos record nothing: not compared
        problem, kind = "", FlowError
        if "video_id" in made and made["video_id"] != video_id:
            problem = (f"{shown(path)} holds the frames of video {shown(str(made['video_id']))} (a copy of its "
                       "stored video?)")
        elif "settings" in made and made["settings"] != self.settings_digest:
            problem, kind = (f"{shown(path)} was made with other settings than the store's {STORE_FILE} (a `flow "
                             "--force` run with new settings was stopped before it redid this video)"), StaleVideoError
        if problem:
            frames.close()
            raise kind(f"video {video_id}: {problem}: re-run `make flow` to redo it")
        return frames

    def writer(self, video_id: str, origin: dict[str, Any] | None = None) -> VideoWriter:
        """A writer filling the video under a temporary name (replaces the video on commit); `origin`
        (what it is made from) is kept with the video."""
        writer = (PackWriter if self.layout == "packed" else MmactionWriter)(self, video_id)
        writer.origin = origin
        return writer

    def write_video(self, video_id: str, rgb: np.ndarray, flow_u8: np.ndarray) -> None:
        """Store a whole video at once: uint8 [N, H, W, 3] BGR and uint8 [N-1, H, W, 2]."""
        with self.writer(video_id) as w:
            w.add_rgb(rgb)
            w.add_flow(flow_u8)

    def remove(self, video_id: str) -> None:
        """Delete a video and anything a killed writer left for it. Hold its `lock` when other runs
        may share the store. A folder where a pack belongs is not the video's (the pack is a file):
        it is left to the user, as the flow stage says."""
        path = self.path(video_id)
        if self.layout == "packed" and path.is_dir() and not path.is_symlink():
            raise FlowError(f"{shown(path)} is a folder where the pack of video {shown(video_id)} belongs: "
                            "move it out of the store")
        _remove(path)
        self.remove_temp(video_id)

    def remove_temp(self, video_id: str) -> None:
        """Delete what killed writers left for this video (the video itself stays). Hold its `lock`."""
        self.clean_stale([video_id], locked=True)

    def lock_path(self, video_id: str) -> Path:
        final = self.path(video_id)
        return final.with_name(f".{final.name}{LOCK_SUFFIX}")

    @contextmanager
    def lock(self, video_id: str, *, wait: bool = True) -> Iterator[bool]:
        """Hold the video's lock for the block: yields True, or False at once when `wait` is off and
        another process (or another open of it) holds it. p3dbase.lock's flock on `.<name>.lock`
        next to the video, naming its holder as `host-pid` for a run that waits on it."""
        with hold_lock(self.lock_path(video_id), wait=wait, holder=writer_token()) as other:
            yield other is None

    def lock_holder(self, video_id: str) -> str:
        """`host-pid` of the process holding the video's lock ("" when unknown)."""
        try:
            return self.lock_path(video_id).read_text(errors="replace").strip()
        except OSError:
            return ""

    @contextmanager
    def running(self) -> Iterator[None]:
        """Mark the store as being written by this `flow` run for the block: a lock file that only a
        live run holds (the kernel drops it with the process), so that `running_flows` tells a stage
        that would read the store half-written. What killed runs left is removed first."""
        for path in self.root.glob(f"{RUNNING_PREFIX}*{LOCK_SUFFIX}"):
            with hold_lock(path, wait=False):  # a dead run's: taken and deleted; a live one's: left
                pass
        with hold_lock(self.root / f"{RUNNING_PREFIX}{writer_token()}{LOCK_SUFFIX}", holder=writer_token()):
            yield

    def running_flows(self) -> list[str]:
        """`host-pid` of each `flow` run writing this store now (none on a finished store)."""
        return sorted(filter(None, map(holder_of, self.root.glob(f"{RUNNING_PREFIX}*{LOCK_SUFFIX}"))))

    def clean_stale(self, video_ids: Sequence[str], *, locked: bool = False) -> int:
        """Delete the temporary files / folders killed writers left for these videos (one
        directory listing per folder); returns how many were removed. A video whose lock another
        process holds is being written: its files are left alone. `locked`: the caller holds
        the videos' locks."""
        by_dir: dict[str, dict[str, str]] = {}
        suffix = PACK_SUFFIX if self.layout == "packed" else ""
        for video_id in video_ids:  # strings, not pathlib: 650,000 ids in a second
            check_video_id(video_id)
            parent, _, name = video_id.rpartition("/")
            by_dir.setdefault(parent, {})[name + suffix] = video_id
        stale: dict[str, list[Path]] = {}
        for parent, names in by_dir.items():
            folder = self.root / parent
            try:
                entries = [e.name for e in os.scandir(folder) if e.name.startswith(".")]
            except OSError:  # none yet, a file where it belongs, no permission: its videos fail on their own
                continue
            for entry in entries:
                if entry.endswith(LOCK_SUFFIX) and entry[1:-len(LOCK_SUFFIX)] in names and not locked:
                    # a dead holder's lock file: taking and letting go of the lock deletes it
                    stale.setdefault(names[entry[1:-len(LOCK_SUFFIX)]], [])
                    continue
                for marker in (TEMP_MARKER, ".old-"):
                    name, sep, _ = entry[1:].rpartition(marker)
                    if sep and name in names:
                        stale.setdefault(names[name], []).append(folder / entry)
                        break
        removed = 0
        for video_id, paths in stale.items():
            if locked:
                removed += _remove_all(paths)
                continue
            with self.lock(video_id, wait=False) as held:
                if held:
                    removed += _remove_all(paths)
        return removed


class StaleVideoError(FlowError):
    """A stored video made under other settings than store.json's: one a `flow --force` with new settings
    has not redone yet (stopped, or still running)."""


class OtherSettingsError(FlowError):
    """An existing store was made with other output settings; `differ` names them."""

    def __init__(self, message: str, differ: list[str]):
        super().__init__(message)
        self.differ = differ


def _store_info(layout: str, codec: str, bound: float, jpeg_quality: int,
                params: dict[str, Any] | None, flow_codec: str | None = None) -> dict[str, Any]:
    flow_codec = flow_codec or codec
    if layout not in LAYOUTS:
        raise FlowError(f"store layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "packed" and (codec not in CODECS or flow_codec not in CODECS):
        raise FlowError(f"packed store codecs must be among {', '.join(CODECS)}, got {codec!r} (RGB) "
                        f"and {flow_codec!r} (flow)")
    if not bound > 0:
        raise FlowError(f"store bound must be > 0, got {bound}")
    jpeg = layout == "mmaction" or "jpeg" in (codec, flow_codec)
    if jpeg and not 0 <= jpeg_quality <= 100:
        raise FlowError(f"jpeg_quality must be in 0..100, got {jpeg_quality}")
    info: dict[str, Any] = {"format": STORE_FORMAT, "version": STORE_VERSION, "layout": layout,
                            "bound": float(bound)}
    if layout == "packed":
        info["codec"] = codec
        if flow_codec != codec:  # absent: one codec for both (and store.json of older stores unchanged)
            info["flow_codec"] = flow_codec
    if jpeg:
        info["jpeg_quality"] = int(jpeg_quality)
    info["params"] = dict(params or {})
    return info


def _differences(made: dict[str, Any], asked: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(setting, its value in `made`, in `asked`) for each setting two store.json records differ in,
    the values as JSON ("none" where a record has no such setting). A record without `flow_codec` has
    one codec for both: it does not differ from one naming the same codec twice."""
    def split(info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        top = {k: v for k, v in info.items() if k != "params"}
        if "codec" in top:
            top.setdefault("flow_codec", top["codec"])
        return top, info.get("params", {})

    def value(settings: dict[str, Any], key: str) -> str:
        return json.dumps(settings[key]) if key in settings else "none"

    def differ(old: dict[str, Any], new: dict[str, Any], key: str) -> bool:
        if key == "size" and key in old and key in new:  # "340X256", as stores made before size_text hold it
            return not same_size(old[key], new[key])
        return old.get(key) != new.get(key)

    return [(key, value(old, key), value(new, key))
            for old, new in zip(split(made), split(asked), strict=True)
            for key in sorted(set(old) | set(new)) if differ(old, new, key)]


def _encode_info(info: dict[str, Any]) -> bytes:
    return (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()


def create_store(root: Path | str, layout: str = "packed", *, codec: str = "png", bound: float = 20.0,
                 jpeg_quality: int = 95, params: dict[str, Any] | None = None,
                 overwrite: bool = False, flow_codec: str | None = None) -> Store:
    """Create (or reopen) a store at `root`. `codec`: of the packed layout's RGB frames, and of its
    flow images unless `flow_codec` names another.

    `params` (JSON-able, e.g. the TV-L1 settings) are recorded in store.json. Reopening an existing
    store with other settings raises FlowError unless `overwrite`, which rewrites store.json and
    leaves the videos in place (the flow stage's --force then redoes them).
    """
    root = Path(root)
    info = _store_info(layout, codec, bound, jpeg_quality, params, flow_codec)
    data = _encode_info(info)
    path = root / STORE_FILE
    if path.exists() and not overwrite:
        existing = open_store(root).info
        info = json.loads(data)
        if differ := _differences(existing, info):
            shown_differ = "; ".join(f"{key}: {made} in the store, {asked} now" for key, made, asked in differ)
            raise OtherSettingsError(f"{path}: store was made with other settings ({shown_differ}); use another "
                                     "output directory or redo every video (--force)", [key for key, *_ in differ])
        return Store(root, existing)
    root.mkdir(parents=True, exist_ok=True)
    try:
        same = read_regular(path) == data
    except OSError:  # none yet, or a FIFO / folder in its place (a plain read of a FIFO waited for ever)
        same = False
    if not same:
        write_bytes(path, data)
    return Store(root, info)


class StoreMissing(FlowError):
    """No store where one was expected; the message says to run the flow stage first."""


def store_exists(root: Path | str) -> bool:
    """Whether `root` holds a store (its store.json), without reading it."""
    return (Path(root) / STORE_FILE).is_file()


def open_store(root: Path | str, purpose: str = "") -> Store:
    """The store at `root` (reads root/store.json). StoreMissing when there is none, saying to run
    `make flow` first (before `purpose`, e.g. "train-rgb", when given); FlowError if it is not a store."""
    path = Path(root) / STORE_FILE
    try:
        info = json.loads(read_regular(path))
    except (FileNotFoundError, NotADirectoryError):
        before = f" before `{purpose}`" if purpose else ""
        raise StoreMissing(f"no flow store at {shown(Path(root))} (no {STORE_FILE}): run `make flow` "
                           f"(python -m pipeline flow --config ...){before}") from None
    except OSError as e:
        raise FlowError(f"{path}: cannot read store description: {e.strerror}") from None
    except (ValueError, RecursionError) as e:  # RecursionError: json recurses per nesting level
        raise FlowError(f"{path}: cannot read store description: {e}") from None
    if not isinstance(info, dict) or info.get("format") != STORE_FORMAT:
        raise FlowError(f"{path}: not a flow store description (format is not {STORE_FORMAT!r})")
    if info.get("version") != STORE_VERSION:
        raise FlowError(f"{path}: store version {info.get('version')} is not supported "
                        f"(this code reads version {STORE_VERSION})")
    try:
        _store_info(info["layout"], info.get("codec", ""), float(info["bound"]),
                    int(info.get("jpeg_quality", 95)), info.get("params"), info.get("flow_codec"))
    except (KeyError, TypeError, ValueError) as e:
        raise FlowError(f"{path}: broken store description ({e})") from None
    except FlowError as e:  # a value out of range (an unknown codec or layout): the file says so, name it
        raise FlowError(f"{path}: {e}") from None
    return Store(Path(root), info)


def write_video(root: Path | str, video_id: str, rgb: np.ndarray, flow_u8: np.ndarray) -> None:
    """Add one whole video to the existing store at `root` (handy for building test stores)."""
    open_store(root).write_video(video_id, rgb, flow_u8)
