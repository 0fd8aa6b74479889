"""`predict`: the top classes of any video files under a trained (or imported) two-stream model.

The videos are files, frame folders, directories or list files (fusion.inputs). Each is decoded,
its flow computed on the fly with TV-L1 (fusion.decoded) under the flow settings the checkpoints
were trained with (frame size, bound, TV-L1's parameters: `FROM_CHECKPOINT`), unless a key is given
with `--set flow.KEY=...`, which is then checked against the checkpoint (a setting that changes
what a stream is fed is refused, streams.checkpoint.FLOW_DECISIVE). Each stream scores the
video-level test views of `[eval]` (`clips` evenly spaced clips x `crops`) exactly as `make eval`
does. A stream's video scores are its views' averaged raw logits (`fusion_scores = "raw"`, TSN's
rule and the default) or softmax probabilities (`"softmax"`); the fused scores are
`fusion.fuse.fuse` of the two, the weighted mean with `fusion_weights` (RGB 1 : flow 1.5 by
default), the very function `make eval` fuses with. Shown are probabilities: raw scores go through a
softmax (fusion.fuse.probabilities). `--timeline` adds the scores of every snippet (fusion.timeline).

Progress goes to stderr (tqdm, with an ETA): a bar over the videos when there are several, and per
video one over the flow pairs TV-L1 computes, then over the views each stream scores. It is off when
stderr is not a terminal or when asked (`--no-progress`); stdout carries only the predictions.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flow.config import FlowConfig
from flow.errors import FlowError
from flow.stage import config_flow_settings
from fusion import fuse
from fusion.config import EvalConfig
from fusion.decoded import decode_for_views
from fusion.engine import Engine, Stream, open_stream
from fusion.errors import FusionError
from fusion.inputs import gather_inputs
from fusion.snippets import run_snippets
from fusion.timeline import paths as timeline_paths
from fusion.timeline import write_timeline
from fusion.views import View, score_plan
from p3dbase.atomic import DiskFullError, name_problem
from p3dbase.device import resolve_device
from p3dbase.errors import P3DError, brief, path_is, refusal, shown, text_problem
from p3dbase.overwrite import output_folder
from p3dbase.progress import progress_bar
from streams.checkpoint import FLOW_DECISIVE, check_flow_settings
from streams.errors import StreamsError
from streams.transforms import MODALITIES

# The [flow] keys predict and features take from the checkpoints by default: what decides the flow
# (frame size, encoding bound, TV-L1's parameters), not where or how fast it runs.
FROM_CHECKPOINT = ("size", "bound", "tau", "lambda_", "theta", "nscales", "warps", "epsilon", "inner_iterations",
                   "outer_iterations", "scale_step", "gamma", "median_filtering", "use_initial_flow")


@dataclass
class Prediction:
    """One video's top classes: {"rgb" | "flow" | "fusion": [(class, probability), ...]}."""
    video: str
    frames: int
    top: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    error: str = ""  # why the video could not be scored; `top` is then empty
    timeline: list[Path] = field(default_factory=list)  # `--timeline`: the files written

    def to_json(self) -> dict:
        out = {"video": self.video, "frames": self.frames}
        if self.error:
            out["error"] = self.error
        if self.timeline:
            out["timeline"] = [str(p) for p in self.timeline]
        out.update({name: [{"class": c, "probability": round(p, 6)} for c, p in top] for name, top in self.top.items()})
        return out


def load_streams(checkpoints: dict[str, Path], cfg: EvalConfig) -> Engine:
    """The streams of `checkpoints` ({"rgb": path, "flow": path}, one or both; a training directory
    stands for its last.pt), loaded on `cfg.device`."""
    if not checkpoints or set(checkpoints) - set(MODALITIES):
        raise FusionError(f"give an RGB and/or a flow checkpoint (--rgb, --flow), got {sorted(checkpoints)}")
    streams = [open_stream(name, checkpoints[name]) for name in MODALITIES if name in checkpoints]
    if len(streams) == 2 and streams[0].classes != streams[1].classes:
        raise FusionError(f"{streams[0].checkpoint} and {streams[1].checkpoint} have different class "
                          "lists: they cannot be fused")
    return Engine(streams, cfg.batch_views, resolve_device(cfg.device, "eval.device"))


def check_flow(streams: Sequence[Stream], given: dict, where: str) -> None:
    """Each stream's training flow settings against those of its input (`given`: flow.stage.flow_settings
    of a store or config_flow_settings of `[flow]`): StreamsError naming the differing keys that
    change what a stream is fed (streams.checkpoint.FLOW_DECISIVE); a warning line for the others."""
    for s in streams:
        for line in check_flow_settings(s.info, given, where):
            print(f"warning: {line}", file=sys.stderr, flush=True)


