"""`features`: P3D as a feature extractor for any videos, with the paper's feature protocol.

For each video and stream: `svm_clips` (20) evenly spaced centre-crop clips, each averaged with its
mirror (flow: mirrored with x inverted), pool5 averaged over them (fusion.views.feature_views and the
evaluation's StreamRunner, as `make eval` computes its SVM features). The output holds these raw
features, the same after the protocol's signed square root + L2 (`<stream>_normalised`,
fusion.svm.normalise) and, with both streams, their normalised concatenation (`two_stream`).

The videos are files, frame folders, directories or list files (fusion.inputs; ids are the paths
relative to the directory or list given, without the extension, like the datasets' video ids), and
the flow is computed with the checkpoints' flow settings unless `--set flow.KEY` says otherwise
(fusion.predict.prepare). Each finished video is kept in `<out>.parts/`, so a killed run resumes
where it stopped (a part cut or altered, of another width or not finite, or made with other
settings, is computed again); a video that cannot be read, or whose id another input already has
(fusion.inputs.gather_inputs), is recorded with its reason (`failed_ids`, `failed_reasons`) and the
rest goes on. An existing output is refused unless `--force`, and so is a second run on an output
while one is writing it (an flock beside it, p3dbase.lock). Features over
time (one row per snippet, a folder of .npy) are `features --stride` (fusion.snippet_features).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flow.config import FlowConfig
from flow.errors import FlowError
from flow.stage import config_flow_settings
from fusion import svm
from fusion.config import EvalConfig
from fusion.decoded import decode_for_views
from fusion.engine import Engine
from fusion.errors import FusionError
from fusion.inputs import gather_inputs, input_signature
from fusion.predict import prepare, problem
from fusion.report import save_npz
from fusion.views import feature_plan
from p3dbase.atomic import DiskFullError, atomic_path, write_text
from p3dbase.digest import settings_key
from p3dbase.errors import shown
from p3dbase.lock import try_lock
from p3dbase.overwrite import output_folder, refuse_overwrite
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


def _check_output(out: Path) -> None:
    """A features file this process can write (whether one exists is asked under the output's lock)."""
    if out.suffix not in OUTPUT_SUFFIXES:
        raise FusionError(f"--out {shown(out)}: the features file must end in .npz or .parquet (or give --stride "
                          "for per-snippet features into a folder)")
    output_folder(out.parent, "--out's folder")
    if out.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise FusionError(f"--out {shown(out)}: writing Parquet needs pyarrow (pip install pyarrow); "
                              "or write .npz, which needs nothing more") from None


def video_features(path: Path, engine: Engine, flow_cfg: FlowConfig, clips: int) -> dict[str, np.ndarray]:
    """{stream: pool5 float32 [D]} of one video under the feature protocol."""
    plan = feature_plan(clips)

    def views_for(modality: str, length: int):
        return plan.views(length, engine.stream(modality).clip_len)

    video, views = decode_for_views(path, flow_cfg, {s.name: s.clip_len for s in engine.streams}, views_for)
    with video:
        outputs = {s.name: engine.run(s.name, video, [plan], views=[views[s.name]])[0] for s in engine.streams}
    return {name: out.pool5.mean(axis=0).astype(np.float32) for name, out in outputs.items()}


def _settings(engine: Engine, flow_cfg: FlowConfig, cfg: EvalConfig) -> dict:
    """What decides the features: a changed checkpoint or setting makes earlier parts stale."""
    ckpts = {s.name: {"path": shown(s.checkpoint.resolve()), "sha256": s.sha256, "arch": s.info.arch,
                      "input_convention": s.info.input_convention, "clip_len": s.clip_len, "crop": s.geometry.crop}
             for s in engine.streams}
    return {"checkpoints": ckpts, "svm_clips": cfg.svm_clips, "flow": config_flow_settings(flow_cfg),
            "protocol": f"{cfg.svm_clips} evenly spaced centre-crop clips, each averaged with its mirror; "
                        "pool5 averaged over them; *_normalised: signed square root then L2"}


def _open_parts(parts: Path, settings: dict, force: bool) -> None:
    """Called under the output's lock: no other run writes these parts meanwhile."""
    key = parts / "settings.json"
    text = json.dumps(settings, sort_keys=True)
    if parts.is_dir() and (force or not key.is_file() or key.read_text(encoding="utf-8") != text):
        # other checkpoints or settings: nothing in it can be reused (ignore_errors: a file that cannot
        # be removed stays, and its part is recomputed all the same, its settings key not being ours)
        shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True, exist_ok=True)
    if not key.is_file():
        write_text(key, text)  # whole or absent: a run killed here, or one reading it now, sees no half key


