"""The report of `make eval`: results table (CSV + Markdown), per-class accuracy, most confused pairs,
the pictures (fusion.figures), scores."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fusion import figures, metrics
from fusion.errors import FusionError
from fusion.metrics import Labels
from p3dbase import atomic
from p3dbase.errors import excerpt, read_regular, shown
from streams.checkpoint import file_sha256

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


def md_cell(value: object) -> str:
    """`value` as one cell of a Markdown table: a `|` would end the cell and a line break the row, and
    `<` and `&` start HTML to a renderer (a class `<script>...` was run or hidden, `A&amp;B` shown as
    `A&B`); class names and video ids come from users' folders and files. CommonMark's backslash
    escapes keep the text readable as it stands (a `>` alone is no HTML: `->` stays as written)."""
    return _MD_SPECIAL.sub(r"\\\g<0>", " ".join(str(value).split()))


_MD_SPECIAL = re.compile(r"[\\|<&]")


def markdown_table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> list[str]:
    """The lines of a GitHub Markdown table, every cell through md_cell (format numbers first)."""
    lines = ["| " + " | ".join(map(md_cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(map(md_cell, row)) + " |" for row in rows]


def to_markdown(table: pd.DataFrame, title: str, notes: Sequence[str] = ()) -> str:
    """A GitHub Markdown table (metrics in percent, 2 decimals; '-' where a metric is not defined)."""
    header = list(table.columns)
    lines = [f"# {title}", ""]
    lines += [f"{n}" for n in notes] + ([""] if notes else [])

    def cell(name: str, value: object) -> object:
        if name in PERCENT:
            return "-" if pd.isna(value) else f"{value:.2f}"
        return value

    lines += markdown_table(header, ([cell(name, row[name]) for name in header] for _, row in table.iterrows()))
    return "\n".join(lines) + "\n"


def write_results(table: pd.DataFrame, out_dir: Path, title: str, notes: Sequence[str] = (), extra: str = "") -> None:
    """results.csv and results.md (the table, then `extra` Markdown) in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "results.csv", table.to_csv(index=False, float_format="%.4f"))
    write_text(out_dir / "results.md", to_markdown(table, title, notes) + (f"\n{extra}" if extra else ""))


def write_average(out_dir: Path, table: pd.DataFrame, title: str, notes: Sequence[str], config_toml: str = "") -> None:
    """The split average's report: results.csv/.md (`write_results`), report_inputs.json, and a
    report.html with the table and a link to each split's page (written after the splits'), staged and
    listed in report.json as a single split's report is (`staged_report`): the files of a report that
    stood in `out_dir` before (a split-1 evaluation's scores, pictures and report.json) go with it, where
    they stayed beside the average and its report.json failed its own check."""
    from fusion import html_report  # as in _write_report_files

    # A split-1 report's saved features would stay beside the average, and svm_from_features("eval/features")
    # would quietly re-run split 1; each split's are in split<k>/: the average owns none.
    with staged_report(out_dir, folders=(FEATURES,), config_toml=config_toml) as stage:
        write_results(table, stage, title, notes)
        write_text(stage / INPUTS, json.dumps({"kind": "average", "title": title, "notes": list(notes)}, indent=1)
                   + "\n")
        missing = html_report.missing_engine()
        if missing:
            print(missing)
        else:
            html_report.write_average_page(stage, splits=out_dir)


def most_confused(scores: np.ndarray, labels: Labels, classes: Sequence[str], top: int = 20) -> pd.DataFrame:
    """The off-diagonal cells of the confusion matrix with the most videos: `true`, `predicted`,
    `videos`, `share` (percent of the true class's test videos). Sorted by videos, then share, then
    the class names; at most `top` rows, none for empty cells."""
    counts = metrics.confusion_matrix(scores, labels, len(classes))
    totals = counts.sum(axis=1)
    rows = [(classes[t], classes[p], int(counts[t, p]), 100.0 * counts[t, p] / totals[t])
            for t, p in zip(*np.nonzero(counts), strict=True) if t != p]
    rows.sort(key=lambda r: (-r[2], -r[3], r[0], r[1]))
    return pd.DataFrame(rows[:top], columns=["true", "predicted", "videos", "share"])


