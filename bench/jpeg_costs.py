"""Where a JPEG's decoding time goes, and what decoding only part of it would save.

    .venv/bin/python bench/jpeg_costs.py [--cache F.npz] [--data ../shared/data] [--rounds 7]

The same q95 JPEGs as bench/flow_store.py (its `--cache` .npz is shared): 340x256 frames (BGR,
4:2:0) and flow x images (grey) of real clips. CPU ms per image, median of interleaved rounds (each
image 3 times a round), for:
the mmaction layout's read of one file (the file's bytes, then cv2.imdecode), the store's decoder
(simplejpeg into an array), and libjpeg-turbo driven part by part through bench/jpeg_region.c (compiled
here with the system's gcc and libjpeg; the bench stops with one line without them): the whole
image; setup alone (header, tables, the first rows); the entropy decoding of every row (the rows
skipped on the way to the last one, which jpeg_skip_scanlines still has to entropy-decode); and the
rectangle a training crop reads (the paper's recipe: 160x160 out of the frame resized to 182x242,
the source rectangle of streams.transforms.crop_map, padded as jpeg_region.c says) and a 160x160
rectangle. Every rectangle's pixels are checked against the whole decode first.

The last table turns these into the best ratio any reader of the packed store could reach against
the mmaction layout per image, by decoding the whole image or only the rectangle.

Then the one way around the entropy decoding of the rows and columns a crop does not need: JPEGs
written with a restart marker after every MCU (and optimized Huffman tables, which pay for the
markers' bytes), whose crop MCUs are spliced into a JPEG of their own (`Restarts`: the segments'
offsets a store would keep, the markers renumbered, the frame's size in SOF0 rewritten) and decoded
by simplejpeg. Its bytes per image, its exactness (pixels of the crop against the whole decode, a
pixel of margin for the chroma upsampling), and its CPU time, splicing included.

Last, the CPU's part of a hybrid decode, the split of nvJPEG's hybrid backend: the entropy decoding
into DCT coefficients and nothing else, the rest (dequantisation, inverse DCT, upsampling, colour) left
to the GPU. Twice: libjpeg-turbo's jpeg_read_coefficients through the probe (what a compiled reader
would cost) and flow.jpeg_entropy's numba decoder (what a reader can cost with the packages the
project installs). The numba decoder's coefficients are checked against libjpeg-turbo's on every
image, and its torch pixels against the whole decode.
"""
from __future__ import annotations

import argparse
import ctypes
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from flow import codec
from flow.config import FlowConfig
from flow.jpeg_entropy import EntropyDecoder
from streams.gpu_decode import coefficients_to_pixels
from streams.transforms import crop_map

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cli import at_least  # noqa: E402 (bench/, the script's own folder)
from bench_cli import run as run_bench  # noqa: E402 (this file's own `run` measures)
from flow_store import load_videos, video_args  # noqa: E402 (the frames of bench/flow_store.py, its cache shared)

SIZE, CROP = (182, 242), 160  # the paper's training recipe (configs/default.toml [train])


def build_probe(tmp: Path) -> ctypes.CDLL:
    source = Path(__file__).with_name("jpeg_region.c")
    lib = tmp / "jpeg_region.so"
    try:
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", str(source), "-ljpeg", "-o", str(lib)], check=True,
                       capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"jpeg_costs: cannot compile {source} (needs gcc and libjpeg's headers, Debian: libjpeg-dev): "
                 f"{getattr(e, 'stderr', '') or e}".strip())
    probe = ctypes.CDLL(str(lib))
    c_int = ctypes.c_int
    probe.decode_region.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p, c_int, c_int, c_int, c_int,
                                    c_int, c_int, c_int, c_int, ctypes.c_char_p]
    probe.read_coefficients.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_long,
                                        ctypes.c_char_p]
    probe.read_coefficients.restype = ctypes.c_long
    return probe


class Probe:
    """jpeg_region.c's decode_region into one reused array of the image's size."""

    def __init__(self, lib: ctypes.CDLL, shape: tuple[int, ...]):
        self.lib, self.out = lib, np.empty(shape, np.uint8)
        self.message = ctypes.create_string_buffer(200)
        self.channels = shape[2] if len(shape) == 3 else 1

    def __call__(self, jpeg: bytes, top: int, left: int, height: int, width: int, pad: int) -> np.ndarray:
        h, w = self.out.shape[:2]
        if self.lib.decode_region(jpeg, len(jpeg), self.out.ctypes.data, h, w, self.channels, top, left, height,
                                  width, pad, self.message):
            raise ValueError(self.message.value.decode())
        return self.out


