"""`predict`: the top classes of any video files under a trained (or imported) two-stream model.

Each video is decoded, its flow computed on the fly with TV-L1 (`[flow]` settings; fusion.decoded),
and each stream scores the video-level test views of `[eval]` (`clips` evenly spaced clips x `crops`)
exactly as `make eval` does. A stream's video scores are its views' averaged raw logits
(`fusion_scores = "raw"`, TSN's rule and the default) or softmax probabilities (`"softmax"`); the
fused scores are `fusion.fuse.fuse` of the two, the weighted mean with `fusion_weights` (RGB 1 :
flow 1.5 by default), the very function `make eval` fuses with. Shown are probabilities: raw scores
go through a softmax (fusion.fuse.probabilities).

Progress goes to stderr (tqdm, with an ETA): a bar over the videos when there are several, and per
video one over the flow pairs TV-L1 computes, then over the views each stream scores. It is off when
stderr is not a terminal or when asked (`--no-progress`); stdout carries only the predictions.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flow.config import FlowConfig
from flow.errors import FlowError
from flow.stage import config_flow_settings
from fusion import fuse
from fusion.config import EvalConfig
from fusion.decoded import decode_for_views
from fusion.errors import FusionError
from fusion.scoring import ClipGeometry, StreamRunner
from fusion.views import View, score_views
from p3dbase.device import resolve_device
from p3dbase.errors import shown
from p3dbase.progress import progress_bar
from streams.checkpoint import Checkpoint, check_flow_settings, load_stream
from streams.errors import StreamsError
from streams.transforms import MODALITIES


@dataclass
class Stream:
    """A loaded stream, ready to score views."""
    name: str
    checkpoint: Checkpoint
    runner: StreamRunner

    @property
    def clip_len(self) -> int:
        return self.runner.geometry.clip_len


@dataclass
class Prediction:
    """One video's top classes: {"rgb" | "flow" | "fusion": [(class, probability), ...]}."""
    video: str
    frames: int
    top: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    error: str = ""  # why the video could not be scored; `top` is then empty

    def to_json(self) -> dict:
        out = {"video": self.video, "frames": self.frames}
        if self.error:
            out["error"] = self.error
        out.update({name: [{"class": c, "probability": round(p, 6)} for c, p in top] for name, top in self.top.items()})
        return out


def load_streams(checkpoints: dict[str, Path], cfg: EvalConfig) -> list[Stream]:
    """The streams of `checkpoints` ({"rgb": path, "flow": path}, one or both; a training directory
    stands for its last.pt) on `cfg.device`."""
    if not checkpoints or set(checkpoints) - set(MODALITIES):
        raise FusionError(f"give an RGB and/or a flow checkpoint (--rgb, --flow), got {sorted(checkpoints)}")
    device = resolve_device(cfg.device, "eval.device")
    streams = []
    for name in MODALITIES:
        if name not in checkpoints:
            continue
        model, ckpt = load_stream(checkpoints[name], name)
        geometry = ClipGeometry.from_train_config(ckpt.train_config)
        streams.append(Stream(name, ckpt, StreamRunner(model, name, geometry, cfg.batch_views, device)))
    if len(streams) == 2 and streams[0].checkpoint.classes != streams[1].checkpoint.classes:
        raise FusionError(f"{streams[0].checkpoint.path} and {streams[1].checkpoint.path} have different class "
                          "lists: they cannot be fused")
    return streams


def check_flow(streams: Sequence[Stream], given: dict, where: str) -> None:
    """Each stream's training flow settings against those of its input (`given`: flow.stage.flow_settings
    of a store or config_flow_settings of `[flow]`): FusionError naming the differing keys that
    change what a stream is fed (streams.checkpoint.FLOW_DECISIVE); a warning line for the others."""
    for s in streams:
        warnings = check_flow_settings(s.checkpoint, given, where)
        for line in warnings:
            print(f"warning: {line}", file=sys.stderr, flush=True)


