"""Image codecs of the packed store: how one RGB frame or one flow image becomes a blob and back.

* `jpeg` (lossy): a frame is a 3-channel JPEG, a flow image two 1-channel JPEGs (x, y), each as
  cv2.imwrite writes them at the store's `jpeg_quality` (95): the images mmaction2, denseflow and
  TSN store, so that imported rawframes JPEGs are kept byte for byte. A flow blob is
  `<u32 length of the x JPEG> <x JPEG> <y JPEG>`.
* `png` (lossless): a flow image is x and y side by side, [H, 2W].
* `raw` (lossless): the uint8 array as is.

JPEGs are decoded by simplejpeg (libjpeg-turbo's TurboJPEG API) where it is installed: 2.2x faster
than cv2.imdecode on 340x256 colour frames and it writes into the caller's array
(`bench/flow_store.py --decoders` measures the candidates). Without it (the GPU machine's image),
cv2 decodes the same files. Decoding at a reduced DCT size is not used: at quality 95 entropy
decoding dominates, so half size saves ~5% and 6/8 size costs 1.8x (same bench).

`fast=True` (training clips only: `train.fast_decode`) asks libjpeg-turbo for its fast integer IDCT
and, for colour, its plain chroma upsampling: fewer CPU cycles per image for pixels that differ from
the accurate decode by about one level on average (bench/flow_store.py measures both). The cv2
fallback has no such switch and decodes accurately.
"""
from __future__ import annotations

import functools
import re
import struct
from collections.abc import Iterator
from types import ModuleType

import cv2
import numpy as np

CODECS = ("jpeg", "png", "raw")
# zlib level 3 with PNG's "up" filter on every row: against adaptive filtering about the same size
# and twice as fast to encode and to decode (bench/flow_store.py). OpenCV without the filter option
# (< 4.11) falls back to adaptive filtering, still lossless.
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
_X_LENGTH = struct.Struct("<I")


class CodecError(ValueError):
    """A blob that does not decode to the expected image (the reader names the video and image)."""


# "auto": simplejpeg where installed, else cv2; "cv2" forces the fallback (tests, the bench).
decoder = "auto"


@functools.cache
def _import_simplejpeg() -> ModuleType | None:
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def _simplejpeg() -> ModuleType | None:
    return None if decoder == "cv2" else _import_simplejpeg()


def jpeg_decoder() -> str:
    """The library that decodes JPEGs here: "simplejpeg" or "cv2"."""
    return "cv2" if _simplejpeg() is None else "simplejpeg"


