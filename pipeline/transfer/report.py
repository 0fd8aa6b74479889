"""The transfer report: results.csv (ours), results.md (ours, and the paper's numbers beside them),
results.png (a bar chart per benchmark, with chance and a caveat on stand-in data), excluded.csv,
report_inputs.json and report.html (one self-contained page, rebuilt from the files by `python -m
pipeline report`). The files are written into a hidden folder and replace the last report's together
(fusion.report.staged_report): a report is never a mix of two runs."""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fusion.errors import FusionError
from fusion.report import INPUTS, check_inputs, damaged, markdown_table, read_table, relist, staged_report
from fusion.transfer_stage import COLUMNS, EXCLUDED_COLUMNS  # results.csv's columns, in the order of the rows
from p3dbase.atomic import atomic_path, write_text
from p3dbase.errors import read_regular
from p3dbase.errors import shown as printable
from p3dbase.plotting import drawing, pyplot
from pipeline.errors import PipelineError

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


def _cell(value, name: str) -> object:
    if name in METRICS:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"
    return value


def _table(table: pd.DataFrame, columns: Sequence[str]) -> str:
    return "\n".join(markdown_table(columns, ([_cell(row[c], c) for c in columns] for _, row in table.iterrows())))


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
             *notes, "", _table(table, shown), ""]
    if not compared.empty:
        columns = list(compared.columns)
        lines = markdown_table(columns, ([row[c] if c in ("benchmark", "paper benchmark", "metric")
                                          else _cell(row[c], "accuracy") for c in columns]
                                         for _, row in compared.iterrows()))
        parts += ["## Beside the paper", "",
                  "The paper's P3D, C3D and ResNet-152 figures (percent) for the benchmark each of ours stands for.",
                  "", *lines, ""]
    parts += ["## How each row was fitted", ""]
    parts += [f"- {r.benchmark} / {r.stream}: {r.selected}" + (f"; {r.details}" if r.details else "")
              for r in table.itertuples()]
    return "\n".join(parts) + "\n"


@dataclass
class TransferReport:
    """What the transfer report shows."""
    table: pd.DataFrame  # COLUMNS, a row per benchmark and stream
    notes: Sequence[str]  # the lines above the table
    paper_of: dict[str, str]  # benchmark -> the paper's benchmark it stands for ("" = none)
    classes: dict[str, int] = field(default_factory=dict)  # benchmark -> its number of classes (for chance)
    stand_ins: Sequence[str] = ()  # benchmarks whose videos are generated stand-ins, not the real data
    excluded: pd.DataFrame | None = None  # EXCLUDED_COLUMNS: every video left out, and why (excluded.csv)


STAND_IN = ("Stand-in data: generated videos in the real layout that exercise the protocol; the numbers are not "
            "comparable with the paper's, which are shown for reference.")


def chance(protocol: str, classes: int | None) -> float:
    """Accuracy (percent) of guessing: ASLAN's same/not-same pairs are balanced (50); otherwise one
    class of `classes` (nan when unknown)."""
    if protocol == "aslan_view2":
        return 50.0
    return 100.0 / classes if classes else float("nan")


def chance_of(table: pd.DataFrame, classes: dict[str, int]) -> dict[str, float]:
    """Each benchmark's chance accuracy (percent)."""
    protocols = dict(zip(table["benchmark"], table["protocol"], strict=True))
    return {b: chance(p, classes.get(b)) for b, p in protocols.items()}


