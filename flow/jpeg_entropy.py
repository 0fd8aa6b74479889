"""A JPEG's entropy (Huffman) decoding and nothing else, in numba: the CPU's part of a hybrid decode
(`train.decode = "hybrid"`), the split nvJPEG's hybrid backend makes. Workers turn a clip's JPEGs into
their quantised DCT coefficients; dequantisation, the inverse DCT, chroma upsampling and colour
conversion run on the trainer's device (streams.gpu_decode). At q95 the entropy decoding is about 60%
of libjpeg-turbo's decode of a 340x256 frame, so a worker reads a window for about 70% of the CPU
(bench/jpeg_costs.py, BENCHMARKS.md).

It reads baseline 8-bit JPEGs with one or three components (sampling factors 1 or 2) in one
interleaved scan, restart markers included: what cv2, mmaction2, denseflow and the store write.
Anything else (progressive, arithmetic-coded, 12-bit, CMYK, RGB colour, chroma sampled more finely
than luma) is a CodecError naming what; so is data that breaks the code: Huffman tables with too
many codes, codes longer than 16 bits, runs past the 64th coefficient, a scan that ends (or meets a
marker) before its last block, a header whose image the scan's bytes cannot hold. Never an
out-of-bounds write. A changed bit that keeps the code valid decodes to other coefficients, as in
libjpeg: the packed store's checksums catch those.

Output (`EntropyDecoder.sparse`): the coefficients as the scan gives them, sparse: for each block in
scan order (MCU by MCU) its DC and nonzero AC terms, each a natural (row-major, not zigzag) position
and a quantised value, about a quarter of the 64 at q95 and fewer in flow images; so that a worker
hands over 3 bytes a coefficient, not a dense int16 array four times the size. The quantisation
tables are [components, 64], natural order. `EntropyDecoder()(jpeg)` scatters them into int16
[blocks, 64]: each component's blocks in turn, rows of its MCU grid (the edge MCUs' padding blocks
included, as the scan codes them).

The decoder keeps a right-aligned 64-bit bit buffer filled four bytes at a time where none is 0xFF
(byte by byte, unstuffing FF 00, where one is) and decodes through lookahead tables: a 9-bit one of
(code length, symbol) and, for AC, an 11-bit one that holds a short code with its extra bits (run,
value, bits used), so most coefficients cost one lookup. libjpeg-turbo's own jpeg_read_coefficients
costs the same CPU on these images (bench/jpeg_costs.py).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numba import njit

from flow.codec import CodecError

ZIGZAG = np.array([0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
                   13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52,
                   45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63], np.int64)  # zigzag position -> natural
LOOK = 9  # bits of the (length, symbol) lookahead
FAST = 11  # bits of the AC table that holds a code and its extra bits together
END = 64  # the fast table's run of an end of block: it takes k past the block's last coefficient
ERRORS = {-1: "not a JPEG (no SOI marker)", -2: "a marker was expected", -3: "a segment runs past the end",
          -4: "a bad quantisation table", -5: "a bad Huffman table",
          -6: "not 8-bit with 1 or 3 components of sampling factors 1 or 2",
          -7: "progressive, lossless or arithmetic-coded (baseline JPEGs only)",
          -8: "not one interleaved scan of every component", -9: "no scan", -10: "a bad restart interval",
          -11: "a scan uses a table it never defined", -12: "a zero height or width",
          -21: "a Huffman code longer than 16 bits", -22: "a DC difference of more than 11 bits",
          -13: "a chroma component sampled more finely than the first",
          -14: "RGB colour (no JFIF marker; an Adobe marker or component ids R, G, B say so), not YCbCr",
          -23: "a run past the 64th coefficient", -24: "a restart marker missing",
          -25: "the scan ends before its last block (a premature end, or a marker inside it)"}


@njit(cache=True, boundscheck=False)
def _build_table(counts, symbols, look, fast, maxcode, valptr, mincode):
    """JPEG's BITS / HUFFVAL into the lookahead tables and the per-length limits of the slow path.
    -> 0, or -5 for a table with more codes of a length than the length holds."""
    code = 0
    k = 0
    look[:] = 0
    for length in range(1, 17):
        n = counts[length - 1]
        valptr[length] = k
        mincode[length] = code
        if code + n > (1 << length):
            return -5
        for _ in range(n):
            if length <= LOOK:
                shift = LOOK - length
                look[code << shift:(code + 1) << shift] = (length << 8) | symbols[k]
            code += 1
            k += 1
        maxcode[length] = code - 1 if n > 0 else -1
        code <<= 1
    for peek in range(1 << FAST):
        fast[peek] = 0
        e = look[peek >> (FAST - LOOK)]
        length = e >> 8
        run = (e & 255) >> 4
        size = e & 15
        if e == 0 or length + size > FAST:
            continue
        if size == 0:  # EOB (run 0): k jumps past the block's end; ZRL (run 15) takes the slow path
            if run == 0:
                fast[peek] = (END << 8) | length
            continue
        v = (peek >> (FAST - length - size)) & ((1 << size) - 1)
        if v < (1 << (size - 1)):
            v += (-1 << size) + 1
        fast[peek] = (v << 16) | (run << 8) | (length + size)
    return 0


@njit(cache=True, boundscheck=False)
def _parse(data, quant, look, fast, maxcode, valptr, mincode, values, comp, defined):
    """Markers up to the scan. -> (offset of the scan's first byte or an error code, height, width,
    components, restart interval). comp[i] = id, h, v, quantisation table, DC table, AC table;
    defined[0:4]: Huffman tables DC0, DC1, AC0, AC1; defined[4:8]: quantisation tables 0-3."""
    n = data.shape[0]
    if n < 2 or data[0] != 0xFF or data[1] != 0xD8:
        return -1, 0, 0, 0, 0
    pos, h, w, nc, restart = 2, 0, 0, 0, 0
    jfif, adobe = False, -1  # what says the colour space (libjpeg's rule): JFIF, else Adobe's transform, else ids
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return -2, 0, 0, 0, 0
        kind = data[pos + 1]
        if kind == 0xFF:  # fill byte
            pos += 1
            continue
        length = (np.int64(data[pos + 2]) << 8) | data[pos + 3]
        seg, end = pos + 4, pos + 2 + length
        if end > n or length < 2:
            return -3, 0, 0, 0, 0
        if kind == 0xDB:
            p = seg
            while p < end:
                precision, t = data[p] >> 4, data[p] & 15
                if t > 3 or precision > 1 or p + 1 + 64 * (1 + precision) > end:
                    return -4, 0, 0, 0, 0
                p += 1
                for i in range(64):
                    if precision:
                        quant[t, ZIGZAG[i]] = (np.int64(data[p]) << 8) | data[p + 1]
                        p += 2
                    else:
                        quant[t, ZIGZAG[i]] = data[p]
                        p += 1
                defined[4 + t] = 1
        elif kind == 0xC4:
            p = seg
            while p < end:
                if p + 17 > end:
                    return -5, 0, 0, 0, 0
                tc, th = data[p] >> 4, data[p] & 15
                if tc > 1 or th > 1:
                    return -5, 0, 0, 0, 0
                t = 2 * tc + th
                total = 0
                for i in range(16):
                    total += data[p + 1 + i]
                if total > 256 or p + 17 + total > end:
                    return -5, 0, 0, 0, 0
                values[t, :total] = data[p + 17:p + 17 + total]
                if _build_table(data[p + 1:p + 17], values[t], look[t], fast[t], maxcode[t], valptr[t], mincode[t]):
                    return -5, 0, 0, 0, 0
                defined[t] = 1
                p += 17 + total
        elif kind == 0xC0 or kind == 0xC1:
            if length < 8:
                return -6, 0, 0, 0, 0
            nc = data[seg + 5]
            if data[seg] != 8 or (nc != 1 and nc != 3) or length < 8 + 3 * nc:
                return -6, 0, 0, 0, 0
            h = (np.int64(data[seg + 1]) << 8) | data[seg + 2]
            w = (np.int64(data[seg + 3]) << 8) | data[seg + 4]
            if h == 0 or w == 0:
                return -12, 0, 0, 0, 0
            for i in range(nc):
                comp[i, 0] = data[seg + 6 + 3 * i]
                comp[i, 1] = data[seg + 7 + 3 * i] >> 4
                comp[i, 2] = data[seg + 7 + 3 * i] & 15
                comp[i, 3] = data[seg + 8 + 3 * i]
                if comp[i, 1] < 1 or comp[i, 1] > 2 or comp[i, 2] < 1 or comp[i, 2] > 2 or comp[i, 3] > 3:
                    return -6, 0, 0, 0, 0
        elif 0xC2 <= kind <= 0xCF and kind != 0xC8 and kind != 0xCC:
            return -7, 0, 0, 0, 0
        elif kind == 0xE0:
            jfif = jfif or (length >= 7 and data[seg] == 0x4A and data[seg + 1] == 0x46 and data[seg + 2] == 0x49
                            and data[seg + 3] == 0x46 and data[seg + 4] == 0)  # "JFIF\0"
        elif kind == 0xEE:
            if (length >= 14 and data[seg] == 0x41 and data[seg + 1] == 0x64 and data[seg + 2] == 0x6F
                    and data[seg + 3] == 0x62 and data[seg + 4] == 0x65):  # "Adobe"
                adobe = data[seg + 11]
        elif kind == 0xDD:
            if length != 4:
                return -10, 0, 0, 0, 0
            restart = (np.int64(data[seg]) << 8) | data[seg + 1]
        elif kind == 0xDA:
            if nc == 0 or length < 6 + 2 * nc or data[seg] != nc:
                return -8, 0, 0, 0, 0
            if nc == 3:
                # the device upsamples the chroma to the first component's grid
                if comp[0, 1] < max(comp[1, 1], comp[2, 1]) or comp[0, 2] < max(comp[1, 2], comp[2, 2]):
                    return -13, 0, 0, 0, 0
                ids_rgb = comp[0, 0] == 0x52 and comp[1, 0] == 0x47 and comp[2, 0] == 0x42
                if not jfif and (adobe == 0 or (adobe == -1 and ids_rgb)):
                    return -14, 0, 0, 0, 0
            for i in range(nc):
                if data[seg + 1 + 2 * i] != comp[i, 0]:
                    return -8, 0, 0, 0, 0
                comp[i, 4] = data[seg + 2 + 2 * i] >> 4
                comp[i, 5] = data[seg + 2 + 2 * i] & 15
                if (comp[i, 4] > 1 or comp[i, 5] > 1 or not defined[comp[i, 4]] or not defined[2 + comp[i, 5]]
                        or not defined[4 + comp[i, 3]]):
                    return -11, 0, 0, 0, 0
            return end, h, w, nc, restart
        pos = end
    return -9, 0, 0, 0, 0


@njit(cache=True, boundscheck=False, inline="always")
def _symbol(buf, nbits, t, look, maxcode, valptr, mincode, values):
    """The next Huffman code of table t: (its length, its symbol), or (0, 0) for none. Codes of up to
    LOOK bits by one lookup, longer ones length by length (F.16 DECODE)."""
    e = look[t, (buf >> (nbits - LOOK)) & ((1 << LOOK) - 1)]
    if e != 0:
        return e >> 8, e & 255
    code = (buf >> (nbits - 16)) & 0xFFFF
    for length in range(LOOK + 1, 17):
        c = code >> (16 - length)
        if c <= maxcode[t, length]:
            return length, values[t, valptr[t, length] + c - mincode[t, length]]
    return 0, 0


@njit(cache=True, boundscheck=False, inline="always")
def _refill(data, pos, buf, nbits, fake):
    """At least 32 bits in the buffer (a coefficient takes at most 16 + 11): four bytes at once where none
    is 0xFF, else byte by byte, FF 00 unstuffed; a marker or the end of the data ends the scan's bytes,
    zero bytes from there, counted in `fake` (the scan must not use them: _scan checks)."""
    n = data.shape[0]
    if pos + 4 <= n and data[pos] != 0xFF and data[pos + 1] != 0xFF and data[pos + 2] != 0xFF and data[pos + 3] != 0xFF:
        buf = ((buf << 32) | (np.int64(data[pos]) << 24) | (np.int64(data[pos + 1]) << 16)
               | (np.int64(data[pos + 2]) << 8) | np.int64(data[pos + 3]))
        return pos + 4, buf, nbits + 32, fake
    while nbits <= 48:
        b = 0
        if fake == 0 and pos < n and (data[pos] != 0xFF or (pos + 1 < n and data[pos + 1] == 0)):
            b = data[pos]
            pos += 2 if b == 0xFF else 1
        else:
            fake += 1
        buf = (buf << 8) | b
        nbits += 8
    return pos, buf, nbits, fake


@njit(cache=True, boundscheck=False, inline="always")
def _extend(buf, nbits, s):
    """The next `s` bits as JPEG's signed value (F.12 EXTEND)."""
    v = (buf >> (nbits - s)) & ((1 << s) - 1)
    if v < (1 << (s - 1)):
        v += (-1 << s) + 1
    return v


