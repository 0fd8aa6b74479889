"""A training run's record: metrics.jsonl (one JSON record a line), validation on the console, the
same scalars in TensorBoard (`train.tensorboard`: out_dir/tb) and curves.png. The main process writes;
every process keeps the records (`history`). A resumed run drops what was logged after its checkpoint."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from p3dbase.atomic import disk_full, is_disk_full, write_text
from streams import distributed
from streams.distributed import DistContext
from streams.errors import StreamsError
from streams.plots import plot_curves

METRICS = "metrics.jsonl"
CURVES = "curves.png"
TENSORBOARD = "tb"  # out_dir/tb: the event files of train.tensorboard
# metrics.jsonl's numbers that TensorBoard shows, as "<kind>/<name>" ("val/acc", "train/clips_per_s").
TENSORBOARD_SCALARS = {"train": ("loss", "acc", "lr", "clips_per_s", "data_wait"),
                       "val": ("val_acc", "val_video_acc", "val_loss")}


class StepMeter:
    """The (loss, correct) of the steps since the last log line, kept on the device (one sync per
    `log_every` steps), and the seconds since then, of which spent waiting for data."""

    def __init__(self) -> None:
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.restart()

    def restart(self) -> None:
        self.started, self.data_wait = time.perf_counter(), 0.0

    def take(self, step: int, ctx: DistContext, *, steps_per_epoch: int, batch_size: int,
             lr: float) -> tuple[float, dict[str, Any]]:
        """(the first step whose loss is not finite in any process, or inf; the metrics.jsonl record of
        the steps up to `step` since the last call, over every process), and restart the count.
        `batch_size`: the global batch; `lr`: the base rate now."""
        n = len(self.pending)
        losses = torch.stack([loss for loss, _ in self.pending]).double().cpu()
        correct = float(torch.stack([c for _, c in self.pending]).sum().cpu())
        bad = [i for i, v in enumerate(losses.tolist()) if not math.isfinite(v)]
        first_bad = distributed.all_reduce_min(step - n + bad[0] if bad else math.inf, ctx)
        self.pending = []
        loss_sum, correct = distributed.all_reduce_sum([float(losses.sum()), correct], ctx)
        seconds, clips = max(time.perf_counter() - self.started, 1e-9), n * batch_size
        record = {"kind": "train", "step": step, "epoch": round(step / steps_per_epoch, 4),
                  "loss": loss_sum / (n * ctx.world_size), "acc": correct / clips, "lr": lr,
                  "clips_per_s": clips / seconds, "data_wait": self.data_wait / seconds}
        self.restart()
        return first_bad, record


class MetricsLogger:
    """metrics.jsonl, the console and TensorBoard of one run (see the module doc); `is_main`: this
    process writes."""

    def __init__(self, out_dir: Path, is_main: bool, modality: str, arch: str, tensorboard: bool = False):
        self.out_dir, self.path, self.is_main, self.modality = out_dir, out_dir / METRICS, is_main, modality
        self.title = f"{modality} stream ({arch})"  # of curves.png
        self.history: list[dict[str, Any]] = []
        self.writer_class = _summary_writer() if tensorboard else None  # checked before training starts
        self.writer: Any = None

    def start_fresh(self) -> None:
        if self.is_main:
            self.path.unlink(missing_ok=True)
        self._open_writer(purge_step=0)

    def resume_at(self, step: int) -> None:
        """Keep the records up to `step` (a killed run may have logged past its last checkpoint)."""
        self.history = []
        if self.path.is_file():
            for line in self.path.read_bytes().splitlines():  # bytes: a damaged line is one line dropped
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
                    continue  # a line cut short by a kill, or damaged bytes
                at = record.get("step") if isinstance(record, dict) else None
                # a record without a whole-number step (edited, another tool's) is no record of this run
                if isinstance(at, int) and not isinstance(at, bool) and at <= step:
                    self.history.append(record)
        if self.is_main:
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.history))
        self._open_writer(purge_step=step + 1)

    def _open_writer(self, purge_step: int) -> None:
        """TensorBoard hides the events of earlier attempts from `purge_step` on, as metrics.jsonl drops them."""
        if self.writer_class is not None and self.is_main:
            self.writer = self.writer_class(str(self.out_dir / TENSORBOARD), purge_step=purge_step)

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.path, "a") as f:  # appended; a resume drops the lines after its checkpoint
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            if is_disk_full(e):
                raise disk_full(self.path, e) from e
            raise
        if record["kind"] == "val":
            tqdm.write(f"{self.modality} epoch {record['epoch']}: val clip accuracy {100 * record['val_acc']:.1f}%, "
                       f"video {100 * record['val_video_acc']:.1f}%, loss {record['val_loss']:.3f}")
        if self.writer is not None:
            for key, value in record.items():
                if key in TENSORBOARD_SCALARS[record["kind"]]:
                    self.writer.add_scalar(f"{record['kind']}/{key.removeprefix('val_')}", value, record["step"])

    def plot(self) -> None:
        plot_curves(self.history, self.out_dir / CURVES, self.title)
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch raises it when the tensorboard package is absent
        raise StreamsError(f"train.tensorboard = true needs the tensorboard package ({e}): pip install "
                           "'p3d-two-stream[tb]' (or pip install tensorboard), or set train.tensorboard = "
                           "false") from None
    except Exception as e:  # installed but broken: protobuf's "Descriptors cannot be created directly" TypeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StreamsError(f"train.tensorboard = true: the tensorboard package fails to import "
                           f"({type(e).__name__}: {first}): repair it (pip install -U tensorboard protobuf), or set "
                           "train.tensorboard = false") from None
    return SummaryWriter
