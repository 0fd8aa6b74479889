"""Store formats compared: bytes per frame, write time, and random 16-frame windows read per second;
JPEG decoders side by side; what JPEG does to flow against ground truth.

    .venv/bin/python bench/flow_store.py [--data ../shared/data] [--frames 48] [--clips 3]

Real 340x256 clips, real TV-L1 flow (chosen defaults) on their first `--frames` frames. A "frame" is
one RGB image plus one two-channel flow image. Reads are random windows of 16 consecutive frames
from random videos (page cache warm, one process), RGB and flow separately, as the streams read
them, counted per CPU-second of the reading process (load from other processes does not move it)
in interleaved rounds; ratios are against the mmaction2 JPEG layout measured in the same run. The
"planes" rows read flow as the training loader now does (VideoFrames.flow_planes: x and y images
into their own planes, not interleaved into [T, H, W, 2]), from both layouts; their RGB reads are the
layout's plain ones again. "JPEG decoding alone" decodes the same windows' JPEGs with the store's
decoder into one reused array, and nothing else: the ceiling of any reader of these files. "As
mmaction2's RawFrameDecode does" reads the mmaction layout with mmaction2's own steps (RGB converted
to RGB order, flow x and y stacked per image); the ratios stay against the plain cv2.imdecode read,
and a line after the table gives the default store against mmaction2's. "Hybrid decode: the workers'
part" is the CPU's share of `train.decode = "hybrid"` (flow.jpeg_entropy: the entropy decoding into
DCT coefficients; the rest runs on the trainer's device): its flow reads, which interleave nothing,
are compared with mmaction's planar read.

Decoders: CPU ms per 340x256 image of the same q95 JPEGs (frames, and flow x images) through each
library pip offers that is installed (simplejpeg, PyTurboJPEG, imagecodecs, Pillow, cv2), at full size and at the
reduced DCT sizes 6/8 and 1/2. Flow fidelity: TV-L1 flow of the ground-truth pairs in
`<data>/flow_gt`, as stored uint8 and through a JPEG q95 round trip (the jpeg codec's files): EPE
against the truth, the share of uint8 levels the JPEG changes, and its largest change in px.
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from bench_cli import at_least, run  # bench/, the script's own folder, is on sys.path

from flow import codec as codec_module
from flow.config import FlowConfig
from flow.encoding import decode, encode, step
from flow.evaluate import endpoint_errors, read_grey
from flow.formats import read_flow
from flow.jpeg_entropy import EntropyDecoder
from flow.stage import make_backend
from flow.store import PackedFrames, create_store
from flow.tvl1 import OpenCVTVL1, to_gray
from flow.video import VideoReader
from p3dbase.errors import SettingError
from streams.gpu_decode import window_coefficients

CLIPS = ["arm_wrestling__mmaction2_demo.mp4", "clean_and_jerk__mmskeleton.mp4",
         "skateboarding__mmskeleton.mp4", "tai_chi__mmskeleton.mp4", "cleaning_pool__mmaction2_test.mp4"]
STORES = {"mmaction (JPEG q95, lossy)": dict(layout="mmaction"),
          "mmaction, read as mmaction2's RawFrameDecode does": dict(layout="mmaction", mmaction2=True),
          "packed jpeg (default, q95, lossy)": dict(layout="packed", codec="jpeg"),
          "packed jpeg, cv2 decoder": dict(layout="packed", codec="jpeg", decoder="cv2"),
          "packed jpeg, fast decode (train.fast_decode)": dict(layout="packed", codec="jpeg", fast=True),
          "packed jpeg, JPEG decoding alone (the ceiling)": dict(layout="packed", codec="jpeg", decode_only=True),
          "packed jpeg, hybrid decode: the workers' part (train.decode = \"hybrid\")": dict(layout="packed",
                                                                                         codec="jpeg", hybrid=True),
          "mmaction, flow as x / y planes (flow_planes)": dict(layout="mmaction", planes=True),
          "packed jpeg, flow as x / y planes (flow_planes, the training read)": dict(layout="packed", codec="jpeg",
                                                                                     planes=True),
          "packed jpeg RGB + png flow": dict(layout="packed", codec="jpeg", flow_codec="png"),
          "packed png (lossless)": dict(layout="packed", codec="png"),
          "packed raw (uint8, lossless)": dict(layout="packed", codec="raw")}
UCF101_FRAMES = 2.48e6  # 13,320 clips, about 186 frames each


@functools.cache
def decode_only(reader: PackedFrames, modality: str) -> Callable[..., None]:
    """A window's JPEGs decoded into one reused array and nothing else (no checksum, no output array,
    no interleave): what a packed jpeg reader cannot go below, with this decoder."""
    image = np.empty((reader.height, reader.width, 3) if modality == "rgb" else (reader.height, reader.width),
                     np.uint8)

    def read(indices: range, fast: bool = False) -> None:
        if modality == "rgb":
            for blob in reader._blobs(reader._rgb_index[indices.start:indices.stop]):
                codec_module.decode_jpeg(blob, image)
            return
        for blob in reader._blobs(reader._flow_index[indices.start:indices.stop]):
            for jpeg in codec_module.flow_jpegs(blob):
                codec_module.decode_jpeg(jpeg, image)
    return read


@functools.cache
def hybrid_read(reader: PackedFrames, modality: str) -> Callable[..., None]:
    """The CPU's part of train.decode = "hybrid" exactly as a worker does it (streams.gpu_decode.window_coefficients):
    the window's JPEGs read (checksums checked) and entropy-decoded into their sparse coefficients,
    gathered into the clip's arrays. This process keeps glibc's default allocator settings, which a
    worker changes (streams.loaders.keep_freed_memory), so its fresh arrays cost page faults here."""
    decoder = EntropyDecoder()

    def read(indices: range, fast: bool = False) -> None:
        window_coefficients(reader, modality, indices, decoder)
    return read


def mmaction2_read(reader, modality: str) -> Callable[..., list[np.ndarray]]:
    """A window read the way mmaction2's RawFrameDecode reads the layout (mmaction/datasets/transforms/
    loading.py): each file's bytes (mmengine's LocalBackend: open, read), mmcv.imfrombytes with the cv2
    backend (cv2.imdecode; RGB frames then converted to RGB order in place, channel_order='rgb'), flow
    x and y as greyscale and np.stack-ed per image; the window is a list of images, not one array."""
    def read(indices: range, fast: bool = False) -> list[np.ndarray]:
        images = []
        for i in indices:
            if modality == "rgb":
                with open(reader.path / f"img_{i + 1:05d}.jpg", "rb") as f:
                    img = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)
                cv2.cvtColor(img, cv2.COLOR_BGR2RGB, img)
                images.append(img)
                continue
            axes = []
            for axis in "xy":
                with open(reader.path / f"flow_{axis}_{i + 1:05d}.jpg", "rb") as f:
                    axes.append(cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_GRAYSCALE))
            images.append(np.stack(axes, axis=-1))
        return images
    return read


def window_reads(readers: dict, counts: dict[str, int], modality: str, cpu_seconds: float,
                 rng: random.Random, fast: bool = False, planes: bool = False, decode: bool = False,
                 mmaction2: bool = False, hybrid: bool = False) -> tuple[int, float, float]:
    """Read random 16-frame windows for `cpu_seconds` of this process's CPU time (`fast`: the readers'
    fast JPEG decode; `planes`: flow as [2, T, H, W], x and y never interleaved; `decode`: the JPEGs'
    decoding alone, `decode_only`; `mmaction2`: as mmaction2 reads the layout, `mmaction2_read`;
    `hybrid`: the workers' part of train.decode = "hybrid", `hybrid_read`): (windows, wall s, CPU s)."""
    ids = sorted(readers)
    n, wall, cpu = 0, time.perf_counter(), time.process_time()
    while time.process_time() - cpu < cpu_seconds:
        v = rng.choice(ids)
        first = rng.randrange(counts[v] - (1 if modality == "flow" else 0) - 15)
        if decode:
            read = decode_only(readers[v], modality)
        elif mmaction2:
            read = mmaction2_read(readers[v], modality)
        elif hybrid:
            read = hybrid_read(readers[v], modality)
        else:
            read = readers[v].rgb if modality == "rgb" else readers[v].flow_planes if planes else readers[v].flow
        read(range(first, first + 16), fast=fast)
        n += 1
    return n, time.perf_counter() - wall, time.process_time() - cpu


