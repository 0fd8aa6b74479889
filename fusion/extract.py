"""`features`: P3D as a feature extractor for any videos, with the paper's feature protocol.

For each video and stream: `svm_clips` (20) evenly spaced centre-crop clips, each averaged with its
mirror (flow: mirrored with x inverted), pool5 averaged over them (fusion.views.feature_views and the
evaluation's StreamRunner, as `make eval` computes its SVM features). The output holds these raw
features, the same after the protocol's signed square root + L2 (`<stream>_normalised`,
fusion.svm.normalise) and, with both streams, their normalised concatenation (`two_stream`).

The videos are a directory (every video file under it, recursively; ids are the paths relative to
it without the extension, like the datasets' video ids) or a text file listing one path per line.
Each finished video is kept in `<out>.parts/`, so a killed run resumes where it stopped; a video that
cannot be read is recorded with its reason (`failed_ids`, `failed_reasons`) and the rest goes on.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from flow.config import FlowConfig
from flow.errors import FlowError
from flow.stage import config_flow_settings
from flow.video import VIDEO_EXTENSIONS
from fusion import svm
from fusion.config import EvalConfig
from fusion.decoded import decode_for_views
from fusion.errors import FusionError
from fusion.predict import Stream, check_flow, load_streams
from fusion.report import save_npz
from fusion.views import feature_views
from p3dbase.atomic import atomic_path
from p3dbase.errors import shown
from p3dbase.progress import progress_bar
from streams.errors import StreamsError

OUTPUT_SUFFIXES = (".npz", ".parquet")


@dataclass
class FeatureSummary:
    videos: int
    computed: int
    resumed: int
    failed: int
    seconds: float
    out: Path
    failures: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"features: {self.videos} videos: {self.computed} computed, {self.resumed} resumed from "
                 f"{self.out.name}.parts, {self.failed} failed ({self.seconds:.0f} s) -> {self.out}"]
        lines += [f"features: failed {video_id}: {error}" for video_id, error in self.failures[:10]]
        if len(self.failures) > 10:
            lines.append(f"features: ... and {len(self.failures) - 10} more failures (failed_ids in the output)")
        return "\n".join(lines)


def list_videos(source: Path | str) -> list[tuple[str, Path]]:
    """(video_id, path) of the videos of a directory (recursively) or of a list file, sorted by id."""
    source = Path(source)
    if source.is_dir():
        # shown(): a file name that is not UTF-8 keeps its path but gets a printable id (\xNN)
        found = [(shown(p.relative_to(source).with_suffix("").as_posix()), p) for p in source.rglob("*")
                 if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
                 and not any(part.startswith(".") for part in p.relative_to(source).parts)]
        if not found:
            raise FusionError(f"{source}: no video files ({', '.join(VIDEO_EXTENSIONS)}) under this directory")
    elif source.is_file():
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise FusionError(f"{source}: cannot read the list of videos: {e}") from None
        found = []
        for line in (line.strip() for line in lines):
            if not line or line.startswith("#"):
                continue
            path = Path(line) if Path(line).is_absolute() else source.parent / line
            found.append((Path(line).with_suffix("").as_posix().removeprefix("./"), path))
        if not found:
            raise FusionError(f"{source}: the list of videos is empty")
    else:
        raise FusionError(f"{source}: no such directory or list file")
    ids: dict[str, Path] = {}
    for video_id, path in found:
        if video_id in ids:
            raise FusionError(f"{source}: {ids[video_id]} and {path} would both have the id {video_id!r}")
        ids[video_id] = path
    return sorted(ids.items())


def _check_output(out: Path) -> None:
    if out.suffix not in OUTPUT_SUFFIXES:
        raise FusionError(f"--out {out}: the features file must end in .npz or .parquet")
    if out.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise FusionError(f"--out {out}: writing Parquet needs pyarrow (pip install pyarrow); "
                              "or write .npz, which needs nothing more") from None


def video_features(path: Path, streams: Sequence[Stream], flow_cfg: FlowConfig, clips: int) -> dict[str, np.ndarray]:
    """{stream: pool5 float32 [D]} of one video under the feature protocol."""
    def views_for(modality: str, length: int):
        return feature_views(length, next(s.clip_len for s in streams if s.name == modality), clips)

    video, views = decode_for_views(path, flow_cfg, {s.name: s.clip_len for s in streams}, views_for)
    with video:
        return {s.name: s.runner.run(video, views[s.name])[1].mean(axis=0).astype(np.float32) for s in streams}


def _settings(streams: Sequence[Stream], flow_cfg: FlowConfig, cfg: EvalConfig) -> dict:
    """What decides the features: a changed checkpoint or setting makes earlier parts stale."""
    ckpts = {}
    for s in streams:
        stat = s.checkpoint.path.stat()
        ckpts[s.name] = {"path": str(s.checkpoint.path.resolve()), "size": stat.st_size,
                         "mtime_ns": stat.st_mtime_ns, "arch": s.checkpoint.arch,
                         "input_convention": s.checkpoint.input_convention,
                         "clip_len": s.clip_len, "crop": s.runner.geometry.crop}
    return {"checkpoints": ckpts, "svm_clips": cfg.svm_clips, "flow": asdict(flow_cfg),
            "protocol": f"{cfg.svm_clips} evenly spaced centre-crop clips, each averaged with its mirror; "
                        "pool5 averaged over them; *_normalised: signed square root then L2"}


def _open_parts(parts: Path, settings: dict, force: bool) -> None:
    key = parts / "settings.json"
    text = json.dumps(settings, sort_keys=True)
    if parts.is_dir() and (force or not key.is_file() or key.read_text(encoding="utf-8") != text):
        shutil.rmtree(parts)  # other checkpoints or settings: nothing in it can be reused
    parts.mkdir(parents=True, exist_ok=True)
    if not key.is_file():
        key.write_text(text, encoding="utf-8")


def _part_path(parts: Path, video_id: str) -> Path:
    return parts / f"{hashlib.sha1(video_id.encode()).hexdigest()[:20]}.npz"


def _signature(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _read_part(part: Path, video_id: str, path: Path, names: Sequence[str]) -> dict[str, np.ndarray] | None:
    if not part.is_file():
        return None
    try:
        with np.load(part, allow_pickle=False) as data:
            if str(data["id"]) != video_id or str(data["signature"]) != _signature(path):
                return None
            return {n: data[n] for n in names}
    except (OSError, ValueError, KeyError, EOFError):
        return None


def extract_features(source: Path | str, checkpoints: dict[str, Path], out: Path | str, flow_cfg: FlowConfig,
                     cfg: EvalConfig, *, force: bool = False) -> FeatureSummary:
    """The `features` stage: features of every video of `source` (a directory or a list file) into
    `out` (.npz, or .parquet with pyarrow). Resumes from `<out>.parts/` unless `force`."""
    started = time.monotonic()
    out = Path(out)
    _check_output(out)
    try:
        flow_cfg.validate()
        cfg.validate()
    except ValueError as e:
        raise FusionError(f"settings: {e}") from None
    videos = list_videos(source)
    streams = load_streams({k: Path(v) for k, v in checkpoints.items()}, cfg)
    check_flow(streams, config_flow_settings(flow_cfg), "the [flow] settings features computes flow with")
    names = [s.name for s in streams]
    settings = _settings(streams, flow_cfg, cfg)
    parts = out.with_name(out.name + ".parts")
    _open_parts(parts, settings, force)

    features: dict[str, dict[str, np.ndarray]] = {}
    failures: list[tuple[str, str]] = []
    computed = resumed = 0
    for video_id, path in progress_bar(videos, desc="features", unit="video"):
        part = _part_path(parts, video_id)
        got = _read_part(part, video_id, path, names) if path.is_file() else None
        if got is not None:
            features[video_id] = got
            resumed += 1
            continue
        try:
            got = video_features(path, streams, flow_cfg, cfg.svm_clips)
        except (FlowError, StreamsError, OSError) as e:
            failures.append((video_id, " ".join(str(e).split())))
            continue
        save_npz(part, {"id": np.array(video_id), "signature": np.array(_signature(path)), **got})
        features[video_id] = got
        computed += 1
    if not features:
        raise FusionError(f"no video could be read, e.g. {failures[0][0]}: {failures[0][1]}")
    _write(out, features, names, failures, settings)
    shutil.rmtree(parts)
    summary = FeatureSummary(len(videos), computed, resumed, len(failures), time.monotonic() - started, out, failures)
    print(summary, flush=True)
    return summary


def _columns(features: dict[str, dict[str, np.ndarray]], names: Sequence[str]) -> dict[str, np.ndarray]:
    ids = sorted(features)
    columns = {}
    for name in names:
        raw = np.stack([features[v][name] for v in ids]).astype(np.float32)
        columns[name] = raw
        columns[f"{name}_normalised"] = svm.normalise(raw).astype(np.float32)
    if len(names) == 2:
        columns["two_stream"] = svm.two_stream(columns["rgb"], columns["flow"]).astype(np.float32)
    return columns


def _write(out: Path, features: dict[str, dict[str, np.ndarray]], names: Sequence[str],
           failures: Sequence[tuple[str, str]], settings: dict) -> None:
    ids = sorted(features)
    columns = _columns(features, names)
    meta = json.dumps({**settings, "failed": dict(failures)})
    if out.suffix == ".npz":
        save_npz(out, {"ids": np.array(ids), **columns,
                       "failed_ids": np.array([v for v, _ in failures], dtype=str),
                       "failed_reasons": np.array([r for _, r in failures], dtype=str),
                       "meta": np.array(meta)})
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = [pa.array(ids)] + [pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), v.shape[1])
                                for v in columns.values()]
    table = pa.Table.from_arrays(arrays, names=["video_id", *columns]).replace_schema_metadata(
        {"p3d_two_stream": meta})
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
