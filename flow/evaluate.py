"""Accuracy of flow against ground truth: mean end-point error (EPE) and the share of pixels within
0.1 / 1 / 3 px, as a table.

    python -m flow.evaluate --frames frame10.png frame11.png --gt flow10.flo [--set scale_step=0.8]
    python -m flow.evaluate --pair a.png b.png a_b.flo --pair c.png d.png c_d.png   # several pairs
    python -m flow.evaluate --flow estimate.flo --gt truth.flo
    python -m flow.evaluate --store work/flow --gt-dir work/synth/flow_gt [--videos 20]

Frame pairs are run through TV-L1 with the `[flow]` defaults (`--set key=value` overrides any
field, e.g. `backend=torch`). Store mode decodes the stored uint8 flow (so quantisation and the
clipping bound count) and compares flow image `i` of `<video_id>` with
`<gt-dir>/<video_id>/flow_{i+1:05d}.flo`, resampling the ground truth when the store was resized.
Ground truth may be `.flo` (Middlebury) or KITTI `.png`; only its valid pixels count. Where the
ground truth is valid but the estimate is not known (NaN, infinite, or marked invalid in a KITTI
`.png`), the pixel counts as an error of infinite size: it is outside every threshold and makes the
mean EPE `inf`, so that an estimator cannot score better by leaving pixels out (the `unknown`
column counts them). The `all` row pools every pixel of every pair.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from flow.config import FlowConfig
from flow.encoding import decode
from flow.errors import FlowError
from flow.formats import read_flow
from flow.store import open_store
from flow.visualise import check_png_path, write_flow_png
from p3dbase.atomic import write_text
from p3dbase.errors import shown
from p3dbase.overrides import check_value, parse_override

THRESHOLDS = (0.1, 1.0, 3.0)


@dataclass
class EpeStats:
    """End-point error summary over `pixels` valid pixels of `pairs` flow fields."""

    name: str
    pairs: int
    pixels: int
    mean_epe: float  # inf when any pixel's estimate is unknown
    within: tuple[float, ...]  # share of pixels with EPE <= each of THRESHOLDS
    unknown: int = 0  # pixels whose estimate is not known (counted as errors)


def endpoint_errors(estimate: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None,
                    known: np.ndarray | None = None) -> np.ndarray:
    """EPE (px) of every pixel where the ground truth is `valid`: |estimate - truth|, flattened. A pixel
    whose estimate is unknown (not finite, or False in `known`) has EPE inf."""
    if estimate.shape != truth.shape or estimate.ndim != 3 or estimate.shape[2] != 2:
        raise FlowError(f"estimate {list(estimate.shape)} and ground truth {list(truth.shape)} must both "
                        "be [H, W, 2] of the same size")
    err = np.hypot(*(estimate.astype(np.float64) - truth.astype(np.float64)).transpose(2, 0, 1))
    unknown = ~np.isfinite(estimate).all(axis=2)
    if known is not None:
        unknown |= ~known
    err[unknown] = np.inf
    return err[valid] if valid is not None else err.ravel()


def epe_stats(name: str, errors: Sequence[np.ndarray]) -> EpeStats:
    """Pool per-pair error arrays into one summary."""
    allerr = np.concatenate([np.ravel(e) for e in errors]) if errors else np.zeros(0)
    if allerr.size == 0:
        return EpeStats(name, len(errors), 0, float("nan"), tuple(float("nan") for _ in THRESHOLDS))
    return EpeStats(name, len(errors), int(allerr.size), float(allerr.mean()),
                    tuple(float((allerr <= t).mean()) for t in THRESHOLDS), int(np.isinf(allerr).sum()))


def check_stats(row: EpeStats, what: str) -> EpeStats:
    """`row` if it scored something; FlowError naming `what` when no pixel had ground truth or when
    no estimate was known (a table of nan or inf would read as a result)."""
    if row.pixels == 0:
        raise FlowError(f"{what}: no pixel has valid ground truth: nothing to score")
    if row.unknown == row.pixels:
        raise FlowError(f"{what}: the estimate is unknown (NaN, infinite or marked invalid) at every one of the "
                        f"{row.pixels} pixels with ground truth")
    return row


def resize_flow(flow: np.ndarray, valid: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Flow field and mask resampled to (width, height), vectors scaled with the image; a pixel stays
    valid only if every source pixel it averages was."""
    h, w = flow.shape[:2]
    if (w, h) == size:
        return flow, valid
    interp = cv2.INTER_AREA if size[0] < w and size[1] < h else cv2.INTER_LINEAR
    clean = np.where(valid[..., None], flow, 0).astype(np.float32)
    out = cv2.resize(clean, size, interpolation=interp)
    out[..., 0] *= size[0] / w
    out[..., 1] *= size[1] / h
    mask = cv2.resize(valid.astype(np.float32), size, interpolation=interp) >= 1 - 1e-6
    return out, mask