def confused_markdown(name: str, table: pd.DataFrame) -> str:
    lines = [f"## Most confused pairs ({name})", ""]
    if table.empty:
        return "\n".join(lines + ["No test video of any class was taken for another class.", ""])
    lines += markdown_table(["true", "predicted", "videos", "share of the true class"],
                            ((r.true, r.predicted, r.videos, f"{r.share:.1f}%") for r in table.itertuples()))
    return "\n".join(lines) + "\n"


@dataclass
class EvalReport:
    """Everything the evaluation report shows; `write_report` writes each file from these alone."""
    title: str
    table: pd.DataFrame  # results_table of `methods`
    notes: Sequence[str]  # lines under the title: what was scored, what was chosen on what
    methods: Sequence[MethodScores]  # every row of the table, in its order
    shown: Sequence[MethodScores]  # the methods drawn (rgb, flow, fusion, svm_two_stream of those present)
    video_ids: Sequence[str]  # the evaluated test videos, in the order of every method's scores
    labels: Labels
    classes: Sequence[str]
    excluded: dict[str, str]  # test video -> why it is left out of every metric
    curves: dict[str, tuple[Sequence[float], np.ndarray]] = field(default_factory=dict)  # fusion weight curves
    chosen: tuple[str, float] | None = None  # (score kind, flow weight) of the fusion row
    store: Path | None = None  # the frame + flow store scored: the page shows the worst videos' frames
    checkpoints: dict[str, Path] = field(default_factory=dict)  # stream -> checkpoint: its metrics.jsonl


INPUTS = "report_inputs.json"  # what the page needs beyond the tables: paths, notes, the fusion rule


def damaged(path: Path, what: str, rerun: str) -> FusionError:
    """The one message for a report file that reads but is not what its stage wrote (`rerun`: the
    command that writes it again)."""
    return FusionError(f"{shown(path)}: {what}: {rerun}")


def check_inputs(path: Path, inputs: dict, keys: dict[str, tuple[Callable[[Any], bool], str]], rerun: str,
                 optional: Sequence[str] = (), within: str = "") -> dict:
    """A report's report_inputs.json, read into `inputs`, checked key by key: `keys` maps each key to
    (check, what it must be); a key of `optional` may be absent. `within`: where in the file `inputs`
    is, for the message (a features file's "'meta'")."""
    where = f" in {within}" if within else ""
    for key, (check, what) in keys.items():
        if key not in inputs and key not in optional:
            raise damaged(path, f"no {key!r}{where}", rerun)
        if not check(inputs.get(key)):
            raise damaged(path, f"{key!r}{where} is not {what} (it is {excerpt(json.dumps(inputs[key]))})", rerun)
    return inputs


