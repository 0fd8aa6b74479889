"""report.html: the page a person opens in a browser to look at a run before reading it.

One self-contained file (style, script and pictures inline as data: URIs; a Content-Security-Policy
that forbids any fetch), rendered with the Jinja2 templates in fusion/templates/ from the files the
run already wrote, so `python -m pipeline report WORK_DIR` rebuilds it at any time. The evaluation
page (`write_eval_page`) reads an evaluation folder (fusion.report); the transfer page is assembled by
pipeline.transfer.report through `render` and the pictures helpers here.
"""
from __future__ import annotations

import base64
import datetime
import json
import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from flow.encoding import decode
from flow.errors import FlowError
from flow.store import STORE_FILE, open_store
from flow.visualise import flow_to_colour
from fusion import figures, fuse, metrics, report
from fusion.errors import FusionError
from p3dbase.atomic import write_text
from p3dbase.errors import read_regular
from p3dbase.errors import shown as printable

TEMPLATES = Path(__file__).parent / "templates"
PAGE = "report.html"
WORST = 12  # wrongly classified videos shown, the most confident first
PAIRS = 20  # most confused pairs listed per method
MAP_PX = 800  # a large confusion matrix is drawn at about this many pixels a side (whole pixels per class)
FRAME_PX = 200  # the worst videos' frames are shown this wide (report.css), stored as they are
STREAM_METHODS = ("rgb", "flow", "fusion")  # the top-3 lists of a worst video


# ---------------------------------------------------------------------------------------------- rendering

def missing_engine() -> str | None:
    """Why no page can be rendered here (Jinja2 absent: an install without the project's dependencies),
    or None. The stages then write every other report file and say so in one line."""
    try:
        import jinja2  # noqa: F401
    except ImportError:
        return "report.html not written: Jinja2 is not installed (pip install jinja2, then python -m pipeline report)"
    return None


def render(template: str, **context: Any) -> str:
    """The page of `template` (fusion/templates/) with `context`; FusionError when Jinja2 is absent."""
    try:
        import jinja2
    except ImportError:
        raise FusionError("report.html needs Jinja2: pip install jinja2 (the other report files are written)") from None
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return env.get_template(template).render(generated=f"Written {stamp}", **context)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figure_uri(fig, dpi: float = figures.DPI) -> str:
    """A matplotlib figure as an inline PNG (the figure is closed)."""
    return data_uri(figures.png_bytes(fig, dpi))


def image_uri(bgr: np.ndarray, jpeg: bool = False) -> str:
    """A uint8 BGR image as an inline PNG (lossless: charts, matrices) or JPEG (video frames)."""
    ok, encoded = cv2.imencode(".jpg" if jpeg else ".png", bgr, [cv2.IMWRITE_JPEG_QUALITY, 88] if jpeg else [])
    if not ok:
        raise FusionError(f"cannot encode a {bgr.shape} picture for report.html")
    return data_uri(encoded.tobytes(), "image/jpeg" if jpeg else "image/png")


def cell(text: Any, value: float | str | None = None, bar: float | None = None, cls: str = "") -> dict:
    """A table cell of the templates' `table` macro: shown text, sort value, bar length in percent."""
    return {"text": text, "value": value, "bar": bar, "cls": cls}


def headers(names: Sequence[str], numeric: Sequence[str] = ()) -> list[dict]:
    return [{"name": n, "numeric": n in numeric} for n in names]