@njit(cache=True, boundscheck=False)
def _scan(data, pos, nc, comp, mcux, mcuy, restart, look, fast, maxcode, valptr, mincode, values, vals, where,
          counts):
    """The scan's coefficients, sparse and in scan order: block b's counts[b] entries are where
    (natural position 0-63, its DC first) and vals (quantised value); at most 64 a block, so arrays
    of blocks * 64 always hold them. -> (entries, offset after the scan's last byte read), or (0, an
    error code)."""
    n = data.shape[0]
    blk = 0
    e0 = 0
    left = restart
    buf = np.int64(0)
    nbits = np.int64(0)
    fake = 0
    pred = np.zeros(3, np.int64)
    fmask = (1 << FAST) - 1
    for _ in range(mcuy):
        for _ in range(mcux):
            if restart:
                if left == 0:  # the bits left before a marker are padding; predictions start again
                    if fake * 8 > nbits:
                        return 0, -25
                    if pos + 1 < n and data[pos] == 0xFF and 0xD0 <= data[pos + 1] <= 0xD7:
                        pos += 2
                    else:
                        return 0, -24
                    buf, nbits, fake, left = 0, 0, 0, restart
                    pred[:] = 0
                left -= 1
            for c in range(nc):
                hc, vc = (comp[c, 1], comp[c, 2]) if nc > 1 else (1, 1)
                dc, ac = comp[c, 4], 2 + comp[c, 5]
                for _ in range(vc):
                    for _ in range(hc):
                        e = e0
                        if nbits < 32:
                            pos, buf, nbits, fake = _refill(data, pos, buf, nbits, fake)
                        length, s = _symbol(buf, nbits, dc, look, maxcode, valptr, mincode, values)
                        if length == 0:
                            return 0, -21
                        nbits -= length
                        if s > 11:
                            return 0, -22
                        if s:
                            pred[c] += _extend(buf, nbits, s)
                            nbits -= s
                        where[e] = 0
                        vals[e] = pred[c]
                        e += 1
                        k = 1
                        while k < 64:
                            if nbits < 32:
                                pos, buf, nbits, fake = _refill(data, pos, buf, nbits, fake)
                            peek = (buf >> (nbits - FAST)) & fmask
                            f = fast[ac, peek]
                            if f != 0:  # a short code and its bits, or an end of block, in one lookup
                                nbits -= f & 255
                                k += (f >> 8) & 255
                                if k > 63:
                                    if (f >> 8) & 255 == END:
                                        break
                                    return 0, -23
                                where[e] = ZIGZAG[k]
                                vals[e] = f >> 16
                                e += 1
                                k += 1
                                continue
                            length, s = _symbol(buf, nbits, ac, look, maxcode, valptr, mincode, values)
                            if length == 0:
                                return 0, -21
                            nbits -= length
                            run, s = s >> 4, s & 15
                            if s:
                                k += run
                                if k > 63:
                                    return 0, -23
                                where[e] = ZIGZAG[k]
                                vals[e] = _extend(buf, nbits, s)
                                e += 1
                                nbits -= s
                                k += 1
                            elif run == 15:
                                k += 16
                            else:
                                break  # end of block
                        counts[blk] = e - e0
                        blk += 1
                        e0 = e
    if fake * 8 > nbits:  # some of the zero bytes fed past the scan's data were decoded
        return 0, -25
    return e0, pos


