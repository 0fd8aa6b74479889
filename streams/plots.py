"""curves.png of a training run: training loss and accuracy per step, validation accuracy per epoch,
and the learning rate the schedule gave each logged step."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from p3dbase.atomic import atomic_write
from p3dbase.plotting import drawing, log_y


def plot_curves(history: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Draw the metrics.jsonl records to `path` (written to a temporary name, then renamed)."""
    with drawing():
        fig = curves_figure(history, title)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            fig.savefig(f, format="png")


def _series(records: Sequence[dict[str, Any]], x: str, y: str, scale: float = 1.0) -> tuple[list, list]:
    """(x, y) of the records that hold both numbers: a log from another version may lack a key."""
    pairs = [(r[x], scale * r[y]) for r in records
             if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def curves_figure(history: Sequence[dict[str, Any]], title: str) -> Figure:
    """Three panels: loss (training and validation), accuracy, learning rate (the base group's).
    Also the training curves of report.html (fusion.html_report), from a run's metrics.jsonl."""
    with drawing():
        train = [r for r in history if r.get("kind") == "train"]
        val = [r for r in history if r.get("kind") == "val"]
        fig = Figure(figsize=(15, 4), dpi=100)
        FigureCanvasAgg(fig)
        loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
        loss_ax.plot(*_series(train, "step", "loss"), label="training loss")
        if val:
            loss_ax.plot(*_series(val, "step", "val_loss"), "o-", label="validation loss")
        loss_ax.set_xlabel("step")
        loss_ax.set_ylabel("cross-entropy")
        log_y(loss_ax)  # early validation spikes would flatten the rest
        loss_ax.legend()
        acc_ax.plot(*_series(train, "epoch", "acc", 100), alpha=0.6, label="training clips")
        if val:
            acc_ax.plot(*_series(val, "epoch", "val_acc", 100), "o-", label="validation clips")
            acc_ax.plot(*_series(val, "epoch", "val_video_acc", 100), "s--", label="validation videos")
        acc_ax.set_xlabel("epoch")
        acc_ax.set_ylabel("accuracy (%)")
        acc_ax.set_ylim(0, 100)
        acc_ax.legend()
        # linear: a cosine schedule ends at 0; fc and flow conv1 run at multiples of it (train.fc_lr_mult)
        lr_ax.plot(*_series(train, "step", "lr"), label="learning rate")
        lr_ax.set_xlabel("step")
        lr_ax.set_ylabel("learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        lr_ax.set_ylim(bottom=0)
        lr_ax.legend()
        fig.suptitle(title)
        fig.tight_layout()
        return fig