def read_grey(path: Path | str) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise FlowError(f"{path}: cannot read image")
    return img


def compute_pair(frame1: Path | str, frame2: Path | str, cfg: FlowConfig) -> np.ndarray:
    """TV-L1 flow from frame1 to frame2 with the configured backend."""
    from flow.stage import make_backend  # the stage's backend dispatch, shared

    a, b = read_grey(frame1), read_grey(frame2)
    if a.shape != b.shape:
        raise FlowError(f"{frame1} is {a.shape[1]}x{a.shape[0]} but {frame2} is {b.shape[1]}x{b.shape[0]}")
    return make_backend(cfg).compute(np.stack([a, b]))[0]


def evaluate_store(store_dir: Path | str, gt_dir: Path | str, videos: int = 0) -> list[EpeStats]:
    """One row per stored video that has ground truth (the first `videos` of them if > 0)."""
    store = open_store(store_dir)
    gt_dir = Path(gt_dir)
    rows = []
    for video_id in store.video_ids():
        if not (gt_dir / video_id).is_dir():
            continue
        errors = []
        with store.open(video_id) as frames:
            for i in range(frames.num_flows):
                gt_path = gt_dir / video_id / f"flow_{i + 1:05d}.flo"
                if not gt_path.exists():
                    continue
                truth, valid = read_flow(gt_path)
                truth, valid = resize_flow(truth, valid, (frames.width, frames.height))
                estimate = decode(frames.flow([i])[0], store.bound)
                errors.append(endpoint_errors(estimate, truth, valid))
        if errors:
            rows.append(epe_stats(video_id, errors))
        if videos and len(rows) == videos:
            break
    if not rows:
        raise FlowError(f"no stored video of {store_dir} has ground truth under {gt_dir} "
                        "(expected <gt-dir>/<video_id>/flow_00001.flo)")
    return rows


def pooled(rows: Sequence[EpeStats], name: str = "all") -> EpeStats:
    """Pixel-weighted total of several rows."""
    pixels = sum(r.pixels for r in rows)
    if pixels == 0:
        return epe_stats(name, [])
    unknown = sum(r.unknown for r in rows)
    mean = float("inf") if unknown else sum(r.mean_epe * r.pixels for r in rows) / pixels
    within = tuple(sum(r.within[k] * r.pixels for r in rows) / pixels for k in range(len(THRESHOLDS)))
    return EpeStats(name, sum(r.pairs for r in rows), pixels, mean, within, unknown)


def format_table(rows: Sequence[EpeStats]) -> str:
    """Markdown table, one line per row."""
    head = ["flow", "pairs", "pixels", "mean EPE (px)"] + [f"<= {t:g} px" for t in THRESHOLDS] + ["unknown"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = ([r.name, str(r.pairs), str(r.pixels), f"{r.mean_epe:.3f}"] + [f"{100 * w:.1f}%" for w in r.within]
                 + [str(r.unknown)])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: Path | str, rows: Sequence[EpeStats]) -> None:
    path = Path(path)
    if not path.parent.is_dir():
        raise FlowError(f"--csv {shown(path)}: the folder {shown(path.parent)} does not exist")
    out = io.StringIO()
    table = csv.writer(out, lineterminator="\n")
    table.writerow(["flow", "pairs", "pixels", "mean_epe"] + [f"within_{t:g}px" for t in THRESHOLDS] + ["unknown"])
    for r in rows:
        table.writerow([r.name, r.pairs, r.pixels, f"{r.mean_epe:.6f}"] + [f"{w:.6f}" for w in r.within] + [r.unknown])
    write_text(path, out.getvalue())


def config_with(overrides: Sequence[str]) -> FlowConfig:
    """FlowConfig defaults with `key=value` overrides in the grammar of `python -m pipeline --set`
    (p3dbase.overrides; the `flow.` prefix is optional), then checked by FlowConfig.validate."""
    hints = typing.get_type_hints(FlowConfig)
    changes = {}
    for item in overrides:
        try:
            key, value = parse_override(item)
        except ValueError as e:
            raise FlowError(str(e)) from None
        name = key.removeprefix("flow.")
        if name not in hints:
            raise FlowError(f"--set {item!r}: expected key=value with a [flow] key ({', '.join(sorted(hints))})")
        try:
            changes[name] = check_value(value, hints[name], f"flow.{name}")
        except ValueError as e:
            raise FlowError(f"--set {item!r}: {e}") from None
    cfg = dataclasses.replace(FlowConfig(), **changes)
    try:
        cfg.validate()
    except ValueError as e:
        raise FlowError(f"--set: {e}") from None
    return cfg