@dataclass(frozen=True)
class Layout:
    """Where a JPEG's coefficients lie in the decoder's [blocks, 64] output."""

    height: int
    width: int
    sampling: tuple[tuple[int, int], ...]  # (horizontal, vertical) factor of each component
    grids: tuple[tuple[int, int], ...]  # (block rows, block columns) of each component, MCU padding included

    @property
    def blocks(self) -> int:
        return sum(rows * cols for rows, cols in self.grids)

    @staticmethod
    def of(height: int, width: int, sampling: tuple[tuple[int, int], ...]) -> Layout:
        if len(sampling) == 1:  # one component: no MCU padding, 8x8 blocks whatever its factors say
            return Layout(height, width, ((1, 1),), ((-(-height // 8), -(-width // 8)),))
        hmax, vmax = max(h for h, _ in sampling), max(v for _, v in sampling)
        mcu_rows, mcu_cols = -(-height // (8 * vmax)), -(-width // (8 * hmax))
        return Layout(height, width, sampling, tuple((mcu_rows * v, mcu_cols * h) for h, v in sampling))

    def scan_order(self) -> np.ndarray:
        """int64 [blocks]: where the scan's b-th block lies in the [blocks, 64] order (component by
        component, rows of its grid): MCU by MCU, each component's h x v blocks."""
        return _scan_order(self)


@functools.cache
def _scan_order(layout: Layout) -> np.ndarray:
    if len(layout.grids) == 1:
        return np.arange(layout.blocks)
    (h0, v0), (rows0, cols0) = layout.sampling[0], layout.grids[0]
    mcu_rows, mcu_cols = rows0 // v0, cols0 // h0
    parts, first = [], 0
    for (h, v), (rows, cols) in zip(layout.sampling, layout.grids, strict=True):
        grid = np.arange(rows * cols).reshape(mcu_rows, v, mcu_cols, h).transpose(0, 2, 1, 3)
        parts.append(grid.reshape(mcu_rows * mcu_cols, v * h) + first)  # [MCU, this component's blocks]
        first += rows * cols
    order = np.concatenate(parts, axis=1).reshape(-1)
    order.flags.writeable = False
    return order


@dataclass
class Sparse:
    """A JPEG's coefficients as the scan gives them: for scan block b, `counts[b]` entries of
    `positions` (natural index, 0-63; its DC first, always there) and `values` (quantised)."""

    values: np.ndarray  # int16 [entries]
    positions: np.ndarray  # uint8 [entries]
    counts: np.ndarray  # uint8 [blocks]
    quant: np.ndarray  # int32 [components, 64]
    layout: Layout


class EntropyDecoder:
    """JPEGs into their quantised coefficients, one at a time; one decoder per process (its tables are
    reused, each JPEG's own parsed from its header in a few microseconds)."""

    def __init__(self) -> None:
        self.quant = np.zeros((4, 64), np.int64)
        self.look = np.zeros((4, 1 << LOOK), np.int32)
        self.fast = np.zeros((4, 1 << FAST), np.int32)
        self.maxcode, self.valptr, self.mincode = (np.zeros((4, 18), np.int64) for _ in range(3))
        self.values = np.zeros((4, 256), np.int64)
        self.comp = np.zeros((3, 6), np.int64)
        self.defined = np.zeros(8, np.int64)
        self._vals, self._where, self._counts = np.empty(0, np.int16), np.empty(0, np.uint8), np.empty(0, np.uint8)
        # The last header parsed (its bytes up to the scan) and what it gave: the tables above are its.
        # A store's JPEGs of one video share their header, so most JPEGs skip the parse (~8% of one).
        self._head: bytes = b""
        self._parsed: tuple = ()

    def layout(self, jpeg: bytes | np.ndarray) -> Layout:
        """The JPEG's layout from its header alone (to size an array for a window of them)."""
        return self._header(_bytes(jpeg))[0]

    def sparse(self, jpeg: bytes | np.ndarray, expect: Layout | None = None) -> Sparse:
        """The JPEG's nonzero coefficients (and every DC), in scan order: views of the decoder's own
        arrays, valid until its next call. CodecError naming what is wrong, and for a JPEG of another
        layout than `expect` (a window's images share one)."""
        data = _bytes(jpeg)
        layout, pos, restart, quant = self._header(data)
        if expect is not None and layout != expect:
            raise CodecError(f"JPEG is {layout.width}x{layout.height} with sampling {layout.sampling}, expected "
                             f"{expect.width}x{expect.height} with {expect.sampling}")
        if layout.blocks > 4 * (len(data) - pos):  # each block takes 2 bits at least: a DC code and an end
            raise CodecError(f"not a JPEG this decoder reads: a {layout.width}x{layout.height} image needs "
                             f"{-(-layout.blocks // 4)} bytes of scan at least, this one has {len(data) - pos}")
        if len(self._counts) < layout.blocks:
            self._vals, self._where = np.empty(layout.blocks * 64, np.int16), np.empty(layout.blocks * 64, np.uint8)
            self._counts = np.empty(layout.blocks, np.uint8)
        (h, v), nc = layout.sampling[0], len(layout.grids)
        entries, end = _scan(data, pos, nc, self.comp, layout.grids[0][1] // h, layout.grids[0][0] // v, restart,
                             self.look, self.fast, self.maxcode, self.valptr, self.mincode, self.values, self._vals,
                             self._where, self._counts)
        if end < 0:
            raise CodecError(f"corrupt JPEG data: {ERRORS[int(end)]}")
        return Sparse(self._vals[:entries], self._where[:entries], self._counts[:layout.blocks], quant.copy(), layout)

    def __call__(self, jpeg: bytes | np.ndarray, out: np.ndarray | None = None,
                 expect: Layout | None = None) -> tuple[np.ndarray, np.ndarray, Layout]:
        """(coefficients int16 [layout.blocks, 64] in natural order, each component's blocks in rows of
        its MCU grid, into `out` when given (C-contiguous, that shape); quantisation tables int32
        [components, 64]; layout). `sparse` scattered: what tests and benches compare."""
        got = self.sparse(jpeg, expect)
        layout = got.layout
        if out is None:
            out = np.empty((layout.blocks, 64), np.int16)
        elif out.shape != (layout.blocks, 64) or out.dtype != np.int16 or not out.flags.c_contiguous:
            raise CodecError(f"a JPEG of {layout.width}x{layout.height} has {layout.blocks} blocks of "
                             f"coefficients, the array is {out.dtype} {list(out.shape)}")
        out[:] = 0
        out.reshape(-1)[np.repeat(layout.scan_order(), got.counts) * 64 + got.positions] = got.values
        return out, got.quant, layout

    def _header(self, data: np.ndarray) -> tuple[Layout, int, int, np.ndarray]:
        """(layout, the scan's offset, restart interval, quantisation tables int32 [components, 64])."""
        head = len(self._head)
        if head and data.shape[0] > head and data[:head].tobytes() == self._head:
            return self._parsed
        self._head = b""  # the tables change below: no header is theirs until the parse succeeds
        self.defined[:] = 0
        pos, h, w, nc, restart = (int(v) for v in _parse(data, self.quant, self.look, self.fast, self.maxcode,
                                                         self.valptr, self.mincode, self.values, self.comp,
                                                         self.defined))
        if pos < 0:
            raise CodecError(f"not a JPEG this decoder reads: {ERRORS[pos]}")
        sampling = tuple((int(hc), int(vc)) for hc, vc in self.comp[:nc, 1:3])
        quant = self.quant[self.comp[:nc, 3]].astype(np.int32)
        self._parsed = (Layout.of(h, w, sampling), pos, restart, quant)
        self._head = data[:pos].tobytes()
        return self._parsed


def _bytes(jpeg: bytes | np.ndarray) -> np.ndarray:
    return jpeg if isinstance(jpeg, np.ndarray) else np.frombuffer(jpeg, np.uint8)