def _top(probabilities: np.ndarray, classes: Sequence[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(classes[i], float(probabilities[i])) for i in order]


def predict_video(path: Path, streams: Sequence[Stream], flow_cfg: FlowConfig, cfg: EvalConfig,
                  top_k: int = 5, progress: bool = False) -> Prediction:
    """Score one video with every stream and fuse; FlowError if the video cannot be decoded.
    `progress`: a bar on stderr over the flow pairs, then over the views scored."""
    def views_for(modality: str, length: int) -> list[View]:
        return score_views(length, next(s.clip_len for s in streams if s.name == modality), cfg.clips, cfg.crops)

    def phase(what: str, total: int, unit: str) -> None:  # a new count, and a new ETA
        bar.set_description(f"{name}: {what}", refresh=False)
        bar.unit, bar.bar_format = unit, None
        bar.reset(total=total)

    def flow_done(done: int, needed: int) -> None:
        if done == 0:
            phase("flow", needed, "pair")
        bar.update(done - bar.n)

    name = shown(Path(path).name)
    with progress_bar(desc=f"{name}: decode", bar_format="{desc} [{elapsed}]", leave=False,
              disable=not progress) as bar:
        video, views = decode_for_views(path, flow_cfg, {s.name: s.clip_len for s in streams}, views_for,
                                        on_flow=flow_done)
        with video:
            scores = {}
            for s in streams:
                phase(f"{s.name} views", len(set(views[s.name])), "view")
                logits, _ = s.runner.run(video, views[s.name], on_batch=bar.update)
                scores[s.name] = fuse.video_scores(logits, cfg.fusion_scores)
    classes = streams[0].checkpoint.classes
    prediction = Prediction(shown(path), video.num_frames)  # printable even for a non-UTF-8 name
    for name, value in scores.items():
        prediction.top[name] = _top(fuse.probabilities(value, cfg.fusion_scores), classes, top_k)
    if len(scores) == 2:
        fused = fuse.fuse(scores["rgb"], scores["flow"], cfg.fusion_weights)
        prediction.top["fusion"] = _top(fuse.probabilities(fused, cfg.fusion_scores), classes, top_k)
    return prediction


def predict(videos: Sequence[Path | str], checkpoints: dict[str, Path], flow_cfg: FlowConfig, cfg: EvalConfig,
            top_k: int = 5, progress: bool | None = None) -> list[Prediction]:
    """Predictions for every video, in order; a video that cannot be read gets its error and the
    others go on. FusionError if none could be scored. `progress`: bars on stderr (None: when stderr
    is a terminal)."""
    if top_k < 1:
        raise FusionError(f"--top must be >= 1, got {top_k}")
    try:
        flow_cfg.validate()
        cfg.validate()
    except ValueError as e:
        raise FusionError(f"settings: {e}") from None
    streams = load_streams({k: Path(v) for k, v in checkpoints.items()}, cfg)
    check_flow(streams, config_flow_settings(flow_cfg), "the [flow] settings predict computes flow with")
    if progress is None:
        progress = sys.stderr.isatty()
    predictions = []
    for path in progress_bar([Path(v) for v in videos], desc="predict", unit="video", leave=False,
                     disable=not progress or len(videos) < 2):
        try:
            predictions.append(predict_video(path, streams, flow_cfg, cfg, top_k, progress))
        except (FlowError, StreamsError, OSError) as e:
            predictions.append(Prediction(shown(path), 0, error=shown(" ".join(str(e).split()))))
    if all(p.error for p in predictions):
        raise FusionError(f"no video could be scored: {predictions[0].video}: {predictions[0].error}")
    return predictions


def format_predictions(predictions: Sequence[Prediction], as_json: bool = False) -> str:
    """A plain-text table per video (or one JSON document)."""
    if as_json:
        return json.dumps([p.to_json() for p in predictions], indent=2)
    blocks = []
    for p in predictions:
        if p.error:
            blocks.append(f"{p.video}\n  error: {p.error}")
            continue
        names = list(p.top)
        width = max(len(c) for top in p.top.values() for c, _ in top) + 8
        lines = [f"{p.video} ({p.frames} frames)",
                 "  " + "".join(f"{n:<{width}}" for n in names).rstrip()]
        for rank in range(max(len(t) for t in p.top.values())):
            cells = []
            for n in names:
                c, prob = p.top[n][rank] if rank < len(p.top[n]) else ("", 0.0)
                cells.append(f"{c} {prob:.3f}".ljust(width) if c else " " * width)
            lines.append(f"  {''.join(cells).rstrip()}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def run_predict(videos: Sequence[Path | str], checkpoints: dict[str, Path], flow_cfg: FlowConfig,
                cfg: EvalConfig, top_k: int = 5, as_json: bool = False,
                progress: bool | None = None) -> list[Prediction]:
    """The `predict` stage: score the videos and print the top classes (JSON with `as_json`) on
    stdout; progress bars on stderr (`progress`, None: when stderr is a terminal)."""
    started = time.monotonic()
    predictions = predict(videos, checkpoints, flow_cfg, cfg, top_k, progress)
    print(format_predictions(predictions, as_json), flush=True)
    if not as_json:
        failed = sum(1 for p in predictions if p.error)
        print(f"\npredict: {len(predictions) - failed} video(s) scored, {failed} failed "
              f"({time.monotonic() - started:.0f} s)")
    return predictions
