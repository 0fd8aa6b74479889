"""`predict --timeline`: the classes of every snippet of a video, as tables and one picture.

Each snippet (fusion.snippets: a clip every `stride` frames) is scored by each stream as a video is
by `predict`: its logits (`fusion_scores = "raw"`) or softmax (`"softmax"`) are the stream's scores,
the fused scores are fusion.fuse.fuse of the two with `fusion_weights`, and what is shown is
probabilities (fuse.probabilities). Written beside each other, named by the video's id:

    <id>.timeline.csv    one row per snippet: start / end frame and time, then for rgb, flow and
                         fused the top-k classes and probabilities
    <id>.timeline.json   the same, with the video's frame rate, window and stride
    <id>.timeline.png    frame thumbnails over time; under them, one band per stream coloured by
                         the snippet's top class (paler where it is less sure), the legend naming
                         the classes that lead anywhere; and the fused probability of the leading
                         classes over time
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusion import fuse
from fusion.config import EvalConfig
from fusion.snippets import Snippets
from p3dbase.atomic import atomic_write, write_text
from p3dbase.plotting import drawing, pyplot

SUFFIXES = (".timeline.csv", ".timeline.json", ".timeline.png")


def probabilities(snippets: Snippets, cfg: EvalConfig) -> dict[str, np.ndarray]:
    """{"rgb" | "flow" | "fusion": float64 [T, C]} probabilities of each snippet."""
    scores = {name: fuse.video_scores(logits[:, None, :], cfg.fusion_scores)
              for name, logits in snippets.logits.items()}
    out = {name: fuse.probabilities(value, cfg.fusion_scores) for name, value in scores.items()}
    if len(scores) == 2:
        out["fusion"] = fuse.probabilities(fuse.fuse(scores["rgb"], scores["flow"], cfg.fusion_weights),
                                           cfg.fusion_scores)
    return out


def timeline_rows(snippets: Snippets, classes: Sequence[str], cfg: EvalConfig, top_k: int) -> list[dict]:
    probs = probabilities(snippets, cfg)
    times = snippets.times()
    rows = []
    for t, start in enumerate(snippets.starts):
        row: dict = {"start_frame": start, "end_frame": start + snippets.window}
        if times:
            row["start_time"], row["end_time"] = round(times[t][0], 6), round(times[t][1], 6)
        for name, p in probs.items():
            order = np.argsort(-p[t], kind="stable")[:top_k]
            row[name] = [{"class": classes[c], "probability": round(float(p[t, c]), 6)} for c in order]
        rows.append(row)
    return rows


def paths(out: Path, video_id: str) -> list[Path]:
    return [out / f"{video_id}{suffix}" for suffix in SUFFIXES]


def write_timeline(out: Path, video: str, video_id: str, snippets: Snippets, classes: Sequence[str],
                   cfg: EvalConfig, *, top_k: int) -> list[Path]:
    """The CSV, JSON and PNG of one video's timeline under `out` (see the module doc)."""
    csv_path, json_path, png_path = paths(out, video_id)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    rows = timeline_rows(snippets, classes, cfg, top_k)
    streams = [n for n in ("rgb", "flow", "fusion") if rows and n in rows[0]]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    head = ["start_frame", "end_frame", "start_time", "end_time"]
    writer.writerow(head + [f"{n}_top{r}_{what}" for n in streams for r in range(1, top_k + 1)
                            for what in ("class", "probability")])
    for row in rows:
        cells = [row["start_frame"], row["end_frame"], row.get("start_time", ""), row.get("end_time", "")]
        for n in streams:
            top = row[n] + [{"class": "", "probability": ""}] * (top_k - len(row[n]))
            cells += [v for item in top for v in (item["class"], item["probability"])]
        writer.writerow(cells)
    write_text(csv_path, text.getvalue())
    write_text(json_path, json.dumps({"video": video, "video_id": video_id, "num_frames": snippets.num_frames,
                                      "fps": snippets.fps, "window": snippets.window, "stride": snippets.stride,
                                      "padded": snippets.padded, "snippets": rows}, indent=1) + "\n")
    with drawing():  # tick labels are made again as it is saved
        fig = timeline_figure(video_id, snippets, classes, cfg)
        with atomic_write(png_path) as f:
            fig.savefig(f, format="png", dpi=100)
        pyplot().close(fig)
    return [csv_path, json_path, png_path]