def checkpoint_flow_config(streams: Sequence[Stream], flow_cfg: FlowConfig, explicit: Iterable[str] = ()) -> FlowConfig:
    """The `[flow]` settings to compute flow with for these streams: those their checkpoints were
    trained on (the flow stream's; the RGB stream's frame size when there is no flow stream), except
    the keys in `explicit` (given with `--set flow.KEY=...`), which stay as given and are then checked
    against the checkpoint (check_flow). Keys a checkpoint does not record keep `flow_cfg`'s value."""
    fields = set(FROM_CHECKPOINT)
    chosen: dict = {}
    for s in sorted(streams, key=lambda s: s.name != "flow"):  # the flow stream first
        recorded = {k: v for k, v in s.info.flow.items() if k in fields}
        if s.name == "rgb":
            recorded = {k: v for k, v in recorded.items() if k in FLOW_DECISIVE["rgb"]}
        for k, v in recorded.items():
            chosen.setdefault(k, v)
    chosen = {k: v for k, v in chosen.items() if k not in set(explicit)}
    try:
        merged = dataclasses.replace(flow_cfg, **chosen)
        merged.validate()
    except (TypeError, ValueError) as e:  # a foreign checkpoint's value of another type or range
        raise FusionError(f"the flow settings recorded in the checkpoints do not fit [flow]: {e}") from None
    return merged