def chart_figure(compared: pd.DataFrame, chances: dict[str, float] | None = None, stand_ins: Sequence[str] = ()):
    """Bars per benchmark (its main metric, accuracy): ours per stream, then the paper's methods
    (hatched); a dashed line at chance over each benchmark's bars; stand-in benchmarks marked under
    their name and in a caveat under the chart."""
    with drawing():
        plt = pyplot()

        chances = chances or {}
        main = compared[compared["metric"] == "accuracy"] if not compared.empty else compared
        # a stream without a row (no flow stream given) takes no slot in the groups
        series = [c for c in (*(f"ours {s}" for s in STREAMS), *PAPER_METHODS) if c in main.columns
                  and main[c].notna().any()]
        fig, ax = plt.subplots(figsize=(max(7.0, 1.8 * max(len(main), 1) + 3.5), 4.4))
        if main.empty:
            ax.text(0.5, 0.5, "no benchmark stands for one of the paper's", ha="center", va="center")
            ax.set_axis_off()
            return fig
        width = 0.8 / len(series)
        x = np.arange(len(main))
        for k, name in enumerate(series):
            values = main[name].to_numpy(dtype=float)
            ax.bar(x + (k - (len(series) - 1) / 2) * width, np.nan_to_num(values), width, label=name,
                   hatch="//" if name in PAPER_METHODS else None, alpha=0.9)
        for i, benchmark in enumerate(main["benchmark"]):
            level = chances.get(benchmark, float("nan"))
            if not math.isnan(level):
                first = "chance" not in ax.get_legend_handles_labels()[1]
                ax.hlines(level, i - 0.45, i + 0.45, colors="black", linestyles="--", linewidth=1.2, zorder=4,
                          gid="chance", **({"label": "chance"} if first else {}))
        names = [f"{b}\n({p})" + ("\nSTAND-IN DATA" if b in stand_ins else "")
                 for b, p in zip(main["benchmark"], main["paper benchmark"], strict=True)]
        ax.set_xticks(x, names)
        for label, benchmark in zip(ax.get_xticklabels(), main["benchmark"], strict=True):
            if benchmark in stand_ins:
                label.set_color("#a05a00")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_title("Ours (hatched: the paper's published figures; dashed: chance)")
        if any(b in stand_ins for b in main["benchmark"]):
            fig.text(0.01, 0.01, STAND_IN, fontsize=8, color="#a05a00", wrap=True)
            fig.tight_layout(rect=(0, 0.07, 1, 1))
        else:
            fig.tight_layout()
        return fig


def write_chart(path: Path, compared: pd.DataFrame, chances: dict[str, float] | None = None,
                stand_ins: Sequence[str] = ()) -> None:
    """results.png: `chart_figure` written atomically."""
    with drawing():
        fig = chart_figure(compared, chances, stand_ins)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, keep_suffix=True) as tmp:
            fig.savefig(tmp, dpi=100)
        pyplot().close(fig)


def write_report(out_dir: Path, r: TransferReport, config_toml: str = "") -> str:
    """results.csv, results.md, results.png, excluded.csv, report_inputs.json and report.html under
    `out_dir`, replacing the last report's as one set (fusion.report.staged_report: a kill leaves the old
    report whole), with `config_toml` (the run's settings) as its config.toml; returns the Markdown."""
    with staged_report(Path(out_dir), config_toml=config_toml) as stage:
        return _write_files(stage, r)


def _write_files(out_dir: Path, r: TransferReport) -> str:
    compared = comparison(r.table, r.paper_of)
    stand_ins = [b for b in r.stand_ins if b in set(r.table["benchmark"])]
    notes = list(r.notes) + ([f"{STAND_IN} ({', '.join(stand_ins)})"] if stand_ins else [])
    text = to_markdown(r.table, compared, notes)
    write_text(out_dir / "results.csv", r.table[COLUMNS].to_csv(index=False, float_format="%.2f"))
    write_text(out_dir / "results.md", text)
    write_chart(out_dir / "results.png", compared, chance_of(r.table, r.classes), stand_ins)
    excluded = r.excluded if r.excluded is not None else pd.DataFrame(columns=EXCLUDED_COLUMNS)
    write_text(out_dir / "excluded.csv", excluded.to_csv(index=False))
    inputs = {"kind": "transfer", "notes": list(r.notes), "paper_of": dict(r.paper_of), "classes": dict(r.classes),
              "stand_ins": list(r.stand_ins)}
    write_text(out_dir / INPUTS, json.dumps(inputs, indent=1) + "\n")
    from fusion.html_report import missing_engine

    missing = missing_engine()
    if missing:
        print(missing)
    else:
        write_page(out_dir)
    return text


def write_page(out_dir: Path) -> Path:
    """report.html of the transfer report in `out_dir`, from results.csv and report_inputs.json."""
    from fusion import html_report

    out_dir = Path(out_dir)
    page = html_report.render("transfer.html.j2", **page_context(out_dir))
    write_text(out_dir / html_report.PAGE, page)
    relist(out_dir, html_report.PAGE)  # report.json keeps describing the folder
    return out_dir / html_report.PAGE


RERUN = "re-run `make transfer`"
TEXT_COLUMNS = ("benchmark", "protocol", "stream", "selected", "details")
COUNTS = ("videos", "excluded")


