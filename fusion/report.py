"""The report of `make eval`: results table (CSV + Markdown), per-class accuracy, confusion PNG, scores."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fusion import metrics
from fusion.metrics import Labels

COLUMNS = ["method", "clip_hit@1", "video_hit@1", "video_hit@5", "mean_class_acc", "mAP", "videos",
           "excluded", "protocol", "details"]
PERCENT = ["clip_hit@1", "video_hit@1", "video_hit@5", "mean_class_acc", "mAP"]


@dataclass
class MethodScores:
    """The video scores one method gives the evaluated test videos."""
    method: str  # "rgb", "flow", "fusion", "svm_rgb", "svm_flow", "svm_two_stream"
    scores: np.ndarray  # float [N, C], one row per evaluated test video
    details: str  # how the scores were made (views, weights, C), shown in the table
    view_logits: np.ndarray | None = None  # float [N, V, C] per-clip logits of a network stream


def results_row(m: MethodScores, labels: Labels, protocol: str, excluded: int) -> dict:
    """One table row; metrics in percent. Clip hit@1 only for network streams (each view on its own)."""
    clip = np.nan
    if m.view_logits is not None:
        n, v, c = m.view_logits.shape
        clip = 100 * metrics.hit_at_k(m.view_logits.reshape(n * v, c), [lab for lab in labels for _ in range(v)], 1)
    return {
        "method": m.method,
        "clip_hit@1": clip,
        "video_hit@1": 100 * metrics.hit_at_k(m.scores, labels, 1),
        "video_hit@5": 100 * metrics.hit_at_k(m.scores, labels, 5),
        "mean_class_acc": 100 * metrics.mean_class_accuracy(m.scores, labels),
        "mAP": 100 * metrics.mean_average_precision(m.scores, labels),
        "videos": len(labels),
        "excluded": excluded,
        "protocol": protocol,
        "details": m.details,
    }


def results_table(methods: Sequence[MethodScores], labels: Labels, protocol: str, excluded: int) -> pd.DataFrame:
    return pd.DataFrame([results_row(m, labels, protocol, excluded) for m in methods], columns=COLUMNS)


def per_class_table(methods: Sequence[MethodScores], labels: Labels, classes: Sequence[str]) -> pd.DataFrame:
    """One row per class: its number of test videos and each method's video hit@1 on them (percent)."""
    truth = metrics.label_matrix(labels, len(classes))
    table = pd.DataFrame({"class": list(classes), "videos": truth.sum(axis=0)})
    for m in methods:
        hits = metrics.hits_at_k(m.scores, labels, 1)
        table[m.method] = 100 * metrics.per_class_accuracy(hits, labels, len(classes))
    return table


def average_tables(tables: Sequence[pd.DataFrame], protocol: str) -> pd.DataFrame:
    """The multi-split protocol (UCF101/HMDB51 three splits): metrics averaged per method.

    `videos` and `excluded` are summed over the splits; `splits` says how many were averaged.
    """
    if not tables:
        raise ValueError("average_tables needs at least one table")
    joined = pd.concat(tables, ignore_index=True)
    order = list(dict.fromkeys(joined["method"]))
    grouped = joined.groupby("method", sort=False)
    out = grouped[PERCENT].mean()
    out[["videos", "excluded"]] = grouped[["videos", "excluded"]].sum()
    out["splits"] = grouped.size()
    out["protocol"] = protocol
    out["details"] = grouped["details"].agg(lambda d: " | ".join(dict.fromkeys(d)))
    return out.loc[order].reset_index()[COLUMNS + ["splits"]]


def to_markdown(table: pd.DataFrame, title: str, notes: Sequence[str] = ()) -> str:
    """A GitHub Markdown table (metrics in percent, 2 decimals; '-' where a metric is not defined)."""
    header = list(table.columns)
    lines = [f"# {title}", ""]
    lines += [f"{n}" for n in notes] + ([""] if notes else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for _, row in table.iterrows():
        cells = []
        for name in header:
            value = row[name]
            if name in PERCENT:
                cells.append("-" if pd.isna(value) else f"{value:.2f}")
            else:
                cells.append(str(value).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(table: pd.DataFrame, out_dir: Path, title: str, notes: Sequence[str] = ()) -> None:
    """results.csv and results.md in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "results.csv", table.to_csv(index=False, float_format="%.4f"))
    write_text(out_dir / "results.md", to_markdown(table, title, notes))


def write_confusion_png(path: Path, methods: Sequence[MethodScores], labels: Labels,
                        classes: Sequence[str]) -> None:
    """One row-normalised confusion matrix per method, side by side (rows: true class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(methods)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n + 1.6, 4.6), squeeze=False, sharey=True)
    for k, (ax, m) in enumerate(zip(axes[0], methods)):
        counts = metrics.confusion_matrix(m.scores, labels, len(classes)).astype(float)
        rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(rates, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
        acc = 100 * metrics.hit_at_k(m.scores, labels, 1)
        ax.set_title(f"{m.method}: video hit@1 {acc:.1f}%", fontsize=9)
        ax.set_xlabel("predicted")
        if k == 0:
            ax.set_ylabel("true")
        if len(classes) <= 30:
            ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=6)
            ax.set_yticks(range(len(classes)), classes, fontsize=6)
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.02)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def write_scores(out_dir: Path, video_ids: Sequence[str], labels: Labels, classes: Sequence[str],
                 methods: Sequence[MethodScores]) -> None:
    """Raw per-video scores for offline fusion: scores.npz (everything) and scores.csv (video scores).

    scores.npz keys: video_ids, classes, labels (int [N, L], -1 padded), one [N, C] array per method
    and `views_<stream>` [N, V, C] with the per-clip logits of each network stream.
    """
    arrays = {"video_ids": np.array(video_ids, dtype=str), "classes": np.array(classes, dtype=str),
              "labels": pad_labels(labels)}
    for m in methods:
        arrays[m.method] = m.scores
        if m.view_logits is not None:
            arrays[f"views_{m.method}"] = m.view_logits
    save_npz(out_dir / "scores.npz", arrays)

    frames = []
    for m in methods:
        frame = pd.DataFrame(m.scores, columns=list(classes))
        frame.insert(0, "predicted", [classes[i] for i in metrics.predictions(m.scores)])
        frame.insert(0, "method", m.method)
        frame.insert(0, "labels", [";".join(classes[i] for i in lab) for lab in labels])
        frame.insert(0, "video_id", list(video_ids))
        frames.append(frame)
    write_text(out_dir / "scores.csv", pd.concat(frames, ignore_index=True).to_csv(index=False, float_format="%.6g"))


def pad_labels(labels: Labels) -> np.ndarray:
    """int [N, L]: each row's labels, padded with -1 to the longest row (the .npz form of labels)."""
    width = max((len(lab) for lab in labels), default=1)
    out = np.full((len(labels), width), -1, dtype=np.int64)
    for row, lab in enumerate(labels):
        out[row, :len(lab)] = lab
    return out


def unpad_labels(padded: np.ndarray) -> list[tuple[int, ...]]:
    return [tuple(int(c) for c in row if c >= 0) for row in padded]


def write_excluded(path: Path, excluded: dict[str, str]) -> None:
    """excluded.csv: the test videos left out of every metric, and why."""
    frame = pd.DataFrame({"video_id": list(excluded), "reason": list(excluded.values())}, columns=["video_id", "reason"])
    write_text(path, frame.to_csv(index=False))


def write_text(path: Path, text: str) -> None:
    """Write under a temporary name, then rename: a half-written file is never taken for done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