def _top(probabilities: np.ndarray, classes: Sequence[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(classes[i], float(probabilities[i])) for i in order]


def predict_video(path: Path, engine: Engine, flow_cfg: FlowConfig, cfg: EvalConfig,
                  top_k: int = 5, progress: bool = False, *, label: str = "", video_id: str = "") -> Prediction:
    """Score one video (a file or a frame folder) with every stream and fuse; FlowError if it cannot
    be decoded. `progress`: a bar on stderr over the flow pairs, then over the views scored.
    `video_id`: its id (fusion.inputs), which seeds random clips as the evaluation's video id does
    (default: the file's name without its extension)."""
    plan = score_plan(cfg.clips, cfg.crops, cfg.clip_sampling, cfg.seed)

    def views_for(modality: str, length: int) -> list[View]:
        return plan.views(length, engine.stream(modality).clip_len, video_id or Path(path).stem)

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
        video, views = decode_for_views(path, flow_cfg, {s.name: s.clip_len for s in engine.streams}, views_for,
                                        on_flow=flow_done)
        with video:
            scores = {}
            for s in engine.streams:
                phase(f"{s.name} views", len(set(views[s.name])), "view")
                out = engine.run(s.name, video, [plan], on_batch=bar.update, views=[views[s.name]])[0]
                scores[s.name] = fuse.video_scores(out.logits, cfg.fusion_scores)
    classes = engine.streams[0].classes
    prediction = Prediction(label or shown(path), video.num_frames)  # printable even for a non-UTF-8 name
    for name, value in scores.items():
        prediction.top[name] = _top(fuse.probabilities(value, cfg.fusion_scores), classes, top_k)
    if len(scores) == 2:
        fused = fuse.fuse(scores["rgb"], scores["flow"], cfg.fusion_weights)
        prediction.top["fusion"] = _top(fuse.probabilities(fused, cfg.fusion_scores), classes, top_k)
    return prediction


def problem(err: Exception) -> str:
    """Why a video failed, as one line: a package's message, or the system's refusal (p3dbase.errors.
    refusal: its file, shortened, and what the refusal means; a name too long for the file system
    would otherwise be repeated whole)."""
    if isinstance(err, OSError) and not isinstance(err, P3DError):
        return refusal(err)
    return shown(" ".join(str(err).split()))


@dataclass
class Timeline:
    """`predict --timeline`: snippets every `stride` frames (None: the clip length), written to `out`.
    0 is refused, as by `features --stride`, not taken for the clip length."""
    out: Path
    stride: int | None = None
    force: bool = False


def prepare(checkpoints: dict[str, Path], flow_cfg: FlowConfig, cfg: EvalConfig,
            explicit_flow: Iterable[str] = ()) -> tuple[Engine, FlowConfig]:
    """The loaded streams and the flow settings to compute flow with (the checkpoints' unless given
    with --set flow.KEY, checked against them)."""
    try:
        flow_cfg.validate()
        cfg.validate()
    except ValueError as e:
        raise FusionError(f"settings: {e}") from None
    engine = load_streams({k: Path(v) for k, v in checkpoints.items()}, cfg)
    flow_cfg = checkpoint_flow_config(engine.streams, flow_cfg, explicit_flow)
    check_flow(engine.streams, config_flow_settings(flow_cfg), "the [flow] settings predict computes flow with")
    return engine, flow_cfg


def predict(videos: Sequence[Path | str], checkpoints: dict[str, Path], flow_cfg: FlowConfig, cfg: EvalConfig,
            top_k: int = 5, progress: bool | None = None, *, explicit_flow: Iterable[str] = (),
            timeline: Timeline | None = None) -> list[Prediction]:
    """Predictions for every video (files, frame folders, directories or list files: fusion.inputs),
    in order, then each input refused (a second of one id) with why; a video that cannot be read gets
    its error and the others go on. FusionError if none could be scored. `progress`: bars on stderr
    (None: when stderr is a terminal). `timeline`: also each video's scores over time (fusion.timeline)."""
    if top_k < 1:
        raise FusionError(f"--top must be >= 1, got {top_k}")
    if timeline is not None and timeline.stride is not None and timeline.stride < 1:
        raise FusionError(f"--stride must be >= 1 frames between snippet starts (leave it out for the clip "
                          f"length), got {timeline.stride}")
    if timeline is not None and timeline.out.exists() and not timeline.out.is_dir():
        raise FusionError(f"--out {shown(timeline.out)} is a file; --timeline writes into a folder")
    if timeline is not None:
        output_folder(timeline.out, "predict --timeline --out")
    inputs, refused = gather_inputs(videos)  # a second input of one id fails alone, as in `features`
    if timeline is not None:
        clashes = [p for v in inputs for p in timeline_paths(timeline.out, v.video_id) if path_is(Path.exists, p)]
        if clashes and not timeline.force:
            raise FusionError(f"{shown(clashes[0])} exists: give another --out, or --force to overwrite "
                              f"({len(clashes)} timeline file(s) would be replaced)")
    engine, flow_cfg = prepare(checkpoints, flow_cfg, cfg, explicit_flow)
    if progress is None:
        progress = sys.stderr.isatty()
    predictions = []
    for video in progress_bar(inputs, desc="predict", unit="video", leave=False,
                              disable=not progress or len(inputs) < 2):
        try:
            if timeline is not None and (why := name_problem(timeline_paths(timeline.out, video.video_id))):
                raise FusionError(f"{brief(video.path)}: its timeline {why}")
            prediction = predict_video(video.path, engine, flow_cfg, cfg, top_k, progress, video_id=video.video_id)
            if timeline is not None:
                stride = engine.streams[0].clip_len if timeline.stride is None else timeline.stride
                got = run_snippets(video.path, engine, flow_cfg, stride, batch=cfg.batch_views, thumbnails=10)
                prediction.timeline = write_timeline(timeline.out, shown(video.path), video.video_id, got,
                                                     engine.streams[0].classes, cfg, top_k=top_k)
            predictions.append(prediction)
        except (FlowError, StreamsError, FusionError, OSError) as e:
            if isinstance(e, DiskFullError):
                raise
            predictions.append(Prediction(shown(video.path), 0, error=problem(e)))
    if all(p.error for p in predictions):  # every kept input failed: the first says why
        first = predictions[0]  # its error names the file already, as a rule
        raise FusionError(f"no video could be scored: "
                          f"{first.error if first.error.startswith(first.video) else f'{first.video}: {first.error}'}")
    return predictions + [Prediction(path, 0, error=why) for path, why in refused]  # after the videos read


def format_predictions(predictions: Sequence[Prediction], as_json: bool = False) -> str:
    """A plain-text table per video (or one JSON document)."""
    if as_json:
        return json.dumps([p.to_json() for p in predictions], indent=2)
    blocks = []
    for p in predictions:
        video = p.video if not text_problem(p.video) else repr(p.video)[1:-1]  # a newline in a name: one line
        if p.error:
            blocks.append(f"{video}\n  error: {p.error}")
            continue
        names = list(p.top)
        width = max(len(c) for top in p.top.values() for c, _ in top) + 8
        lines = [f"{video} ({p.frames} frames)",
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
                *, progress: bool | None = None, explicit_flow: Iterable[str] = (),
                timeline: Timeline | None = None) -> list[Prediction]:
    """The `predict` stage: score the videos and print the top classes (JSON with `as_json`) on
    stdout; progress bars on stderr (`progress`, None: when stderr is a terminal). The CLI exits
    with status 1 when some videos failed (each listed with its error), 2 when none could be read."""
    started = time.monotonic()
    predictions = predict(videos, checkpoints, flow_cfg, cfg, top_k, progress, explicit_flow=explicit_flow,
                          timeline=timeline)
    print(format_predictions(predictions, as_json), flush=True)
    if not as_json:
        failed = sum(1 for p in predictions if p.error)
        written = sum(len(p.timeline) for p in predictions)
        print(f"\npredict: {len(predictions) - failed} video(s) scored, {failed} failed "
              f"({time.monotonic() - started:.0f} s)" + (f"; {written} timeline files in {timeline.out}" if timeline
                                                         else ""))
    return predictions
