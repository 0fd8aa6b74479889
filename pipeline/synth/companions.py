"""Small generated stand-ins for the paper's transfer benchmarks, in the real data sets' layouts.

None of ASLAN, ActivityNet, YUPENN or Dynamic Scene can be downloaded here, so `make transfer`
exercises every protocol on clips drawn by the SynthActions renderer (pipeline.synth.render) with
classes the SynthActions streams never saw (other colours, zooms), written exactly as the real sets
lie on disk so that the real readers read them:

- `aslan/`: ASLAN's layout. `ASLAN_AVI/0001.avi ...` and `Views/View2.mat` (scipy.io.savemat)
  holding `action_splits_pairs` [pairs, 5, 10]. 10 splits of 3 action classes each, no class in two
  splits; per split every same-class pair (9) and as many not-same pairs. Every 5th clip is grey
  (written as a one-channel video) and every 6th has 10 frames, shorter than a 16-frame clip: both
  occur in ASLAN.
- `activitynet/`: ActivityNet v1.3's JSON (`activity_net.json`, database of `training`,
  `validation` and unlabelled `testing` videos) and `videos/v_<id>.avi`. The videos are untrimmed:
  two 16-frame segments, of two classes in about half of them (multi-label), one class twice in
  the others.
- `scenes/<Class>/<video>.avi`: class folders (YUPENN / Dynamic Scene), a static camera and large
  objects filling the view.

Sizes keep `make transfer` within a few minutes on 2 CPU cores. Each set is written to a hidden
temporary folder and renamed when complete, so a killed run redoes at most the set it was writing;
the next run deletes the temporary folder it left.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from p3dbase.atomic import TEMP_MARKER, atomic_path, remove_quietly, write_text
from p3dbase.lock import try_lock
from p3dbase.progress import progress_bar
from pipeline.errors import PipelineError
from pipeline.synth.config import SynthConfig
from pipeline.synth.design import APPEARANCES, MOTIONS
from pipeline.synth.generate import check_written_video
from pipeline.synth.render import render_clip

SETS = ("aslan", "activitynet", "scenes")
FRAME_SIZE = 64  # px, square, as SynthActions
MARKER = "companions.json"  # the settings a set was made with; present only in a complete set
LOCK = ".companions.lock"  # held while writing: one run at a time, and its leftovers are known stale
ASLAN_SPLITS, ASLAN_CLASSES_PER_SPLIT, ASLAN_CLIPS_PER_CLASS = 10, 3, 3
ASLAN_FRAMES, ASLAN_SHORT_FRAMES = 20, 10
ANET_CLASSES = ["RedZoomIn", "YellowUp", "CyanRotate", "MagentaOscillate", "GreenZoomOut", "BlueDown"]
ANET_VIDEOS = {"training": 30, "validation": 18, "testing": 4}
ANET_SEGMENT = 16
SCENE_CLASSES = ["YellowZoomIn", "CyanZoomOut", "MagentaRotate", "RedOscillate", "GreenUp", "BlueZoomIn"]
SCENE_VIDEOS, SCENE_FRAMES = 5, 20


@dataclass
class CompanionsSummary:
    root: Path
    written: list[str]
    kept: list[str]
    seconds: float

    def __str__(self) -> str:
        return (f"companions: {', '.join(SETS)} at {self.root} ({len(self.written)} written, "
                f"{len(self.kept)} already complete) in {self.seconds:.1f} s")


def _renderer(seed: int) -> SynthConfig:
    """Every appearance x every motion: class names such as "YellowZoomIn" index into this grid."""
    return SynthConfig(seed=seed, appearances=list(APPEARANCES), motions=list(MOTIONS), size=FRAME_SIZE)


def _clip(cfg: SynthConfig, name: str, group: int, clip: int, frames: int) -> np.ndarray:
    names = cfg.class_names()
    return render_clip(dataclasses.replace(cfg, frames=frames), names.index(name), group, clip).frames


def write_video(path: Path, frames: np.ndarray, fps: float = 25.0, grey: bool = False) -> None:
    """FFV1 (lossless) AVI; `grey` writes one channel, which decoders hand back as three equal ones.
    Read back before it gets its name (OpenCV's writer fails silently on a full disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    with atomic_path(path, keep_suffix=True) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"FFV1"), fps, (width, height), isColor=not grey)
        if not writer.isOpened():
            raise PipelineError(f"{path}: OpenCV {cv2.__version__} cannot write FFV1 video")
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if grey else frame)
        writer.release()
        check_written_video(tmp, path, len(frames))