def jpeg_bytes(img: np.ndarray, quality: int) -> bytes:
    """A grey [H, W] or BGR [H, W, 3] image as cv2.imwrite writes it (4:2:0 colour, like mmaction2)."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise CodecError("JPEG encoding failed")
    return buf.tobytes()


def flow_jpeg_blob(x_jpeg: bytes, y_jpeg: bytes) -> bytes:
    """The jpeg codec's blob of one flow image from its x and y JPEG files' bytes."""
    return _X_LENGTH.pack(len(x_jpeg)) + x_jpeg + y_jpeg


def encode_rgb(codec: str, frame: np.ndarray, quality: int) -> bytes:
    """uint8 BGR [H, W, 3] -> blob."""
    if codec == "raw":
        return np.ascontiguousarray(frame).tobytes()
    if codec == "jpeg":
        return jpeg_bytes(frame, quality)
    return _png(frame)


def encode_flow(codec: str, flow_u8: np.ndarray, quality: int) -> bytes:
    """uint8 [H, W, 2] flow image (x, y) -> blob."""
    if codec == "raw":
        return np.ascontiguousarray(flow_u8).tobytes()
    if codec == "jpeg":
        return flow_jpeg_blob(*(jpeg_bytes(np.ascontiguousarray(flow_u8[..., c]), quality) for c in (0, 1)))
    return _png(np.concatenate([flow_u8[..., 0], flow_u8[..., 1]], 1))


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img, PNG_PARAMS)
    if not ok:
        raise CodecError("PNG encoding failed")
    return buf.tobytes()


def _decode_jpeg(blob: memoryview | np.ndarray, out: np.ndarray, grey: bool, fast: bool = False) -> None:
    """Decode a JPEG into `out` (contiguous uint8 [H, W] or [H, W, 3]); CodecError if it does not
    decode or has another size. `fast`: libjpeg-turbo's fast IDCT and upsampling (module doc)."""
    sj = _simplejpeg()
    if sj is not None:
        try:
            img = sj.decode_jpeg(blob, "GRAY" if grey else "BGR", fastdct=fast, fastupsample=fast, buffer=out)
        except (ValueError, RuntimeError) as e:
            raise CodecError(f"not a JPEG that decodes ({e})") from None
        if img.shape[:2] != out.shape[:2]:  # a smaller image fills the front of the buffer
            raise CodecError(f"JPEG is {img.shape[1]}x{img.shape[0]}, expected {out.shape[1]}x{out.shape[0]}")
        return
    # The EXIF orientation ignored, as simplejpeg and nvJPEG ignore it: one rule for every reader.
    img = cv2.imdecode(np.frombuffer(blob, np.uint8),
                       (cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise CodecError("not a JPEG that decodes")
    if img.shape != out.shape:
        raise CodecError(f"JPEG is {img.shape[1]}x{img.shape[0]}, expected {out.shape[1]}x{out.shape[0]}")
    out[...] = img


def _decode_png(blob: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    img = cv2.imdecode(blob, cv2.IMREAD_UNCHANGED)
    if img is None or img.shape != shape:
        raise CodecError("not a PNG that decodes" if img is None else
                         f"PNG is {list(img.shape)}, expected {list(shape)}")
    return img


def _raw(blob: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if blob.size != np.prod(shape):
        raise CodecError(f"raw image of {blob.size} bytes, expected {int(np.prod(shape))}")
    return blob.reshape(shape)


def decode_jpeg(blob: np.ndarray, out: np.ndarray, fast: bool = False) -> None:
    """One JPEG -> `out`, a contiguous uint8 [H, W, 3] (BGR) or [H, W, 1] / [H, W] (grey) array."""
    _decode_jpeg(blob, out.reshape(out.shape[:2]) if out.ndim == 3 and out.shape[2] == 1 else out,
                 grey=out.ndim == 2 or out.shape[2] == 1, fast=fast)


def decode_rgb(codec: str, blob: np.ndarray, out: np.ndarray, fast: bool = False) -> None:
    """Blob (uint8 array) -> `out`, a contiguous uint8 [H, W, 3] view of the caller's clip.
    `fast`: the jpeg codec's fast decode (module doc); lossless codecs ignore it."""
    if codec == "jpeg":
        _decode_jpeg(blob, out, grey=False, fast=fast)
    elif codec == "png":
        out[...] = _decode_png(blob, out.shape)
    else:
        out[...] = _raw(blob, out.shape)


def decode_flow_planes(codec: str, blob: np.ndarray, x_out: np.ndarray, y_out: np.ndarray, fast: bool = False) -> None:
    """Blob (uint8 array) -> its x and y images in `x_out` and `y_out`, contiguous uint8 [H, W] arrays
    (planes of the caller's clip): the jpeg codec decodes each axis's JPEG straight into its plane;
    `fast`: as decode_rgb."""
    height, width = x_out.shape
    if codec == "jpeg":
        x_jpeg, y_jpeg = flow_jpegs(blob)
        _decode_jpeg(x_jpeg, x_out, grey=True, fast=fast)
        _decode_jpeg(y_jpeg, y_out, grey=True, fast=fast)
    elif codec == "png":
        img = _decode_png(blob, (height, 2 * width))
        x_out[...] = img[:, :width]
        y_out[...] = img[:, width:]
    else:
        cv2.split(_raw(blob, (height, width, 2)), [x_out, y_out])


def decode_flow(codec: str, blob: np.ndarray, out: np.ndarray, scratch: np.ndarray, fast: bool = False) -> None:
    """Blob (uint8 array) -> `out`, a contiguous uint8 [H, W, 2] view of the caller's clip.
    `scratch`: a contiguous uint8 [2, H, W] buffer the jpeg codec decodes the axes into; `fast`: as
    decode_rgb."""
    height, width = out.shape[:2]
    if codec == "raw":
        out[...] = _raw(blob, out.shape)
    elif codec == "png":
        img = _decode_png(blob, (height, 2 * width))
        out[..., 0] = img[:, :width]
        out[..., 1] = img[:, width:]
    else:
        x_jpeg, y_jpeg = flow_jpegs(blob)
        _decode_jpeg(x_jpeg, scratch[0], grey=True, fast=fast)
        _decode_jpeg(y_jpeg, scratch[1], grey=True, fast=fast)
        cv2.merge([scratch[0], scratch[1]], dst=out)  # SIMD interleave: 3x numpy's strided copies


def flow_jpegs(blob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The x and y JPEGs (views) of a jpeg codec flow blob; CodecError for a blob too short."""
    if blob.size < _X_LENGTH.size:
        raise CodecError("flow blob shorter than its header")
    x_len = _X_LENGTH.unpack(blob[: _X_LENGTH.size].tobytes())[0]
    if x_len > blob.size - _X_LENGTH.size:
        raise CodecError("flow blob shorter than its x JPEG")
    x_end = _X_LENGTH.size + x_len
    return blob[_X_LENGTH.size: x_end], blob[x_end:]


# IJG's luminance quantisation table (libjpeg's jcparam.c, natural order), the base of the quality scale.
_IJG_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
                      14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
                      92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
_ZIGZAG = np.array([0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13,
                    6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45,
                    38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63])


def _ijg_table(quality: int) -> np.ndarray:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((_IJG_LUMA * scale + 50) // 100, 1, 255)


_IJG_TABLES = np.stack([_ijg_table(q) for q in range(1, 101)])


def _segments(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(marker, segment) of each marker segment of a JPEG's header, up to its start of scan (SOS,
    yielded last). CodecError when it is not a JPEG or a marker is broken."""
    if data[:2] != b"\xff\xd8":
        raise CodecError("not a JPEG (no start-of-image marker)")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise CodecError(f"broken JPEG marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2: pos + 4], "big")
        yield marker, data[pos + 4: pos + 2 + length]
        if marker == 0xDA:  # start of scan: the header ends
            return
        pos += 2 + length


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag of a JPEG (1-8: how a viewer turns it), 1 when it has none, 0 when its
    EXIF cannot be read. The store's JPEG readers differ on it: simplejpeg and nvJPEG ignore it,
    cv2.imdecode applies it unless told not to."""
    try:
        for marker, segment in _segments(data):
            if marker == 0xE1 and segment[:6] == b"Exif\0\0":
                tiff = segment[6:]
                order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
                if order is None:
                    return 0
                ifd = struct.unpack_from(order + "I", tiff, 4)[0]
                for k in range(struct.unpack_from(order + "H", tiff, ifd)[0]):
                    tag, _, _, value = struct.unpack_from(order + "HHIH", tiff, ifd + 2 + 12 * k)
                    if tag == 0x0112:
                        return value
    except (CodecError, struct.error):
        return 0
    return 1


# libjpeg's one warning that loses no pixel: bytes (an encoder's padding) after the last scan's data,
# skipped on the way to the end-of-image marker
_HARMLESS = re.compile(r"extraneous bytes before marker 0xd9", re.IGNORECASE)


def strict_jpeg(data: bytes, grey: bool) -> tuple[np.ndarray | None, str]:
    """A JPEG decoded by simplejpeg, which refuses one that libjpeg decodes only with a warning ("Corrupt
    JPEG data: premature end of data segment": cv2.imdecode prints it, naming no file, and returns the
    garbled image), whatever `decoder` says: strictness is no matter of speed. (BGR or grey [H, W]
    image, ""); (image, the warning) for padding before the end marker, which loses nothing (keep no
    such file byte for byte: the store's strict readers would refuse it); CodecError for a JPEG that
    decodes only with a warning of lost data; (None, why) when simplejpeg cannot read this kind of JPEG
    at all (OpenCV's libjpeg may); (None, "") when simplejpeg is not installed."""
    sj = _import_simplejpeg()
    if sj is None:
        return None, ""
    colorspace = "GRAY" if grey else "BGR"
    try:
        img = sj.decode_jpeg(data, colorspace)
        return (img.reshape(img.shape[:2]) if grey else img), ""  # [H, W], as cv2 gives grey: not [H, W, 1]
    except (ValueError, RuntimeError) as e:
        why = str(e)
    try:  # decodes when not strict: libjpeg recovered from bad data, into a garbled image
        img = sj.decode_jpeg(data, colorspace, strict=False)
    except (ValueError, RuntimeError):
        return None, why
    if _HARMLESS.search(why):
        return (img.reshape(img.shape[:2]) if grey else img), why
    raise CodecError(f"a JPEG that does not decode ({why})")


def jpeg_header(data: bytes) -> tuple[int, int, int, int | None]:
    """(height, width, components, quality) of a baseline or progressive 8-bit JPEG; quality is the
    IJG quality (1-100) whose luminance table is nearest to table 0 (None when it has no table).
    CodecError for anything else (12-bit, lossless, arithmetic-coded, not a JPEG)."""
    table, sof = None, None
    for marker, segment in _segments(data):
        if marker == 0xDB:  # DQT: one or more tables of (precision << 4 | id) + 64 entries
            at = 0
            while at < len(segment):
                precision, ident = segment[at] >> 4, segment[at] & 15
                size = 128 if precision else 64
                values = np.frombuffer(segment[at + 1: at + 1 + size], ">u2" if precision else np.uint8)
                if ident == 0 and len(values) == 64:
                    table = np.empty(64, np.int64)
                    table[_ZIGZAG] = values
                at += 1 + size
        elif marker in (0xC0, 0xC1, 0xC2):  # baseline, extended, progressive Huffman
            if len(segment) < 6 or segment[0] != 8:
                raise CodecError("JPEG is not 8-bit")
            sof = (int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big"), segment[5])
        elif 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            raise CodecError("JPEG is lossless or arithmetic-coded")
    if sof is None:
        raise CodecError("JPEG has no frame header")
    quality = None
    if table is not None:
        quality = int(np.abs(_IJG_TABLES - table).sum(axis=1).argmin()) + 1
    return sof[0], sof[1], sof[2], quality