def _count(text: str) -> int:
    """--videos: a whole number >= 0 (-1 read as "all", as 0 does, without a word)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number, 0 (all) or more, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flow.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", nargs=2, metavar=("FRAME1", "FRAME2"), help="compute TV-L1 on this pair")
    p.add_argument("--flow", metavar="ESTIMATE", help="an estimated flow file (.flo or KITTI .png)")
    p.add_argument("--gt", metavar="TRUTH", help="ground truth for --frames or --flow")
    p.add_argument("--pair", nargs=3, action="append", default=[], metavar=("FRAME1", "FRAME2", "TRUTH"),
                   help="a frame pair and its ground truth (repeatable)")
    p.add_argument("--store", metavar="DIR", help="a flow store (the flow stage's output)")
    p.add_argument("--gt-dir", metavar="DIR", help="ground truth <video_id>/flow_00001.flo for --store")
    p.add_argument("--videos", type=_count, default=0,
                   help="--store: only the first N videos with ground truth (0: all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a [flow] setting for TV-L1, e.g. scale_step=0.8 (repeatable)")
    p.add_argument("--csv", metavar="PATH", help="also write the table as CSV")
    p.add_argument("--vis", metavar="PNG", help="colour-coded estimate of the first pair to this PNG")
    return p


def run(args: argparse.Namespace) -> list[EpeStats]:
    rows: list[EpeStats] = []
    pairs = [tuple(p) for p in args.pair]
    if args.frames:
        if not args.gt:
            raise FlowError("--frames needs --gt")
        pairs.insert(0, (*args.frames, args.gt))
    if args.flow and not args.gt:
        raise FlowError("--flow needs --gt")
    if args.store and not args.gt_dir:
        raise FlowError("--store needs --gt-dir")
    if not (pairs or args.flow or args.store):
        raise FlowError("nothing to evaluate: give --frames/--pair, --flow or --store (see --help)")
    cfg = config_with(args.set)
    if unused := _unused_settings(args.set, bool(pairs)):
        print(f"warning: --set {', '.join(unused)}: no effect here (only TV-L1's settings and backend act, and "
              "only on --frames / --pair; size, bound and codecs are the flow stage's)", file=sys.stderr)
    if args.vis:  # checked before any work, as --csv is
        check_png_path(args.vis, "--vis")
    if args.csv and not Path(args.csv).parent.is_dir():
        raise FlowError(f"--csv {shown(args.csv)}: the folder {shown(Path(args.csv).parent)} does not exist")
    first_estimate = None
    for frame1, frame2, truth_path in pairs:
        truth, valid = read_flow(truth_path)
        estimate = compute_pair(frame1, frame2, cfg)
        _same_size(estimate, truth, frame1, truth_path)
        first_estimate = estimate if first_estimate is None else first_estimate
        rows.append(check_stats(epe_stats(f"{Path(frame1).name} -> {Path(frame2).name}",
                                          [endpoint_errors(estimate, truth, valid)]), f"{frame1} -> {frame2}"))
    if args.flow:
        truth, valid = read_flow(args.gt)
        estimate, known = read_flow(args.flow)
        _same_size(estimate, truth, args.flow, args.gt)
        first_estimate = estimate if first_estimate is None else first_estimate
        rows.append(check_stats(epe_stats(Path(args.flow).name, [endpoint_errors(estimate, truth, valid, known)]),
                                f"--flow {shown(args.flow)}"))
    if args.store:
        rows += evaluate_store(args.store, args.gt_dir, args.videos)
    if len(rows) > 1:
        rows.append(pooled(rows))
    print(format_table(rows))
    if args.csv:
        write_csv(args.csv, rows)
    if args.vis:
        if first_estimate is None:
            raise FlowError("--vis shows a pair's estimate: give --frames, --pair or --flow")
        write_flow_png(args.vis, first_estimate)
    return rows


# What compute_pair's backend reads of the [flow] settings: TV-L1's, and how it runs.
PAIR_FIELDS = ("tau", "lambda_", "theta", "nscales", "warps", "epsilon", "inner_iterations", "outer_iterations",
               "scale_step", "gamma", "median_filtering", "use_initial_flow", "backend", "device", "batch_pairs")


def _unused_settings(overrides: Sequence[str], pairs: bool) -> list[str]:
    """The keys of `overrides` that change nothing this run computes: all of them without a pair to
    compute (--flow, --store), else those outside PAIR_FIELDS (`size=10x10` resized nothing)."""
    keys = [item.partition("=")[0].strip().removeprefix("flow.") for item in overrides]
    return [k for k in keys if not pairs or k not in PAIR_FIELDS]


def _same_size(estimate: np.ndarray, truth: np.ndarray, estimate_name: object, truth_name: object) -> None:
    if estimate.shape[:2] != truth.shape[:2]:
        raise FlowError(f"{shown(estimate_name)} is {estimate.shape[1]}x{estimate.shape[0]} but its ground truth "
                        f"{shown(truth_name)} is {truth.shape[1]}x{truth.shape[0]}: compare flow of the same size")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        run(args)
    except FlowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