class CoefficientProbe:
    """jpeg_region.c's read_coefficients (libjpeg-turbo's jpeg_read_coefficients) into one reused int16
    array: libjpeg's block grid per component (no padding blocks past the image's last column)."""

    def __init__(self, lib: ctypes.CDLL, blocks: int):
        self.lib, self.out = lib, np.empty((blocks, 64), np.int16)
        self.message = ctypes.create_string_buffer(200)

    def __call__(self, jpeg: bytes) -> np.ndarray:
        n = self.lib.read_coefficients(jpeg, len(jpeg), self.out.ctypes.data, len(self.out), self.message)
        if n < 0:
            raise ValueError(self.message.value.decode())
        return self.out[:n]


def hybrid_exactness(probe: CoefficientProbe, jpegs: list[bytes], grey: bool) -> tuple[int, float, int]:
    """flow.jpeg_entropy against libjpeg-turbo on every image: (images whose coefficients are all
    libjpeg's, mean and max |level| of the hybrid decode's pixels against the whole decode)."""
    decoder, same, errors = EntropyDecoder(), 0, []
    for jpeg in jpegs:
        ours, quant, layout = decoder(jpeg)
        theirs, at, first, match = probe(jpeg), 0, 0, True
        hmax, vmax = max(h for h, _ in layout.sampling), max(v for _, v in layout.sampling)
        for (rows, cols), (h, v) in zip(layout.grids, layout.sampling, strict=True):
            # libjpeg's grid: the blocks the image covers (the scan's MCU padding blocks left out)
            r, c = -(-layout.height * v // (8 * vmax)), -(-layout.width * h // (8 * hmax))
            grid = ours[first:first + rows * cols].reshape(rows, cols, 64)
            match &= np.array_equal(grid[:r, :c].reshape(-1, 64), theirs[at:at + r * c])
            at, first = at + r * c, first + rows * cols
        same += bool(match and at == len(theirs))
        whole = codec._simplejpeg().decode_jpeg(jpeg, "GRAY" if grey else "BGR")
        whole = whole[..., 0] if grey else whole.transpose(2, 0, 1)
        pixels = coefficients_to_pixels(torch.from_numpy(ours)[None], torch.from_numpy(quant)[None], layout)[0]
        errors.append(np.abs(pixels.numpy().astype(np.int16).reshape(whole.shape) - whole))
    err = np.stack(errors)
    return same, float(err.mean()), int(err.max())


def recipe_rectangle(shape: tuple[int, int], rng: random.Random) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the source pixels cv2.warpAffine reads for a random training crop
    (CROP x CROP of the frame resized to SIZE; a flip reads the same pixels): the samples' span and
    their lower / right neighbours."""
    top, left = rng.randrange(SIZE[0] - CROP + 1), rng.randrange(SIZE[1] - CROP + 1)
    m = crop_map(shape, SIZE, top, left, CROP)
    y0, y1 = m[1, 2], m[1, 1] * (CROP - 1) + m[1, 2]
    x0, x1 = m[0, 2], m[0, 0] * (CROP - 1) + m[0, 2]
    r0, c0 = max(0, int(np.floor(y0))), max(0, int(np.floor(x0)))
    r1, c1 = min(shape[0], int(np.floor(y1)) + 2), min(shape[1], int(np.floor(x1)) + 2)
    return r0, c0, r1 - r0, c1 - c0


MCU = {"frame": 16, "flow x": 8}  # the MCU side of a 4:2:0 colour JPEG and of a grey one


def restart_jpeg(img: np.ndarray) -> bytes:
    """q95 as the store writes it, plus a restart marker after every MCU and optimized Huffman tables."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_RST_INTERVAL, 1,
                                         cv2.IMWRITE_JPEG_OPTIMIZE, 1])
    assert ok
    return buf.tobytes()