def _damaged(path: Path, what: str) -> FusionError:
    return damaged(path, what, RERUN)


def read_results(out_dir: Path) -> pd.DataFrame:
    """results.csv of the transfer report in `out_dir`, checked cell by cell (fusion.report.read_table):
    percentages or empty (METRICS), whole numbers (COUNTS), else text."""
    return read_table(out_dir / "results.csv", COLUMNS, RERUN, METRICS, COUNTS)[COLUMNS]


def _texts(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


# What report_inputs.json holds: key -> (check, what it must be).
INPUT_KEYS: dict[str, tuple[Any, str]] = {
    "notes": (_texts, "a list of texts"),
    "paper_of": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
                 "a table of benchmark -> the paper's benchmark"),
    "classes": (lambda v: isinstance(v, dict) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                      for x in v.values()),
                "a table of benchmark -> its number of classes (a whole number)"),
    "stand_ins": (_texts, "a list of benchmark names"),
}


def read_inputs(out_dir: Path) -> dict:
    """report_inputs.json of the transfer report in `out_dir`, checked key by key."""
    path = out_dir / INPUTS
    try:
        inputs = json.loads(read_regular(path).decode("utf-8"))  # a FIFO refused, not waited on
    except (OSError, ValueError) as e:
        raise PipelineError(f"{printable(out_dir)}: not a transfer report ({e}): run `make transfer`") from None
    if not isinstance(inputs, dict) or inputs.get("kind") != "transfer":
        raise PipelineError(f"{path}: not the inputs of a transfer report")
    lacking = [k for k in INPUT_KEYS if k not in inputs]
    if lacking:
        keys = ", ".join(f"report_inputs.json key {k!r}" for k in lacking)
        raise PipelineError(f"{out_dir}: not a complete transfer report (no {keys}): run `make transfer` again")
    return check_inputs(path, inputs, INPUT_KEYS, RERUN)


def page_context(out_dir: Path) -> dict:
    """Everything transfer.html.j2 shows, read from the files of `out_dir`."""
    from fusion.html_report import cell, figure_uri, headers, percent_cell

    inputs = read_inputs(out_dir)
    table = read_results(out_dir)
    stand_ins = set(inputs["stand_ins"])
    chances = chance_of(table, inputs["classes"])
    compared = comparison(table, inputs["paper_of"])
    columns = ["benchmark", "protocol", "stream", "accuracy", "chance", "paper P3D", "se", "auc", "hit@3", "mAP",
               "videos", "excluded", "data"]
    rows = []
    for _, row in table.iterrows():  # rows by column name: "hit@3" is no attribute name
        benchmark = row["benchmark"]
        published = PAPER.get(inputs["paper_of"].get(benchmark, ""), {}).get("accuracy")
        stand_in = benchmark in stand_ins
        rows.append([cell(benchmark), cell(row["protocol"]), cell(row["stream"]), percent_cell(row["accuracy"]),
                     percent_cell(chances[benchmark]),
                     percent_cell(published[0]) if published else cell("-", "", cls="num"),
                     *(percent_cell(row[m]) for m in ("se", "auc", "hit@3", "mAP")),
                     *(cell(int(row[c]), int(row[c]), cls="num") for c in COUNTS),
                     cell("stand-in" if stand_in else "real", cls="stand-in" if stand_in else "")])
    fitted = [f"{r.benchmark} / {r.stream}: {r.selected}" + (f"; {r.details}" if r.details else "")
              for r in table.itertuples()]
    compared_table = None
    if not compared.empty:
        names = list(compared.columns)
        compared_table = {"headers": headers(names, names[3:]),
                          "rows": [[cell(row[c]) if c in ("benchmark", "paper benchmark", "metric")
                                    else percent_cell(float(row[c])) for c in names] for _, row in compared.iterrows()]}
    return {
        "title": "Transfer: one frozen representation, linear classifiers, every benchmark",
        "notes": inputs["notes"],
        "stand_ins": sorted(stand_ins & set(table["benchmark"])),
        "stand_in_note": STAND_IN,
        "results": {"headers": headers(columns, ["accuracy", "chance", "paper P3D", "se", "auc", "hit@3", "mAP",
                                                 "videos", "excluded"]), "rows": rows},
        "chart": figure_uri(chart_figure(compared, chances, sorted(stand_ins))),
        "compared": compared_table,
        "fitted": fitted,
    }
