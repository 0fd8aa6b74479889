"""curves.png of a training run: training loss and accuracy per step, validation accuracy per epoch."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from flow.atomic import atomic_write


def plot_curves(history: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Draw the metrics.jsonl records to `path` (written to a temporary name, then renamed)."""
    train = [r for r in history if r.get("kind") == "train"]
    val = [r for r in history if r.get("kind") == "val"]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="training loss")
    if val:
        loss_ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("cross-entropy")
    loss_ax.set_yscale("log")  # early validation spikes would flatten the rest
    loss_ax.legend()
    acc_ax.plot([r["epoch"] for r in train], [100 * r["acc"] for r in train], alpha=0.6, label="training clips")
    if val:
        acc_ax.plot([r["epoch"] for r in val], [100 * r["val_acc"] for r in val], "o-", label="validation clips")
        acc_ax.plot([r["epoch"] for r in val], [100 * r["val_video_acc"] for r in val], "s--",
                    label="validation videos")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_ylim(0, 100)
    acc_ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        fig.savefig(f, format="png")