def percent_cell(value: float, bar: bool = False) -> dict:
    """A percentage cell ('-' where the metric is not defined, sorted last)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return cell("-", "", None, "num")
    return cell(f"{value:.2f}", f"{value:.4f}", max(0.0, min(100.0, value)) if bar else None, "num")


def find_reports(folder: Path) -> list[tuple[str, Path]]:
    """(kind, folder) of every report under `folder` (itself included) that a page can be built for:
    the folders holding report_inputs.json, whose `kind` is "eval", "average" (the mean over splits) or
    "transfer"; "damaged" where that file cannot be read as one (a cut copy, another program's file).
    Frame stores, caches and feature folders are not entered."""
    found = []
    for root, dirs, files in os.walk(folder):
        if report.INPUTS in files:
            try:
                kind = json.loads(read_regular(Path(root) / report.INPUTS).decode("utf-8")).get("kind")
            except (OSError, ValueError, AttributeError):
                kind = None
            found.append((kind if kind in ("eval", "transfer", "average") else "damaged", Path(root)))
        if STORE_FILE in files:  # a frame + flow store: thousands of videos, no report
            dirs.clear()
        dirs[:] = sorted(d for d in dirs if d not in ("cache", "features", "tb") and not d.startswith("."))
    return found


# ---------------------------------------------------------------------------------------------- the eval page

def write_eval_page(report_dir: Path) -> Path:
    """report.html of the evaluation report in `report_dir` (results.csv, per_class.csv, scores.npz,
    excluded.csv, fusion_weight.csv, report_inputs.json), written atomically; returns its path."""
    report_dir = Path(report_dir)
    page = render("eval.html.j2", **eval_context(report_dir))
    path = report_dir / PAGE
    write_text(path, page)
    report.relist(report_dir, PAGE)
    return path


def write_average_page(report_dir: Path, splits: Path | None = None) -> Path:
    """report.html of a split average (`report.write_average`): its table, and a link to each
    split<k>/report.html beside it (in `splits`, when the report is being staged elsewhere)."""
    report_dir = Path(report_dir)
    inputs = _read_inputs(report_dir, "average")
    beside = Path(splits) if splits is not None else report_dir
    links = [{"name": p.parent.name, "href": f"{p.parent.name}/{PAGE}"} for p in sorted(beside.glob(f"split*/{PAGE}"))]
    page = render("average.html.j2", title=inputs["title"], notes=inputs["notes"],
                  results=results_section(_read_table(report_dir / "results.csv", [*report.COLUMNS, "splits"],
                                                      report.PERCENT, [*COUNTS, "splits"])), splits=links)
    path = report_dir / PAGE
    write_text(path, page)
    report.relist(report_dir, PAGE)  # rebuilt by `report`: report.json keeps describing the folder
    return path


RERUN = "re-run `make eval`"


COUNTS = ["videos", "excluded"]  # results.csv's whole-number columns


def _damaged(path: Path, what: str) -> FusionError:
    return report.damaged(path, what, RERUN)


def _read_table(path: Path, columns: Sequence[str], numbers: Sequence[str] = (),
                counts: Sequence[str] = ()) -> pd.DataFrame:
    return report.read_table(path, columns, RERUN, numbers, counts)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# What each kind of report_inputs.json holds: key -> (check, what it must be); chosen and store may be absent.
_TEXT = (lambda v: isinstance(v, str), "a text")
_TEXTS = (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of texts")
INPUT_KEYS: dict[str, dict[str, tuple[Any, str]]] = {
    "eval": {"title": _TEXT, "notes": _TEXTS, "shown": _TEXTS,
             "checkpoints": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
                             "a table of stream -> checkpoint path"),
             "chosen": (lambda v: v is None or (isinstance(v, list) and len(v) == 2 and v[0] in ("raw", "softmax")
                                                and _number(v[1])), 'null or ["raw" or "softmax", flow weight]'),
             "store": (lambda v: v is None or isinstance(v, str), "null or a path")},
    "average": {"title": _TEXT, "notes": _TEXTS},
}
_OPTIONAL = ("chosen", "store")


def _read_inputs(report_dir: Path, kind: str = "eval") -> dict:
    path = report_dir / report.INPUTS
    try:
        inputs = json.loads(read_regular(path).decode("utf-8"))  # a FIFO refused, not waited on
    except FileNotFoundError:
        raise FusionError(f"{printable(str(report_dir))}: no {report.INPUTS}: not an evaluation report, or one "
                          "written before report.html existed (re-run `make eval`)") from None
    except (OSError, ValueError) as e:
        raise FusionError(f"{printable(str(path))}: cannot read it ({getattr(e, 'strerror', None) or e}): re-run "
                          "`make eval`") from None
    if not isinstance(inputs, dict) or inputs.get("kind") != kind:
        raise FusionError(f"{printable(str(path))}: not the inputs of an evaluation report ({kind})")
    return report.check_inputs(path, inputs, INPUT_KEYS[kind], RERUN, _OPTIONAL)


SCORE_KEYS = ("video_ids", "classes", "labels")  # the arrays of scores.npz that are no method's scores


def _read_scores(report_dir: Path) -> dict[str, np.ndarray]:
    """scores.npz (fusion.report.write_scores), checked: every method's scores [videos, classes] and
    each network stream's per-view logits [videos, views, classes]."""
    path = report_dir / "scores.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            scores = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise FusionError(f"{printable(str(path))}: cannot read the scores ({e}): re-run `make eval`") from None
    missing = [k for k in SCORE_KEYS if k not in scores]
    if missing:
        raise _damaged(path, f"no {', '.join(map(repr, missing))} (not the scores an evaluation wrote)")
    ids, classes, labels = (scores[k] for k in SCORE_KEYS)
    if ids.ndim != 1 or ids.dtype.kind != "U" or classes.ndim != 1 or classes.dtype.kind != "U" or not len(classes):
        raise _damaged(path, "'video_ids' and 'classes' are not lists of names")
    n, c = len(ids), len(classes)
    if (labels.ndim != 2 or len(labels) != n or labels.dtype.kind not in "iu"
            or bool(((labels < -1) | (labels >= c)).any())):
        raise _damaged(path, f"'labels' is not {n} rows of class numbers below {c} (-1 padded)")
    if not [k for k in scores if k not in SCORE_KEYS and not k.startswith("views_")]:
        raise _damaged(path, "no method's scores")
    for key, a in scores.items():
        if key in SCORE_KEYS:
            continue
        views = key.startswith("views_")
        if (a.dtype.kind != "f" or a.ndim != 2 + views or (a.shape[0], a.shape[-1]) != (n, c)
                or (views and not a.shape[1])):
            want = f"{n} videos x views x {c} classes" if views else f"{n} videos x {c} classes"
            raise _damaged(path, f"{key!r} is {a.dtype} {tuple(a.shape)}, not floats of {want}")
        # -inf is "no prediction": the SVM's score for a class without training videos (fusion.svm, as
        # fusion.metrics reads it); eval writes no NaN or +inf (it refuses non-finite outputs): an edit.
        if np.isnan(a).any() or (a == np.inf).any():
            raise _damaged(path, f"{key!r} holds NaN or +inf scores")
    return scores


def eval_context(report_dir: Path) -> dict[str, Any]:
    """Everything eval.html.j2 shows, read from the files of `report_dir`."""
    inputs = _read_inputs(report_dir)
    scores = _read_scores(report_dir)
    classes = [str(c) for c in scores["classes"]]
    labels = report.unpad_labels(scores["labels"])
    methods = [m for m in scores if m not in SCORE_KEYS and not m.startswith("views_")]
    shown = [m for m in inputs["shown"] if m in methods]
    if not shown:
        raise _damaged(report_dir / report.INPUTS, f"'shown' names none of the methods in scores.npz "
                                                   f"({', '.join(methods)})")
    chosen = inputs.get("chosen")
    probs = {m: probabilities(scores, m, chosen) for m in [*STREAM_METHODS, *shown] if m in methods}
    results = _read_table(report_dir / "results.csv", report.COLUMNS, report.PERCENT, COUNTS)
    unlisted = [m for m in methods if m not in set(results["method"].astype(str))]
    if unlisted:
        raise _damaged(report_dir / "results.csv", f"no row of {', '.join(unlisted)} (scored in scores.npz)")
    per_class = _read_table(report_dir / "per_class.csv", ["class", "videos", *shown], [*STREAM_METHODS, *shown],
                            ["videos"])
    if len(per_class) != len(classes):
        raise _damaged(report_dir / "per_class.csv", f"not one row for each of the {len(classes)} classes of "
                                                     "scores.npz")
    sources = ["results.csv", "per_class.csv", "scores.npz", "excluded.csv", report.INPUTS]
    weight = None
    if (report_dir / "fusion_weight.csv").is_file():
        sources.append("fusion_weight.csv")
        weight = weight_section(_read_table(report_dir / "fusion_weight.csv", ["curve", "flow_weight", "hit@1"],
                                            ["flow_weight", "hit@1"]), chosen)
    curves = [training_curves(name, Path(path)) for name, path in inputs["checkpoints"].items()]
    if any(c["uri"] for c in curves):
        sources.append("metrics.jsonl of each stream")
    return {
        "title": inputs["title"],
        "notes": inputs["notes"],
        "results": results_section(results),
        "curves": curves,
        "weight": weight,
        "confusion": confusion_sections(shown, scores, labels, classes),
        "confusion_note": (f"Rows: the true class; each row divided by its videos. {len(classes)} classes"
                           + (": every count shown." if len(classes) <= figures.SMALL else
                              ", sorted by accuracy (the mean of the methods drawn; best first, top left) on both "
                              "axes, square-root colour scale so that single confusions show; hover a cell for "
                              "its classes and count.")),
        "per_class": per_class_section(per_class, shown),
        "worst": worst_section(scores, probs, labels, classes, inputs.get("store"), shown),
        "excluded": excluded_section(_read_table(report_dir / "excluded.csv", ["video_id", "reason"])),
        "sources": sources,
    }


def probabilities(scores: dict[str, np.ndarray], method: str, chosen: Sequence | None) -> np.ndarray:
    """Class probabilities [N, C] of `method` for showing confidences: a network stream's mean softmax
    over its views, the fusion row's scores as probabilities (its score kind is the chosen rule's),
    anything else (SVM decision values) through a softmax."""
    if f"views_{method}" in scores:
        return fuse.video_scores(scores[f"views_{method}"], "softmax")
    if method == "fusion" and chosen:
        return fuse.probabilities(scores[method], str(chosen[0]))
    if method.startswith("fusion_"):
        return fuse.probabilities(scores[method], method.removeprefix("fusion_"))
    return fuse.softmax(scores[method])


def results_section(table: pd.DataFrame) -> dict:
    shown = [c for c in ["method", *report.PERCENT, "videos", "excluded", "splits", "details"] if c in table.columns]
    table = table.copy()
    for c in ("method", "details"):  # an empty text cell reads back from the CSV as NaN
        if c in table.columns:
            table[c] = table[c].astype(object).where(table[c].notna(), "")
    rows = []
    for _, row in table.iterrows():
        rows.append([percent_cell(row[c]) if c in report.PERCENT else
                     cell(row[c], cls="details" if c == "details" else ("num" if c in ("videos", "excluded", "splits")
                                                                          else "")) for c in shown])
    return {"headers": headers(shown, [*report.PERCENT, "videos", "excluded", "splits"]), "rows": rows}


def training_curves(name: str, checkpoint: Path) -> dict:
    """The stream's loss, accuracy and learning rate from the metrics.jsonl beside its checkpoint."""
    from streams.plots import curves_figure

    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    path = folder / "metrics.jsonl"
    shown_name = printable(str(checkpoint))
    if not path.is_file():
        return {"name": name, "uri": None,
                "note": f"No metrics.jsonl beside {shown_name}: imported weights, or a training folder moved away."}
    history = []
    try:
        text = read_regular(path).decode("utf-8", errors="replace")
    except OSError as e:
        return {"name": name, "uri": None, "note": f"metrics.jsonl beside {shown_name} cannot be read ({e})."}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a killed run
        if isinstance(record, dict) and record.get("kind") in ("train", "val"):
            history.append(record)
    if not any(r["kind"] == "train" for r in history):
        return {"name": name, "uri": None, "note": f"{printable(str(path))} holds no training record."}
    fig = curves_figure(history, f"{name} stream")
    return {"name": name, "uri": figure_uri(fig, dpi=80),
            "note": f"From {printable(str(path))} ({len(history)} records); checkpoint {shown_name}."}


def weight_section(frame: pd.DataFrame, chosen: Sequence | None) -> dict:
    curves = {str(label): (group["flow_weight"].to_numpy(), group["hit@1"].to_numpy())
              for label, group in frame.groupby("curve", sort=False)}
    used = (str(chosen[0]), float(chosen[1])) if chosen else None
    note = ("Video hit@1 of the fused scores at each flow weight (RGB weight 1); dashed: the held-out videos the "
            "rule was chosen on, solid: the test videos (shown, never used to choose).")
    if used:
        note += f" Used: {used[0]} scores, rgb:flow = 1:{used[1]:g}."
    return {"uri": figure_uri(figures.weight_figure(curves, used)), "note": note}


def _colours(rates: np.ndarray, gamma: float) -> np.ndarray:
    """uint8 [..., 3] RGB of viridis at `rates` ** gamma (the pictures' colour scale)."""
    from matplotlib import colormaps

    return (255 * colormaps["viridis"](np.clip(rates, 0, 1) ** gamma)[..., :3]).round().astype(np.uint8)


def confusion_sections(shown: Sequence[str], scores: dict[str, np.ndarray], labels, classes: list[str]) -> list[dict]:
    """Per drawn method: its confusion matrix (an HTML table with every count up to figures.SMALL
    classes; beyond, a picture with one block of whole pixels per cell, classes in one order for every
    method) and its most confused pairs. The fused row (or the last drawn) is open."""
    n = len(classes)
    hits = {m: metrics.per_class_accuracy(metrics.hits_at_k(scores[m], labels, 1), labels, n) for m in shown}
    order = figures.class_order(np.stack([hits[m] for m in shown])) if n > figures.SMALL else np.arange(n)
    main = "fusion" if "fusion" in shown else shown[-1]
    names = [classes[i] for i in order]
    sections = []
    for m in shown:
        counts = metrics.confusion_matrix(scores[m], labels, n)[np.ix_(order, order)]
        totals = counts.sum(axis=1)
        rates = counts / np.maximum(totals[:, None], 1)
        pairs = report.most_confused(scores[m], labels, classes, top=PAIRS)
        section = {"method": m, "open": m == main, "accuracy": f"{100 * np.nanmean(hits[m]):.1f}%",
                   "names": names, "cells": None, "pairs": {
                       "headers": headers(["true", "predicted", "videos", "share of the true class"],
                                          ["videos", "share of the true class"]),
                       "rows": [[cell(r.true), cell(r.predicted), cell(r.videos, r.videos, cls="num"),
                                 cell(f"{r.share:.1f}%", r.share, cls="num")] for r in pairs.itertuples()]}}
        if n <= figures.SMALL:
            colour = _colours(rates, 1.0)
            section["cells"] = [[{"colour": "#" + bytes(colour[i, j]).hex(),
                                  "ink": "#000" if rates[i, j] > 0.6 else "#fff",
                                  "text": int(counts[i, j]) if counts[i, j] else "",
                                  "title": f"true {names[i]}, predicted {names[j]}: {int(counts[i, j])} of "
                                           f"{int(totals[i])}"} for j in range(n)] for i in range(n)]
        else:
            block = max(1, MAP_PX // n)
            picture = np.repeat(np.repeat(_colours(rates, 0.5), block, axis=0), block, axis=1)
            section.update(uri=image_uri(picture[..., ::-1].copy()), width=n * block, data={
                "names": names, "totals": totals.tolist(),
                "cells": {f"{i},{j}": int(counts[i, j]) for i, j in zip(*np.nonzero(counts), strict=True)}})
        sections.append(section)
    return sections


def per_class_section(table: pd.DataFrame, shown: Sequence[str]) -> dict:
    methods = [m for m in dict.fromkeys([*STREAM_METHODS, *shown]) if m in table.columns]
    columns = ["class", "videos", *methods]
    rows = [[cell(row["class"]), cell(int(row["videos"]), int(row["videos"]), cls="num"),
             *(percent_cell(float(row[m]), bar=True) for m in methods)] for _, row in table.iterrows()]
    return {"headers": headers(columns, ["videos", *methods]), "rows": rows}


def worst_section(scores: dict[str, np.ndarray], probs: dict[str, np.ndarray], labels, classes: list[str],
                  store_path: str | None, shown: Sequence[str]) -> dict:
    """The test videos the main method (fusion, else the one stream) got wrong with the highest
    confidence: each with an RGB frame and its flow from the store, and each stream's top 3."""
    main = next((m for m in ("fusion", "rgb", "flow") if m in probs), shown[-1] if shown else None)
    if main is None:
        return {"method": "", "note": "No network stream was scored.", "videos": []}
    p = probs[main]
    predicted = scores[main].argmax(axis=1)  # the table's prediction; `p` only says how sure it was
    wrong = [i for i, lab in enumerate(labels) if int(predicted[i]) not in lab]
    wrong.sort(key=lambda i: (-p[i, predicted[i]], str(scores["video_ids"][i])))
    store, store_note = _open_store(store_path)
    videos = []
    top_k = min(3, len(classes))  # two classes have no third best
    for i in wrong[:WORST]:
        video_id = str(scores["video_ids"][i])
        entry = {"video_id": video_id, "truth": ", ".join(classes[c] for c in labels[i]),
                 "predicted": classes[predicted[i]], "confidence": f"{100 * p[i, predicted[i]]:.1f}%",
                 "tops": [{"method": m, "best": [{"name": classes[c], "pct": f"{100 * probs[m][i, c]:.1f}%",
                                                   "true": int(c) in labels[i]}
                                                  for c in np.argsort(-probs[m][i], kind="stable")[:top_k]]}
                          for m in STREAM_METHODS if m in probs],
                 "top_k": top_k,
                 "rgb": None, "flow": None, "frame": 0, "frame_note": store_note}
        if store is not None:
            entry.update(_frames(store, video_id))
        videos.append(entry)
    scale = f" Flow colour: Middlebury wheel (hue = direction, white = still), {store.bound / 4:g} px/frame = full " \
            "saturation." if store is not None else ""
    note = (f"{len(wrong)} of {len(labels)} test videos are wrongly classified by {main}; the {min(WORST, len(wrong))} "
            f"it was most sure of, with the middle frame and its flow from the store.{scale}")
    return {"method": main, "note": note, "videos": videos}


def _open_store(path: str | None):
    if not path:
        return None, "No frame store was recorded for this report."
    try:
        return open_store(Path(path)), ""
    except FlowError as e:
        return None, f"Frames not shown: {e}"


def _frames(store, video_id: str) -> dict:
    """The middle RGB frame and the flow from it to the next, as inline pictures."""
    if not store.has(video_id):
        return {"frame_note": f"{video_id} is not in the store at {printable(str(store.root))}."}
    try:
        with store.open(video_id) as video:
            index = max(0, video.num_flows // 2)
            rgb = video.rgb([index])[0]
            flow = decode(video.flow([index]), store.bound)[0] if video.num_flows else None
    except FlowError as e:
        return {"frame_note": f"Frames not shown: {e}"}
    colour = flow_to_colour(flow, store.bound / 4) if flow is not None else np.full_like(rgb, 255)
    # As stored; the page shows them FRAME_PX wide with sharp pixels. Small frames stay lossless (PNG is
    # small there), large ones go as JPEG so that 12 videos stay well under a megabyte.
    lossy = rgb.shape[1] >= FRAME_PX
    return {"rgb": image_uri(rgb, jpeg=lossy), "flow": image_uri(colour, jpeg=lossy), "frame": index}


def excluded_section(table: pd.DataFrame, shown_rows: int = 50) -> dict:
    count = len(table)
    note = ("No test video was left out." if not count else
            f"{count} test video(s) left out of every metric" + (f"; the first {shown_rows} (all in excluded.csv)"
                                                                if count > shown_rows else "") + ".")
    rows = [[cell(r.video_id), cell(r.reason)] for r in table.head(shown_rows).itertuples()]
    return {"note": note, "table": {"headers": headers(["video", "reason"]), "rows": rows}}