def time_labels(times: Sequence[float]) -> list[str]:
    """Seconds with as few decimals as tell them apart (1 to 3): thumbnails 0.13 s apart read "0.1,
    0.1, 0.3, 0.3" at one decimal."""
    for decimals in (1, 2, 3):
        labels = [f"{t:.{decimals}f}" for t in times]
        if len(set(labels)) == len(labels):
            break
    return labels


def timeline_figure(title: str, snippets: Snippets, classes: Sequence[str], cfg: EvalConfig, leaders: int = 8):
    """Thumbnails, one band per stream coloured by each snippet's top class, and the fused (or the
    only stream's) probability of the leading classes over time."""
    with drawing():
        from matplotlib.patches import Patch

        plt = pyplot()

        probs = probabilities(snippets, cfg)
        names = [n for n in ("rgb", "flow", "fusion") if n in probs]
        main = probs["fusion" if "fusion" in probs else names[0]]
        # Seconds from the frames' timestamps (a variable frame rate placed right), else frame numbers.
        timed = snippets.time_at(0) is not None
        at = snippets.time_at if timed else float
        unit = "s" if timed else "frame"
        starts = np.array([at(s) for s in snippets.starts], dtype=float)
        ends = np.array([at(s + snippets.window) for s in snippets.starts], dtype=float)
        # a band reaches the next snippet's start when snippets overlap
        reach = ends if snippets.stride >= snippets.window else np.array(
            [at(s + snippets.stride) for s in snippets.starts], dtype=float)
        # The classes shown: those leading some snippet in any stream, most often first, at most `leaders`.
        counts = np.zeros(len(classes))
        for n in names:
            np.add.at(counts, probs[n].argmax(axis=1), 1)
        shown = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0][:leaders]
        palette = plt.get_cmap("tab10" if len(shown) <= 10 else "tab20")
        colour = {c: palette(k % palette.N) for k, c in enumerate(shown)}
        other = (0.75, 0.75, 0.75, 1.0)
        # the whole video, as the thumbnails span it (the tail shorter than a stride has no snippet)
        end = at(max(snippets.starts[-1] + snippets.window, snippets.num_frames))

        fig = plt.figure(figsize=(12, 2.0 + 0.45 * len(names) + 2.2), layout="constrained")
        grid = fig.add_gridspec(3, 1, height_ratios=[1.6, 0.45 * len(names), 2.2])
        strip = fig.add_subplot(grid[0])
        if snippets.thumbnails:
            images = [image[:, :, ::-1] for _, image in snippets.thumbnails]  # BGR to RGB
            height = images[0].shape[0]
            row = np.concatenate([np.pad(img, ((0, height - img.shape[0]), (0, 2), (0, 0)), constant_values=255)
                                  for img in images], axis=1)
            strip.imshow(row)
            strip.set_xticks([(k + 0.5) * row.shape[1] / len(images) for k in range(len(images))])
            strip.set_xticklabels(time_labels([at(i) for i, _ in snippets.thumbnails]) if timed
                                  else [str(i) for i, _ in snippets.thumbnails], fontsize=7)
            strip.set_yticks([])
        else:
            strip.axis("off")
        strip.set_title(f"{title}: top class per snippet (window {snippets.window}, stride {snippets.stride} frames)",
                        fontsize=10)

        bands = fig.add_subplot(grid[1])
        for k, n in enumerate(names):
            top = probs[n].argmax(axis=1)
            for t, s in enumerate(starts):
                c = int(top[t])
                base = colour.get(c, other)
                alpha = 0.25 + 0.75 * float(probs[n][t, c])  # paler where the stream is less sure
                bands.broken_barh([(s, reach[t] - s)], (k - 0.4, 0.8), facecolors=[(*base[:3], alpha)])
        bands.set_yticks(range(len(names)))
        bands.set_yticklabels(names)
        bands.set_ylim(len(names) - 0.5, -0.5)
        bands.set_xlim(0, end)
        bands.set_xticklabels([])
        handles = [Patch(color=colour[c], label=classes[c]) for c in shown]
        if len(shown) < len(np.unique(np.concatenate([probs[n].argmax(axis=1) for n in names]))):
            handles.append(Patch(color=other, label="other"))
        bands.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)

        curves = fig.add_subplot(grid[2])
        centres = (starts + ends) / 2
        for c in shown:
            curves.plot(centres, main[:, c], color=colour[c], label=classes[c], linewidth=1.5)
        curves.set_xlim(0, end)
        curves.set_ylim(0, 1)
        curves.set_xlabel(f"time ({unit})")
        curves.set_ylabel(f"{'fused' if 'fusion' in probs else names[0]} probability")
        curves.grid(alpha=0.3)
        return fig