def read_table(path: Path, columns: Sequence[str], rerun: str, numbers: Sequence[str] = (),
               counts: Sequence[str] = ()) -> pd.DataFrame:
    """A CSV table a report wrote (eval's and transfer's), checked cell by cell: it has `columns`, every
    row is whole, the cells of `numbers` are numbers (empty: not defined, NaN) and those of `counts`
    whole numbers >= 0; every other cell is text as written (a class named "NA" stays one). A
    FusionError names the file, the line and the column of the first cell that is not what the report
    wrote (`rerun`: the command that writes it again)."""
    try:
        text = read_regular(path).decode("utf-8")  # a FIFO refused, not waited on
    except (OSError, ValueError) as e:
        raise FusionError(f"{shown(path)}: cannot read it ({getattr(e, 'strerror', None) or e}): {rerun}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    try:
        header = next(reader, [])
        missing = [c for c in columns if c not in header]
        if missing:
            names = ", ".join(map(repr, missing[:3])) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise damaged(path, f"not the table a report wrote (no column {names}; its header: "
                                f"{excerpt(','.join(header))})", rerun)
        twice = next((c for c in header if header.count(c) > 1), None)
        if twice is not None:
            raise damaged(path, f"not the table a report wrote (column {excerpt(twice)} twice)", rerun)
        for fields in reader:
            if not fields:
                continue
            where = f"line {reader.line_num}"
            if len(fields) != len(header):
                raise damaged(path, f"cut short or edited ({where} has {len(fields)} of the header's {len(header)} "
                                    "fields)", rerun)
            try:
                rows.append([_cell(text, column, numbers, counts) for column, text in zip(header, fields, strict=True)])
            except ValueError as e:
                raise damaged(path, f"{where}: {e}", rerun) from None
    except csv.Error as e:
        raise damaged(path, f"line {reader.line_num}: {e}", rerun) from None
    if text and not text.endswith("\n"):
        raise damaged(path, "cut short (no line end after its last row)", rerun)
    table = pd.DataFrame(rows, columns=header, dtype=object)
    kinds = {c: "float64" for c in numbers if c in header} | {c: "int64" for c in counts if c in header}
    return table.astype(kinds)


def _cell(text: str, column: str, numbers: Sequence[str], counts: Sequence[str]) -> Any:
    """One cell of `read_table`: a number or empty (`numbers`), a whole number >= 0 (`counts`), else text;
    ValueError saying what it must be."""
    if column not in numbers and column not in counts:
        return text
    try:
        value = float(text) if text.strip() or column in counts else math.nan
    except ValueError:
        value = None
    if column in numbers:
        if value is None or math.isinf(value):
            raise ValueError(f"{column} must be a number or empty, got {excerpt(text)}")
        return value
    if value is None or not math.isfinite(value) or value < 0 or not value.is_integer():
        raise ValueError(f"{column} must be a whole number, got {excerpt(text)}")
    return int(value)


def write_report(out_dir: Path, r: EvalReport, features: Callable[[Path], None] | None = None,
                 config_toml: str = "") -> None:
    """Every file of the evaluation report in `out_dir`: results.csv/.md (with the most confused pairs
    of the last method of `shown` when there are more than figures.SMALL classes), per_class.csv,
    confusion.png, per_class.png, fusion_weight.png/.csv (with `curves`), scores.npz/.csv,
    excluded.csv, report_inputs.json, report.html (fusion.html_report, from those files), and last
    report.json (see `staged_report`). `features(folder)` saves the report's features/ (fusion.stage):
    they move in with the files, and a report without them has no features/ folder. `config_toml`: the
    caller's resolved settings, config.toml of the report (`staged_report`)."""
    with staged_report(out_dir, folders=(FEATURES,), config_toml=config_toml) as stage:
        if features is not None:
            features(stage / FEATURES)
        _write_report_files(stage, r)


REPORT_MARKER = "report.json"
# Present while a report's files move in (report.json removed): `eval --out` takes a folder holding it
# for a report's, so that the re-run repairs a report killed then instead of refusing its folder.
MOVING = ".report-moving"
CONFIG = "config.toml"  # the settings of the run that wrote the report (staged_report's config_toml)
FEATURES = "features"  # an evaluation report's saved features, features/<stream>.npz (fusion.stage)


@contextmanager
def staged_report(out_dir: Path, folders: Sequence[str] = (), config_toml: str = "") -> Iterator[Path]:
    """A folder to write a whole report into; on success its files replace the report in `out_dir`.

    A kill while the files are written leaves the old report whole; report.json is removed before the
    files move in and written after them, listing each file with its SHA-256, so a report with
    report.json is never a mix of two runs (a kill during the moves leaves none: the re-run repairs it).
    Files of the old report that the new one lacks (fusion_weight.png) are removed with it.

    `folders`: sub-folders the report owns (eval's features/): each moves in with the files as a whole,
    replacing the old one (none in the stage: the old one goes), and its files are listed as
    `features/rgb.npz`. Saved beside the report instead, a refused or killed run left its features next
    to the old report, whose SVM rows they then no longer reproduced.

    `config_toml`: the settings of the run (pipeline.config.dump_toml), written as the report's
    config.toml: it moves in with the files, where written beside them after the report a kill in
    between left a new report beside the last run's settings."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.glob(f".report{atomic.TEMP_MARKER}*"):  # of a killed run
        atomic.remove_quietly(leftover)
    stage = atomic.temp_name(out_dir / "report", unique=True)
    stage.mkdir()
    try:
        yield stage
        if config_toml:
            atomic.write_text(stage / CONFIG, config_toml)
        files = sorted(p.name for p in stage.iterdir() if p.name not in folders)
        marker = out_dir / REPORT_MARKER
        try:
            old = json.loads(marker.read_text(encoding="utf-8")).get("files", {})
        except (OSError, ValueError, AttributeError):
            old = {}
        listing = {name: file_sha256(stage / name) for name in files}
        listing |= {p.relative_to(stage).as_posix(): file_sha256(p) for name in folders
                    for p in sorted((stage / name).rglob("*")) if p.is_file()}
        atomic.write_text(out_dir / MOVING, "")
        marker.unlink(missing_ok=True)
        for name in sorted({name.partition("/")[0] for name in old} - set(files) - set(folders)):
            atomic.remove_quietly(out_dir / name)  # a file, or a folder an earlier report owned (features/)
        for name in folders:
            atomic.remove_quietly(out_dir / name)
            if (stage / name).is_dir():
                os.replace(stage / name, out_dir / name)
        for name in files:
            os.replace(stage / name, out_dir / name)
        atomic.write_text(marker, json.dumps({"files": listing}, indent=1) + "\n")
        (out_dir / MOVING).unlink(missing_ok=True)
    except OSError as err:
        if atomic.is_disk_full(err):  # named by the report, not by a file of the hidden staging folder
            raise atomic.disk_full(f"{out_dir} (the evaluation report)", err) from err
        raise
    finally:
        atomic.remove_quietly(stage)


def relist(out_dir: Path, name: str) -> None:
    """A report file rewritten in place (report.html by `python -m pipeline report`): its SHA-256 in
    report.json follows, so that the listing still describes the folder."""
    marker = Path(out_dir) / REPORT_MARKER
    try:
        listing = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no listing (a report being staged, or one cut short): nothing to keep in step
    if isinstance(listing, dict) and name in listing.get("files", {}):
        listing["files"][name] = file_sha256(Path(out_dir) / name)
        atomic.write_text(marker, json.dumps(listing, indent=1) + "\n")


def _write_report_files(out_dir: Path, r: EvalReport) -> None:
    per_class = per_class_table(r.methods, r.labels, r.classes)
    shown = list(r.shown) or list(r.methods[:1])
    extra = ""
    if len(r.classes) > figures.SMALL:
        main = shown[-1]
        extra = confused_markdown(main.method, most_confused(main.scores, r.labels, r.classes))
    write_results(r.table, out_dir, r.title, r.notes, extra)
    write_text(out_dir / "per_class.csv", per_class.to_csv(index=False, float_format="%.2f"))
    figures.confusion(out_dir / "confusion.png", [m.method for m in shown], [m.scores for m in shown], r.labels,
                      r.classes)
    bars = [m.method for m in reversed(shown)]  # the fused or SVM method first, the streams as markers
    figures.per_class_bars(out_dir / "per_class.png", bars, per_class[bars].to_numpy().T, r.classes)
    if r.curves:
        figures.weight_curve(out_dir / "fusion_weight.png", r.curves, r.chosen)
        rows = [(label, float(w), float(acc)) for label, (weights, accs) in r.curves.items()
                for w, acc in zip(weights, accs, strict=True)]
        write_text(out_dir / "fusion_weight.csv", pd.DataFrame(rows, columns=["curve", "flow_weight", "hit@1"])
                   .to_csv(index=False, float_format="%.6g"))
    write_scores(out_dir, r.video_ids, r.labels, r.classes, r.methods)
    write_excluded(out_dir / "excluded.csv", r.excluded)
    inputs = {"kind": "eval", "title": r.title, "notes": list(r.notes), "shown": [m.method for m in shown],
              "chosen": list(r.chosen) if r.chosen else None,
              "store": str(Path(r.store).resolve()) if r.store else None,
              "checkpoints": {name: str(Path(path).resolve()) for name, path in r.checkpoints.items()}}
    write_text(out_dir / INPUTS, json.dumps(inputs, indent=1) + "\n")
    from fusion import html_report  # it reads this module's files back: imported here, not at the top

    missing = html_report.missing_engine()
    if missing:
        print(missing)
    else:
        html_report.write_eval_page(out_dir)


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
    frame = pd.DataFrame({"video_id": list(excluded), "reason": list(excluded.values())},
                         columns=["video_id", "reason"])
    write_text(path, frame.to_csv(index=False))


def write_text(path: Path, text: str) -> None:
    """Atomically (p3dbase.atomic): a half-written file is never taken for done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, text)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_write(path) as f:  # a file object: np.savez adds no second .npz
        np.savez(f, **arrays)