def _aslan(folder: Path, cfg: SynthConfig, rng: np.random.Generator) -> int:
    from scipy.io import savemat

    names = cfg.class_names()
    chosen = rng.permutation(len(names))[:ASLAN_SPLITS * ASLAN_CLASSES_PER_SPLIT]
    pairs = np.zeros((2 * ASLAN_CLASSES_PER_SPLIT * (ASLAN_CLIPS_PER_CLASS * (ASLAN_CLIPS_PER_CLASS - 1) // 2),
                      5, ASLAN_SPLITS), dtype=np.int32)
    clip_id = 0
    for split in range(ASLAN_SPLITS):
        ids: dict[int, list[int]] = {}  # action label -> its clip ids
        for c in chosen[split * ASLAN_CLASSES_PER_SPLIT:(split + 1) * ASLAN_CLASSES_PER_SPLIT]:
            label = int(c) + 1
            for k in range(1, ASLAN_CLIPS_PER_CLASS + 1):
                clip_id += 1
                frames = ASLAN_SHORT_FRAMES if clip_id % 6 == 0 else ASLAN_FRAMES
                write_video(folder / "ASLAN_AVI" / f"{clip_id:04d}.avi", _clip(cfg, names[c], k, 1, frames),
                            grey=clip_id % 5 == 0)
                ids.setdefault(label, []).append(clip_id)
        same = [(a, b, 1, lab, lab) for lab, clips in ids.items()
                for i, a in enumerate(clips) for b in clips[i + 1:]]
        different = [(a, b, 0, la, lb) for la in ids for lb in ids if la < lb for a in ids[la] for b in ids[lb]]
        picked = rng.choice(len(different), size=len(same), replace=False)
        rows = same + [different[i] for i in sorted(picked)]
        pairs[:, :, split] = np.array(rows)[rng.permutation(len(rows))]
    (folder / "Views").mkdir(parents=True)
    savemat(str(folder / "Views" / "View2.mat"), {"action_splits_pairs": pairs})
    return clip_id


def _activitynet(folder: Path, cfg: SynthConfig, rng: np.random.Generator) -> int:
    database = {}
    count = 0
    for subset, videos in ANET_VIDEOS.items():
        for _ in range(videos):
            count += 1
            video = f"synth{count:05d}"
            first = ANET_CLASSES[rng.integers(len(ANET_CLASSES))]
            second = ANET_CLASSES[rng.integers(len(ANET_CLASSES))] if rng.uniform() < 0.5 else first
            segments = [_clip(cfg, name, 100 + count, k, ANET_SEGMENT) for k, name in enumerate((first, second), 1)]
            write_video(folder / "videos" / f"v_{video}.avi", np.concatenate(segments))
            seconds = ANET_SEGMENT / 25.0
            annotations = [{"segment": [k * seconds, (k + 1) * seconds], "label": name}
                           for k, name in enumerate((first, second))]
            database[video] = {"subset": subset, "duration": 2 * seconds, "url": "", "resolution": "64x64",
                               "annotations": [] if subset == "testing" else annotations}
    taxonomy = [{"nodeName": name, "nodeId": i, "parentName": "Root", "parentId": 0}
                for i, name in enumerate(ANET_CLASSES, 1)]
    write_text(folder / "activity_net.json",
               json.dumps({"version": "VERSION 1.3", "taxonomy": taxonomy, "database": database}, indent=1))
    return count


def _scenes(folder: Path, cfg: SynthConfig, rng: np.random.Generator) -> int:
    scene_cfg = dataclasses.replace(cfg, camera_pan=0.0, object_size=[0.6, 0.9], occluder=0.0)
    count = 0
    for name in SCENE_CLASSES:
        for k in range(1, SCENE_VIDEOS + 1):
            write_video(folder / name / f"{name}_{k:02d}.avi", _clip(scene_cfg, name, 200 + k, 1, SCENE_FRAMES))
            count += 1
    return count


WRITERS = {"aslan": _aslan, "activitynet": _activitynet, "scenes": _scenes}


def generate_companions(root: Path | str, seed: int = 0) -> CompanionsSummary:
    """Write the sets that are not complete under `root` (aslan/, activitynet/, scenes/)."""
    started = time.perf_counter()
    root = Path(root)
    cfg = _renderer(seed + 1)  # not SynthActions' seed: other objects and scenes than the streams trained on
    settings = {"seed": seed, "size": FRAME_SIZE,
                "aslan": [ASLAN_SPLITS, ASLAN_CLASSES_PER_SPLIT, ASLAN_CLIPS_PER_CLASS, ASLAN_FRAMES,
                          ASLAN_SHORT_FRAMES],
                "activitynet": [ANET_VIDEOS, ANET_SEGMENT], "scenes": [SCENE_VIDEOS, SCENE_FRAMES]}
    written, kept = [], []
    root.mkdir(parents=True, exist_ok=True)
    with try_lock(root / LOCK) as holder:
        if holder is not None:
            raise PipelineError(f"{root}: the companions are being written by process {holder}; wait for it, "
                                "or stop it and re-run")
        # Holding the lock, nobody else writes here: what a killed run left is stale.
        for stale in root.glob(f".*{TEMP_MARKER}*"):
            remove_quietly(stale)
        for k, name in enumerate(progress_bar(SETS, desc="companions", unit="set", leave=False)):
            folder = root / name
            marker = folder / MARKER
            if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == settings:
                kept.append(name)
                continue
            with atomic_path(folder) as tmp:
                tmp.mkdir(parents=True)
                WRITERS[name](tmp, cfg, np.random.default_rng([seed, k]))
                (tmp / MARKER).write_text(json.dumps(settings), encoding="utf-8")
            written.append(name)
    summary = CompanionsSummary(root, written, kept, time.perf_counter() - started)
    print(summary, flush=True)
    return summary
