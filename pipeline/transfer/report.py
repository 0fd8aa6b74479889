"""The transfer report: results.csv (ours), results.md (ours, and the paper's numbers beside them),
results.png (a bar chart per benchmark). Every file is written atomically (p3dbase.atomic)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from p3dbase.atomic import atomic_path, write_text

COLUMNS = ["benchmark", "protocol", "stream", "accuracy", "se", "auc", "hit@3", "mAP", "videos", "excluded",
           "selected", "details"]
METRICS = ["accuracy", "se", "auc", "hit@3", "mAP"]
STREAMS = ("rgb", "flow", "two_stream")

# The paper's figures (Qiu, Yao, Mei, ICCV 2017, Tables 3-6; ../shared/REFERENCE.md "Transfer
# benchmarks"): benchmark -> metric -> (P3D, C3D, ResNet-152), percent. P3D and ResNet-152 are
# pool5 of RGB nets trained on Sports-1M with linear SVMs; C3D is the C3D paper's figure.
PAPER_METHODS = ("P3D", "C3D", "ResNet-152")
PAPER: dict[str, dict[str, tuple[float, float, float]]] = {
    "ucf101": {"accuracy": (88.6, 82.3, 83.5)},
    "activitynet": {"accuracy": (75.12, 65.80, 71.43), "hit@3": (87.71, 81.16, 86.45), "mAP": (78.86, 67.68, 76.56)},
    "aslan": {"accuracy": (80.8, 78.3, 70.4), "auc": (87.9, 86.5, 77.4)},
    "yupenn": {"accuracy": (99.5, 98.1, 99.2)},
    "dynamic_scene": {"accuracy": (94.6, 87.7, 93.6)},
}
PAPER_TITLES = {"ucf101": "UCF101", "activitynet": "ActivityNet v1.3", "aslan": "ASLAN", "yupenn": "YUPENN",
                "dynamic_scene": "Dynamic Scene"}


def _cell(value, name: str) -> str:
    if name in METRICS:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"
    return str(value).replace("|", "\\|")


def markdown_table(table: pd.DataFrame, columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_cell(row[c], c) for c in columns) + " |")
    return "\n".join(lines)


def comparison(table: pd.DataFrame, paper_of: dict[str, str]) -> pd.DataFrame:
    """One row per benchmark x paper metric: ours per stream beside the paper's three methods."""
    rows = []
    for benchmark, paper in paper_of.items():
        ours = table[table["benchmark"] == benchmark]
        if ours.empty or paper not in PAPER:
            continue
        for metric, published in PAPER[paper].items():
            row = {"benchmark": benchmark, "paper benchmark": PAPER_TITLES[paper], "metric": metric}
            for stream in STREAMS:
                got = ours.loc[ours["stream"] == stream, metric]
                row[f"ours {stream}"] = float(got.iloc[0]) if len(got) else float("nan")
            row.update(dict(zip(PAPER_METHODS, published, strict=False)))
            rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame, compared: pd.DataFrame, notes: Sequence[str]) -> str:
    shown = ["benchmark", "protocol", "stream", "accuracy", "se", "auc", "hit@3", "mAP", "videos", "excluded"]
    parts = ["# Transfer: one frozen representation, linear classifiers, every benchmark", "",
             *notes, "", markdown_table(table, shown), ""]
    if not compared.empty:
        columns = list(compared.columns)
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        for _, row in compared.iterrows():
            lines.append("| " + " | ".join(str(row[c]) if c in ("benchmark", "paper benchmark", "metric")
                                          else _cell(row[c], "accuracy") for c in columns) + " |")
        parts += ["## Beside the paper", "",
                  "The paper's P3D, C3D and ResNet-152 figures (percent) for the benchmark each of ours stands for.",
                  "", *lines, ""]
    parts += ["## How each row was fitted", ""]
    parts += [f"- {r.benchmark} / {r.stream}: {r.selected}" + (f"; {r.details}" if r.details else "")
              for r in table.itertuples()]
    return "\n".join(parts) + "\n"


def write_chart(path: Path, compared: pd.DataFrame) -> None:
    """Bars per benchmark (its main metric, accuracy): ours per stream, then the paper's methods."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = compared[compared["metric"] == "accuracy"] if not compared.empty else compared
    series = [c for c in (*(f"ours {s}" for s in STREAMS), *PAPER_METHODS) if c in main.columns]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.8 * max(len(main), 1) + 3.5), 4.0))
    if main.empty:
        ax.text(0.5, 0.5, "no benchmark stands for one of the paper's", ha="center", va="center")
        ax.set_axis_off()
    else:
        width = 0.8 / len(series)
        x = np.arange(len(main))
        for k, name in enumerate(series):
            values = main[name].to_numpy(dtype=float)
            ax.bar(x + (k - (len(series) - 1) / 2) * width, np.nan_to_num(values), width, label=name,
                   hatch="//" if name in PAPER_METHODS else None, alpha=0.9)
        ax.set_xticks(x, [f"{b}\n({p})" for b, p in zip(main["benchmark"], main["paper benchmark"], strict=False)])
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_title("Ours (hatched: the paper's published figures)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, keep_suffix=True) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def write_report(table: pd.DataFrame, out_dir: Path, paper_of: dict[str, str], notes: Sequence[str]) -> str:
    """results.csv, results.md and results.png under `out_dir`; returns the Markdown."""
    compared = comparison(table, paper_of)
    text = to_markdown(table, compared, notes)
    write_text(out_dir / "results.csv", table[COLUMNS].to_csv(index=False, float_format="%.2f"))
    write_text(out_dir / "results.md", text)
    write_chart(out_dir / "results.png", compared)
    return text