def decoder_table(videos: dict[str, tuple], seconds: float) -> list[str]:
    """CPU ms per image of each JPEG decoder on the same q95 frames and flow x images (markdown rows)."""
    rgb = [f for r, _ in videos.values() for f in r[:16]]
    flo = [np.ascontiguousarray(f[..., 0]) for _, fl in videos.values() for f in fl[:16]]
    blobs = {"frame": [codec_module.jpeg_bytes(f, 95) for f in rgb],
             "flow x": [codec_module.jpeg_bytes(f, 95) for f in flo]}
    h, w = rgb[0].shape[:2]
    decoders: dict[str, dict] = {"cv2.imdecode": {
        "frame": lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR),
        "flow x": lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE),
        "frame 1/2": lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_REDUCED_COLOR_2)}}
    try:
        import simplejpeg
        out = np.empty((h, w, 3), np.uint8)
        grey = np.empty((h, w), np.uint8)
        decoders["simplejpeg (into an array)"] = {
            "frame": lambda b: simplejpeg.decode_jpeg(b, "BGR", buffer=out),
            "flow x": lambda b: simplejpeg.decode_jpeg(b, "GRAY", buffer=grey),
            "frame 6/8": lambda b: simplejpeg.decode_jpeg(b, "BGR", min_height=h * 3 // 4, min_width=w * 3 // 4),
            "frame 1/2": lambda b: simplejpeg.decode_jpeg(b, "BGR", min_height=h // 2, min_width=w // 2)}
        decoders["simplejpeg, fast IDCT + upsampling"] = {
            "frame": lambda b: simplejpeg.decode_jpeg(b, "BGR", fastdct=True, fastupsample=True, buffer=out),
            "flow x": lambda b: simplejpeg.decode_jpeg(b, "GRAY", fastdct=True, buffer=grey)}
    except ImportError:
        pass
    try:
        from turbojpeg import TJPF_BGR, TJPF_GRAY, TurboJPEG
        tj = TurboJPEG()  # needs the system's libturbojpeg, which pip does not install
        decoders["PyTurboJPEG"] = {"frame": lambda b: tj.decode(b, pixel_format=TJPF_BGR),
                                   "flow x": lambda b: tj.decode(b, pixel_format=TJPF_GRAY),
                                   "frame 6/8": lambda b: tj.decode(b, pixel_format=TJPF_BGR, scaling_factor=(3, 4)),
                                   "frame 1/2": lambda b: tj.decode(b, pixel_format=TJPF_BGR, scaling_factor=(1, 2))}
    except (ImportError, RuntimeError, OSError):
        pass
    try:
        import imagecodecs  # bundles its own libjpeg-turbo (3.1 in 2026.3), newer than cv2's and simplejpeg's
        out3, grey3 = np.empty((h, w, 3), np.uint8), np.empty((h, w), np.uint8)
        decoders[f"imagecodecs {imagecodecs.__version__} (into an array; RGB order)"] = {
            "frame": lambda b: imagecodecs.jpeg8_decode(b, out=out3),
            "flow x": lambda b: imagecodecs.jpeg8_decode(b, out=grey3)}  # its `shape` does not reach libjpeg's scaling
    except ImportError:
        pass
    from PIL import Image

    def pillow(b: bytes, mode: str, size: tuple[int, int] | None = None) -> np.ndarray:
        img = Image.open(io.BytesIO(b))
        if size:
            img.draft(mode, size)  # Pillow's reduced DCT decoding
        return np.asarray(img.convert(mode))

    decoders["Pillow"] = {"frame": lambda b: pillow(b, "RGB"), "flow x": lambda b: pillow(b, "L"),
                          "frame 1/2": lambda b: pillow(b, "RGB", (w // 2, h // 2))}
    kinds = ("frame", "flow x", "frame 6/8", "frame 1/2")
    rows = [f"| decoder | {' | '.join(kinds)} | frame vs cv2 |", "|---" * (len(kinds) + 2) + "|"]
    base = None
    for name, fns in decoders.items():
        cells = []
        for kind in kinds:
            if kind not in fns:
                cells.append("")
                continue
            data = blobs["flow x" if kind == "flow x" else "frame"]
            n, cpu = 0, time.process_time()
            while time.process_time() - cpu < seconds:
                fns[kind](data[n % len(data)])
                n += 1
            cells.append(f"{(time.process_time() - cpu) / n * 1e3:.3f}")
        base = base or float(cells[0])
        rows.append(f"| {name} | {' | '.join(cells)} | {base / float(cells[0]):.2f}x |")
    return rows


def fast_decode_table(videos: dict[str, tuple]) -> list[str]:
    """What the fast decode (flow.codec: libjpeg-turbo's fast IDCT, and plain chroma upsampling for
    colour) changes against the accurate decode of the same q95 JPEGs, beside what JPEG q95 itself
    changes against the original image (markdown rows; uint8 levels)."""
    rows = ["| images | fast vs accurate: mean / max level change | levels changed | JPEG q95 (accurate) vs "
            "original: mean / max | fast vs original: mean |", "|---|---|---|---|---|"]
    for kind, images in (("frames (BGR)", [f for r, _ in videos.values() for f in r]),
                         ("flow x and y (grey)", [np.ascontiguousarray(f[..., c]) for _, fl in videos.values()
                                                  for f in fl for c in (0, 1)])):
        fast, accurate, original = [], [], []
        for img in images:
            blob = np.frombuffer(codec_module.jpeg_bytes(img, 95), np.uint8)
            a, f = np.empty_like(img), np.empty_like(img)
            codec_module.decode_jpeg(blob, a)
            codec_module.decode_jpeg(blob, f, fast=True)
            fast.append(f.astype(np.int16))
            accurate.append(a.astype(np.int16))
            original.append(img.astype(np.int16))
        f, a, o = np.stack(fast), np.stack(accurate), np.stack(original)
        rows.append(f"| {kind}, {len(images)} | {np.abs(f - a).mean():.2f} / {np.abs(f - a).max()} | "
                    f"{(f != a).mean():.0%} | {np.abs(a - o).mean():.2f} / {np.abs(a - o).max()} | "
                    f"{np.abs(f - o).mean():.2f} |")
    return rows


GT_PAIRS = [("middlebury_rubberwhale", "frame10.png", "frame11.png", "flow10.flo"),
            ("flyingchairs_tiny", "00001_img1.ppm", "00001_img2.ppm", "00001_flow.flo"),
            ("kitti_000", "frame1.png", "frame2.png", "flow_gt.png")]


def fidelity_table(data: Path, cfg: FlowConfig) -> list[str]:
    """Flow against ground truth as stored uint8 (png, lossless) and after a JPEG q95 round trip."""
    backend = make_backend(cfg)
    rows = ["| pair | EPE, flow as computed | EPE, uint8 (png) | EPE, uint8 through JPEG q95 | EPE, JPEG q95 fast "
            "decode | levels changed by JPEG | mean / max change (px) | png / jpeg bytes |",
            "|---|---|---|---|---|---|---|---|"]
    for folder, a, b, gt in GT_PAIRS:
        root = data / "flow_gt" / folder
        if not root.is_dir():
            continue
        truth, valid = read_flow(root / gt)
        flow = backend.compute(np.stack([read_grey(root / a), read_grey(root / b)]))[0]
        u8 = encode(flow, cfg.bound)
        blob = codec_module.encode_flow("jpeg", u8, 95)
        back = np.empty_like(u8)
        codec_module.decode_flow("jpeg", np.frombuffer(blob, np.uint8), back, np.empty((2, *u8.shape[:2]), np.uint8))
        fast = np.empty_like(u8)
        codec_module.decode_flow("jpeg", np.frombuffer(blob, np.uint8), fast, np.empty((2, *u8.shape[:2]), np.uint8),
                                 fast=True)
        png = len(codec_module.encode_flow("png", u8, 95))
        epe = [float(endpoint_errors(f, truth, valid).mean())
               for f in (flow, decode(u8, cfg.bound), decode(back, cfg.bound), decode(fast, cfg.bound))]
        change = np.abs(back.astype(int) - u8.astype(int))
        rows.append(f"| {folder} ({u8.shape[1]}x{u8.shape[0]}) | {epe[0]:.3f} | {epe[1]:.3f} | {epe[2]:.3f} | "
                    f"{epe[3]:.3f} | "
                    f"{(change > 0).mean():.1%} | {change.mean() * step(cfg.bound):.3f} / "
                    f"{change.max() * step(cfg.bound):.2f} | {png / 1e3:.1f} / {len(blob) / 1e3:.1f} kB |")
    return rows


def video_args(parser: argparse.ArgumentParser, frames: int) -> None:
    """The arguments `load_videos` reads (this bench's, bench/loader.py's, bench/jpeg_costs.py's): the
    shared data, the first `--frames` frames of `--clips` clips, and the `--cache` .npz they share."""
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--frames", type=at_least(17), default=frames)
    parser.add_argument("--clips", type=at_least(1), default=3)
    parser.add_argument("--cache", type=Path, help="keep the decoded frames and flow here (.npz) for re-runs; the "
                        "benches that load these clips share it")


def load_videos(args: argparse.Namespace, cfg: FlowConfig) -> dict[str, tuple]:
    """{name: (rgb uint8 [N, H, W, 3], flow uint8 [N-1, H, W, 2])}, from `--cache` when it exists: one
    made with other --frames / --clips / flow settings is refused (it was measured as if it were these)."""
    made = {"frames": args.frames, "clips": min(args.clips, len(CLIPS)), "size": cfg.size, "bound": cfg.bound,
            "data": str(Path(args.data).resolve())}
    if args.cache and args.cache.exists():
        try:
            data = np.load(args.cache)
            meta = json.loads(str(data["_meta"])) if "_meta" in data.files else None
            videos = {k[:-4]: (data[k], data[k[:-4] + "_flo"]) for k in data.files if k.endswith("_rgb")}
        except (OSError, ValueError, KeyError) as e:
            raise SettingError(f"--cache {args.cache}: not a cache of this bench ({e})") from None
        if meta is None:
            print(f"warning: --cache {args.cache} is older than its settings record: its frames and clips are "
                  "not checked", flush=True)
        elif meta != made:
            raise SettingError(f"--cache {args.cache} holds {meta}, this run asks for {made}: give the cache's "
                               "settings, or another --cache")
        return videos
    if args.cache and not args.cache.parent.is_dir():  # found out after all the flow was computed
        raise SettingError(f"--cache {args.cache}: no folder {args.cache.parent}")
    tvl1 = OpenCVTVL1(cfg)
    videos = {}
    for name in CLIPS[: args.clips]:
        rgb = next(VideoReader(args.data / "clips" / name, cfg.size).chunks(args.frames, 1))
        videos[Path(name).stem] = (rgb, encode(tvl1.compute(to_gray(rgb)), cfg.bound))
        print(f"flow of {name}: {len(rgb)} frames", flush=True)
    if args.cache:
        np.savez(args.cache, _meta=json.dumps(made), **{f"{k}_rgb": v[0] for k, v in videos.items()},
                 **{f"{k}_flo": v[1] for k, v in videos.items()})
    return videos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    video_args(parser, frames=48)
    parser.add_argument("--rounds", type=at_least(1), default=4, help="reading rounds over every store (median kept)")
    parser.add_argument("--seconds", type=float, default=1.0, help="CPU seconds of reading per store, "
                        "modality and round")
    args = parser.parse_args()

    cfg = FlowConfig()
    videos = load_videos(args, cfg)
    frames = sum(len(r) for r, _ in videos.values())

    sizes, readers = {}, {}
    tmp = Path(tempfile.mkdtemp(prefix="flow_store_bench_"))
    try:
        for k, (label, kind) in enumerate(STORES.items()):
            root = tmp / f"store{k}"
            store = create_store(root, kind["layout"], codec=kind.get("codec", "png"),
                                 flow_codec=kind.get("flow_codec"))
            cpu = time.process_time()
            for vid, (rgb, flo) in videos.items():
                store.write_video(f"Cls/{vid}", rgb, flo)
            write_ms = (time.process_time() - cpu) / frames * 1e3
            files = [p for p in root.rglob("*") if p.is_file() and p.name != "store.json"]
            ids = store.video_ids()
            if kind["layout"] == "mmaction":
                rgb_bytes = sum(p.stat().st_size for p in files if p.name.startswith("img_"))
            else:  # the pack index holds each blob's length
                rgb_bytes = sum(store.open(v).rgb_bytes for v in ids)
            sizes[label] = (sum(p.stat().st_size for p in files) / frames, rgb_bytes / frames, write_ms)
            readers[label] = {v: store.open(v) for v in ids}
        counts = {f"Cls/{v}": len(rgb) for v, (rgb, _) in videos.items()}
        rates: dict[tuple[str, str], list[float]] = {(s, m): [] for s in STORES for m in ("rgb", "flow")}
        wall_rates: dict[tuple[str, str], list[float]] = {key: [] for key in rates}
        rng = random.Random(0)
        for _ in range(args.rounds):
            for label, kind in STORES.items():
                codec_module.decoder = kind.get("decoder", "auto")
                for modality in ("flow",) if kind.get("planes") else ("rgb", "flow"):
                    n, wall, cpu = window_reads(readers[label], counts, modality, args.seconds, rng,
                                                kind.get("fast", False), kind.get("planes", False),
                                                kind.get("decode_only", False), kind.get("mmaction2", False),
                                                kind.get("hybrid", False))
                    rates[label, modality].append(n / cpu)
                    wall_rates[label, modality].append(n / wall)
        codec_module.decoder = "auto"
    finally:
        shutil.rmtree(tmp)

    med = {key: float(np.median(v)) for key, v in rates.items() if v}
    wmed = {key: float(np.median(v)) for key, v in wall_rates.items() if v}
    first = next(iter(STORES))
    planes_base = next(label for label, kind in STORES.items() if kind.get("planes"))

    def rate(label: str, modality: str) -> str:
        """clips/s (wall), and the ratio against mmaction read the same way (planes against planes)."""
        if (label, modality) not in med:
            return " | "
        # flow read into planes (the training read, and the hybrid decode's coefficients of x and y
        # apart) against mmaction's planar read; the rest against its plain one
        planar = STORES[label].get("planes") or (STORES[label].get("hybrid") and modality == "flow")
        base = planes_base if planar else first
        return (f"{med[label, modality]:.0f} ({wmed[label, modality]:.0f}) | "
                f"{med[label, modality] / med[base, modality]:.2f}x")

    print(f"\n{frames} frames of {len(videos)} clips at {cfg.size}; reads: random 16-frame windows, "
          f"page cache warm, one process, per CPU-second (median of {args.rounds} rounds; wall-clock rate "
          "in brackets)\n")
    print("| store | bytes / frame (RGB + flow) | of which RGB | UCF101 estimate | write CPU ms / frame | "
          "RGB clips/s | RGB read vs mmaction | flow clips/s | flow read vs mmaction |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label in STORES:
        per_frame, rgb_per_frame, write_ms = sizes[label]
        print(f"| {label} | {per_frame / 1e3:.1f} kB | {rgb_per_frame / 1e3:.1f} kB | "
              f"{per_frame * UCF101_FRAMES / 1e9:.0f} GB | {write_ms:.1f} | {rate(label, 'rgb')} | "
              f"{rate(label, 'flow')} |")
    default, mm2 = "packed jpeg (default, q95, lossy)", "mmaction, read as mmaction2's RawFrameDecode does"
    planes = "packed jpeg, flow as x / y planes (flow_planes, the training read)"
    print(f"\nThe default store against the layout as mmaction2 reads it (same run): RGB "
          f"{med[default, 'rgb'] / med[mm2, 'rgb']:.2f}x, flow {med[default, 'flow'] / med[mm2, 'flow']:.2f}x, "
          f"flow as planes (the training read) {med[planes, 'flow'] / med[mm2, 'flow']:.2f}x")
    hybrid = next(label for label, kind in STORES.items() if kind.get("hybrid"))
    print(f"\nThe hybrid decode's workers' part (train.decode = \"hybrid\": the inverse DCT, upsampling and colour "
          f"on the trainer's device) against the mmaction layout: RGB {med[hybrid, 'rgb'] / med[first, 'rgb']:.2f}x, "
          f"flow {med[hybrid, 'flow'] / med[planes_base, 'flow']:.2f}x against its planar read "
          f"({med[hybrid, 'flow'] / med[first, 'flow']:.2f}x its plain one); against mmaction2's RawFrameDecode: RGB "
          f"{med[hybrid, 'rgb'] / med[mm2, 'rgb']:.2f}x, flow {med[hybrid, 'flow'] / med[mm2, 'flow']:.2f}x")
    print(f"\nJPEG decoders, CPU ms per {cfg.size} image (q95; frame: BGR, flow x: grey; 6/8 and 1/2: reduced "
          f"DCT size); JPEG decoder of the store here: {codec_module.jpeg_decoder()}\n")
    print("\n".join(decoder_table(videos, args.seconds / 2)))
    print("\nThe fast decode against the accurate one, same q95 JPEGs (uint8 levels)\n")
    print("\n".join(fast_decode_table(videos)))
    print(f"\nFlow through JPEG q95 against ground truth (TV-L1 defaults, bound {cfg.bound})\n")
    print("\n".join(fidelity_table(args.data, cfg)))


if __name__ == "__main__":
    run(main)