def _part_path(parts: Path, video_id: str) -> Path:
    return parts / f"{hashlib.sha1(video_id.encode()).hexdigest()[:20]}.npz"


def _read_part(part: Path, video_id: str, path: Path, widths: dict[str, int],
               key: str) -> dict[str, np.ndarray] | None:
    """A finished video's features ({stream: float [width]}), or None when absent, stale or damaged (cut or
    altered bytes, another shape, NaN) or made with other settings than `key` (settings.json is read once,
    when the parts are opened; each part carries the key it was made under, so that no row of other
    settings reaches an output whose meta says ours): then it is computed again."""
    try:
        if not part.is_file():
            return None
        with np.load(part, allow_pickle=False) as data:
            if (str(data["id"]) != video_id or str(data["signature"]) != input_signature(path)
                    or str(data["settings_key"]) != key):
                return None
            got = {n: data[n] for n in widths}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    fits = all(a.dtype.kind == "f" and a.shape == (widths[n],) and np.isfinite(a).all() for n, a in got.items())
    return got if fits else None


def extract_features(sources: Sequence[Path | str] | Path | str, checkpoints: dict[str, Path], out: Path | str,
                     flow_cfg: FlowConfig, cfg: EvalConfig, *, force: bool = False,
                     explicit_flow: Sequence[str] = (), progress: bool | None = None) -> FeatureSummary:
    """The `features` stage: features of every video of `sources` (files, frame folders,
    directories, list files: fusion.inputs) into `out` (.npz, or .parquet with pyarrow). An existing
    `out` is refused unless `force` (which also recomputes); a killed run resumes from `<out>.parts/`.
    `explicit_flow`: the `[flow]` keys given with --set (the others come from the checkpoints).
    `progress`: False draws no progress bar (--no-progress); else one over the videos."""
    out = Path(out)
    _check_output(out)
    # One run at a time on an output: a second one (other settings, say) replaced the parts' settings
    # and rows while the first still wrote, whose file then held rows of both under one meta.
    with try_lock(out.parent / f".{out.name}.lock") as holder:
        if holder:
            raise FusionError(f"--out {shown(out)} is being written by another features run (pid {holder}): wait for "
                              "it to finish, or give another --out")
        refuse_overwrite([out], force)  # under the lock: a run that just finished may have written it
        return _extract(sources, checkpoints, out, flow_cfg, cfg, force=force, explicit_flow=explicit_flow,
                        progress=progress)


def _extract(sources: Sequence[Path | str] | Path | str, checkpoints: dict[str, Path], out: Path,
             flow_cfg: FlowConfig, cfg: EvalConfig, *, force: bool, explicit_flow: Sequence[str],
             progress: bool | None) -> FeatureSummary:
    """extract_features's work, holding the output's lock."""
    started = time.monotonic()
    videos, refused = gather_inputs([sources] if isinstance(sources, (str, Path)) else sources)
    engine, flow_cfg = prepare(checkpoints, flow_cfg, cfg, explicit_flow)
    names = [s.name for s in engine.streams]
    widths = {s.name: s.widths()["pool5"] for s in engine.streams}
    settings = _settings(engine, flow_cfg, cfg)
    key = settings_key(settings)
    parts = out.with_name(out.name + ".parts")
    _open_parts(parts, settings, force)

    features: dict[str, dict[str, np.ndarray]] = {}
    failures: list[tuple[str, str]] = []
    computed = resumed = 0
    for video in progress_bar(videos, desc="features", unit="video", disable=progress is False):
        video_id, path = video.video_id, video.path
        part = _part_path(parts, video_id)
        got = _read_part(part, video_id, path, widths, key)
        if got is not None:
            features[video_id] = got
            resumed += 1
            continue
        try:
            signature = input_signature(path)  # before reading it: a video changed meanwhile is redone
            got = video_features(path, engine, flow_cfg, cfg.svm_clips)
        except (FlowError, StreamsError, OSError) as e:
            if isinstance(e, DiskFullError):
                raise
            failures.append((video_id, problem(e)))
            continue
        save_npz(part, {"id": np.array(video_id), "signature": np.array(signature), "settings_key": np.array(key),
                        **got})
        features[video_id] = got
        computed += 1
    if not features:  # every kept video failed: its reason, not a refused second input's, says why
        raise FusionError(f"no video could be read, e.g. {failures[0][0]}: {failures[0][1]}")
    failures += refused  # a second input of one id: failed as an unreadable video, listed after them
    _write(out, features, names, failures, settings)
    shutil.rmtree(parts, ignore_errors=True)  # the output is whole; what cannot be removed is only a cache
    summary = FeatureSummary(len(videos) + len(refused), computed, resumed, len(failures), time.monotonic() - started,
                             out, failures)
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
