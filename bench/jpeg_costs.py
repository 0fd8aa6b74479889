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

from flow import codec
from flow.config import FlowConfig
from streams.transforms import crop_map

sys.path.insert(0, str(Path(__file__).resolve().parent))
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
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if codec._simplejpeg() is None:
        sys.exit("jpeg_costs: needs simplejpeg (the store's decoder)")
    videos = load_videos(args, FlowConfig())
    frames = [codec.jpeg_bytes(f, 95) for rgb, _ in videos.values() for f in rgb]
    flows = [codec.jpeg_bytes(np.ascontiguousarray(f[..., 0]), 95) for _, fl in videos.values() for f in fl]
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
        run(lib, frames, flows, files, (h, w), args.rounds)
    finally:
        shutil.rmtree(tmp)


def run(lib: ctypes.CDLL, frames: list[bytes], flows: list[bytes], files: dict[str, list[Path]],
        shape: tuple[int, int], rounds: int) -> None:
    h, w = shape
    rng = random.Random(0)
    sj = codec._simplejpeg()
    probes = {"frame": Probe(lib, (h, w, 3)), "flow x": Probe(lib, (h, w))}
    pads = {"frame": 16, "flow x": 0}  # grey has no chroma upsampling: its rectangles are exact unpadded
    print(f"{len(frames)} frames and {len(flows)} flow x images, {w}x{h}, JPEG q95\n")
    for kind, jpegs in (("frame", frames), ("flow x", flows)):
        for pad in sorted({0, pads[kind]}):
            same, tried = exactness(probes[kind], jpegs, kind == "flow x", pad, rng)
            print(f"{kind}: rectangles decoded with pad {pad} equal to the whole decode: {same} of {tried}")

    def cases(kind: str, jpegs: list[bytes], paths: list[Path]) -> dict[str, Callable[[int], object]]:
        probe, pad, grey = probes[kind], pads[kind], kind == "flow x"
        out = np.empty((h, w) if grey else (h, w, 3), np.uint8)
        flag = cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR
        rects = [recipe_rectangle((h, w), rng) for _ in range(len(jpegs))]
        squares = [(rng.randrange(h - CROP + 1), rng.randrange(w - CROP + 1), CROP, CROP) for _ in jpegs]
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
                        ("nothing but the entropy decoding", "  entropy decoding of every row (all skipped but "
                                                              "the last)")):
        print(f"| {label} | {table['frame'][mm] / table['frame'][name]:.2f}x | "
              f"{table['flow x'][mm] / table['flow x'][name]:.2f}x |")


if __name__ == "__main__":
    main()