class Restarts:
    """One restart-marker JPEG, parsed once (what a store would keep beside its bytes): the header up
    to the scan, where SOF0's size is, and each MCU's entropy-coded segment. `crop` splices the MCUs
    that cover a rectangle into a JPEG of their own: each MCU row's run of segments is contiguous in
    the scan, so a crop is a header, one slice per row and renumbered markers."""

    def __init__(self, jpeg: bytes, mcu: int):
        a = np.frombuffer(jpeg, np.uint8)
        i = 2
        while True:  # markers up to SOS, each [FF, type, length (2 bytes, itself included)]
            kind, length = a[i + 1], int(a[i + 2]) << 8 | int(a[i + 3])
            if kind == 0xC0:
                self.sof = i
            i += 2 + length
            if kind == 0xDA:
                break
        self.raw, self.bytes, self.header, self.mcu = jpeg, a, jpeg[:i], mcu
        height, width = (int(a[self.sof + k]) << 8 | int(a[self.sof + k + 1]) for k in (5, 7))
        self.size, self.rows, self.cols = (height, width), -(-height // mcu), -(-width // mcu)
        ff = np.flatnonzero(a[i:-2] == 0xFF) + i
        marks = ff[(a[ff + 1] >= 0xD0) & (a[ff + 1] <= 0xD7)]  # stuffed data bytes are FF 00, never FF D0-D7
        assert len(marks) == self.rows * self.cols - 1
        self.starts = np.concatenate([[i], marks + 2])
        self.ends = np.concatenate([marks, [len(a) - 2]])

    def cover(self, top: int, left: int, height: int, width: int) -> tuple[int, int, int, int]:
        """MCU rows [r0, r1) and columns [c0, c1) holding the rectangle with a pixel to spare inside the
        image: libjpeg-turbo's fancy chroma upsampling replicates the edge pixel of what it decodes."""
        m = self.mcu
        return (max(0, (top - 1) // m), min(self.rows, -(-(top + height + 1) // m)),
                max(0, (left - 1) // m), min(self.cols, -(-(left + width + 1) // m)))

    def crop(self, r0: int, r1: int, c0: int, c1: int) -> bytearray:
        rows = np.arange(r0, r1) * self.cols
        lo, hi = self.starts[rows + c0], self.ends[rows + c1 - 1]
        header = bytearray(self.header)
        # the image's own edge where the crop reaches it: its last MCU's padding is not picture
        height = min(r1 * self.mcu, self.size[0]) - r0 * self.mcu
        width = min(c1 * self.mcu, self.size[1]) - c0 * self.mcu
        header[self.sof + 5:self.sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
        rows_bytes = [self.raw[a:b] for a, b in zip(lo, hi, strict=True)]
        out = bytearray(header + b"\xff\xd0".join(rows_bytes) + b"\xff\xd9")
        # the markers inside each row's slice, then the one after it; renumbered RST0..RST7 in order
        inner = self.ends[(rows + c0)[:, None] + np.arange(c1 - c0 - 1)] - lo[:, None]
        row_at = len(header) + np.concatenate([[0], np.cumsum(hi - lo + 2)[:-1]])
        at = np.concatenate([inner + row_at[:, None], (row_at + hi - lo)[:, None]], axis=1).ravel()[:-1]
        np.frombuffer(out, np.uint8)[at + 1] = 0xD0 + (np.arange(len(at)) & 7)
        return out


def spliced_exactness(parsed: list[Restarts], grey: bool, rng: random.Random) -> int:
    """Random rectangles (4 per image) whose pixels, decoded from their spliced MCUs, equal the whole
    decode's."""
    sj, same = codec._simplejpeg(), 0
    for r in parsed:
        whole = sj.decode_jpeg(r.bytes.tobytes(), "GRAY" if grey else "BGR")
        h, w = whole.shape[:2]
        for _ in range(4):
            height, width = rng.randint(1, h), rng.randint(1, w)
            top, left = rng.randrange(h - height + 1), rng.randrange(w - width + 1)
            r0, r1, c0, c1 = r.cover(top, left, height, width)
            out = sj.decode_jpeg(r.crop(r0, r1, c0, c1), "GRAY" if grey else "BGR")
            y, x = top - r0 * r.mcu, left - c0 * r.mcu
            same += np.array_equal(out[y:y + height, x:x + width], whole[top:top + height, left:left + width])
    return same


def exactness(probe: Probe, jpegs: list[bytes], grey: bool, pad: int, rng: random.Random) -> tuple[int, int]:
    """(rectangles whose pixels equal the whole decode's, rectangles tried): 4 random ones per image."""
    same = tried = 0
    for jpeg in jpegs:
        whole = codec._simplejpeg().decode_jpeg(jpeg, "GRAY" if grey else "BGR")
        whole = whole[..., 0] if grey else whole
        h, w = whole.shape[:2]
        for _ in range(4):
            height, width = rng.randint(1, h), rng.randint(1, w)
            top, left = rng.randrange(h - height + 1), rng.randrange(w - width + 1)
            out = probe(jpeg, top, left, height, width, pad)
            same += np.array_equal(out[top:top + height, left:left + width], whole[top:top + height, left:left + width])
            tried += 1
    return same, tried


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    video_args(parser, frames=40)
    parser.add_argument("--rounds", type=at_least(1), default=7)
    args = parser.parse_args()
    if codec._simplejpeg() is None:
        sys.exit("jpeg_costs: needs simplejpeg (the store's decoder)")
    videos = load_videos(args, FlowConfig())
    frames = [codec.jpeg_bytes(f, 95) for rgb, _ in videos.values() for f in rgb]
    flows = [codec.jpeg_bytes(np.ascontiguousarray(f[..., 0]), 95) for _, fl in videos.values() for f in fl]
    restarts = {"frame": [restart_jpeg(f) for rgb, _ in videos.values() for f in rgb],
                "flow x": [restart_jpeg(np.ascontiguousarray(f[..., 0])) for _, fl in videos.values() for f in fl]}
    h, w = next(iter(videos.values()))[0].shape[1:3]
    tmp = Path(tempfile.mkdtemp(prefix="jpeg_costs_"))
    try:
        lib = build_probe(tmp)
        files = {}
        for kind, jpegs in (("frame", frames), ("flow x", flows)):
            files[kind] = []
            for i, jpeg in enumerate(jpegs):
                path = tmp / f"{kind.replace(' ', '_')}_{i:05d}.jpg"
                path.write_bytes(jpeg)
                files[kind].append(path)
        run(lib, frames, flows, restarts, files, (h, w), args.rounds)
    finally:
        shutil.rmtree(tmp)


def run(lib: ctypes.CDLL, frames: list[bytes], flows: list[bytes], restarts: dict[str, list[bytes]],
        files: dict[str, list[Path]], shape: tuple[int, int], rounds: int) -> None:
    h, w = shape
    rng = random.Random(0)
    sj = codec._simplejpeg()
    probes = {"frame": Probe(lib, (h, w, 3)), "flow x": Probe(lib, (h, w))}
    coefficient_probe = CoefficientProbe(lib, 3 * (-(-h // 8) + 1) * (-(-w // 8) + 1))
    entropy = EntropyDecoder()
    pads = {"frame": 16, "flow x": 0}  # grey has no chroma upsampling: its rectangles are exact unpadded
    print(f"{len(frames)} frames and {len(flows)} flow x images, {w}x{h}, JPEG q95\n")
    for kind, jpegs in (("frame", frames), ("flow x", flows)):
        for pad in sorted({0, pads[kind]}):
            same, tried = exactness(probes[kind], jpegs, kind == "flow x", pad, rng)
            print(f"{kind}: rectangles decoded with pad {pad} equal to the whole decode: {same} of {tried}")
    parsed = {kind: [Restarts(j, MCU[kind]) for j in jpegs] for kind, jpegs in restarts.items()}
    for kind, jpegs in (("frame", frames), ("flow x", flows)):
        same = spliced_exactness(parsed[kind], kind == "flow x", rng)
        print(f"{kind}: bytes per image {np.mean([len(j) for j in jpegs]):.0f}, with a restart marker after every "
              f"MCU and optimized Huffman tables {np.mean([len(j) for j in restarts[kind]]):.0f}; spliced crops "
              f"equal to the whole decode: {same} of {4 * len(jpegs)}")
    for kind, jpegs in (("frame", frames), ("flow x", flows)):
        same, mean, worst = hybrid_exactness(coefficient_probe, jpegs, kind == "flow x")
        print(f"{kind}: the numba entropy decoder's coefficients equal libjpeg-turbo's on {same} of {len(jpegs)} "
              f"images; the hybrid decode's pixels against the whole decode: mean {mean:.3f}, max {worst} levels")

    def cases(kind: str, jpegs: list[bytes], paths: list[Path]) -> dict[str, Callable[[int], object]]:
        probe, pad, grey = probes[kind], pads[kind], kind == "flow x"
        out = np.empty((h, w) if grey else (h, w, 3), np.uint8)
        flag = cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR
        rects = [recipe_rectangle((h, w), rng) for _ in range(len(jpegs))]
        squares = [(rng.randrange(h - CROP + 1), rng.randrange(w - CROP + 1), CROP, CROP) for _ in jpegs]
        covers = [parsed[kind][i].cover(*rects[i]) for i in range(len(jpegs))]
        spliced = [bytes(parsed[kind][i].crop(*covers[i])) for i in range(len(jpegs))]
        return {
            "mmaction layout: the file's bytes, cv2.imdecode": lambda i: cv2.imdecode(
                np.frombuffer(paths[i].read_bytes(), np.uint8), flag),
            "store's decoder: simplejpeg into an array": lambda i: sj.decode_jpeg(jpegs[i], "GRAY" if grey else "BGR",
                                                                                  buffer=out),
            "libjpeg-turbo, whole image": lambda i: probe(jpegs[i], 0, 0, h, w, 0),
            "  setup: header, tables, first rows": lambda i: probe(jpegs[i], 0, 0, 1, 1, 0),
            "  entropy decoding of every row (all skipped but the last)": lambda i: probe(jpegs[i], h - 1, 0, 1, 1, 0),
            f"  the recipe's crop rectangle ({SIZE[0]}x{SIZE[1]} -> {CROP}), padded": lambda i: probe(
                jpegs[i], *rects[i], pad),
            f"  a {CROP}x{CROP} rectangle, padded": lambda i: probe(jpegs[i], *squares[i], pad),
            "restart marker after every MCU, optimized Huffman: whole image (simplejpeg)": lambda i: sj.decode_jpeg(
                restarts[kind][i], "GRAY" if grey else "BGR", buffer=out),
            "  the recipe's crop rectangle: its MCUs spliced (numpy), then decoded": lambda i: sj.decode_jpeg(
                parsed[kind][i].crop(*covers[i]), "GRAY" if grey else "BGR"),
            "  the recipe's crop rectangle: decoding the spliced JPEG alone": lambda i: sj.decode_jpeg(
                spliced[i], "GRAY" if grey else "BGR"),
            "hybrid, CPU part: libjpeg-turbo's coefficients (jpeg_read_coefficients)": lambda i: coefficient_probe(
                jpegs[i]),
            "hybrid, CPU part: the numba entropy decoder (flow.jpeg_entropy)": lambda i: entropy.sparse(jpegs[i]),
        }

    table: dict[str, dict[str, float]] = {}
    for kind, jpegs in (("frame", frames), ("flow x", flows)):
        fns = cases(kind, jpegs, files[kind])
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                cpu = time.process_time()
                for i in list(range(len(jpegs))) * 3:
                    fn(i)
                times[name].append((time.process_time() - cpu) / (3 * len(jpegs)) * 1e3)
        table[kind] = {name: float(np.median(v)) for name, v in times.items()}

    print(f"\nCPU ms per image, median of {rounds} interleaved rounds (padded: frame {pads['frame']} px, flow "
          f"{pads['flow x']})\n")
    print("| read | frame (BGR) | of the whole | flow x (grey) | of the whole |")
    print("|---|---|---|---|---|")
    whole = "libjpeg-turbo, whole image"
    for name in table["frame"]:
        f, g = table["frame"][name], table["flow x"][name]
        print(f"| {name.strip()} | {f:.3f} | {f / table['frame'][whole]:.0%} | {g:.3f} | "
              f"{g / table['flow x'][whole]:.0%} |")
    mm = "mmaction layout: the file's bytes, cv2.imdecode"
    recipe = next(name for name in table["frame"] if "recipe" in name)
    square = next(name for name in table["frame"] if "rectangle, padded" in name)
    print("\nThe best a packed-store reader can do against the mmaction layout per image (its read over the "
          "decoding alone; a window is 16 of them)\n")
    print("| decoding | frame | flow x |")
    print("|---|---|---|")
    for label, name in (("the whole image (the store's decoder)", "store's decoder: simplejpeg into an array"),
                        ("the recipe's crop rectangle", recipe), (f"a {CROP}x{CROP} rectangle", square),
                        ("the recipe's crop, restart markers: its MCUs spliced and decoded",
                         "  the recipe's crop rectangle: its MCUs spliced (numpy), then decoded"),
                        ("the recipe's crop, restart markers: free splicing",
                         "  the recipe's crop rectangle: decoding the spliced JPEG alone"),
                        ("nothing but the entropy decoding", "  entropy decoding of every row (all skipped but "
                                                              "the last)"),
                        ("hybrid: libjpeg-turbo's coefficients (a compiled reader)",
                         "hybrid, CPU part: libjpeg-turbo's coefficients (jpeg_read_coefficients)"),
                        ("hybrid: the numba entropy decoder", "hybrid, CPU part: the numba entropy decoder "
                                                              "(flow.jpeg_entropy)")):
        print(f"| {label} | {table['frame'][mm] / table['frame'][name]:.2f}x | "
              f"{table['flow x'][mm] / table['flow x'][name]:.2f}x |")


if __name__ == "__main__":
    run_bench(main)
