"""The report's pictures (matplotlib, Agg): confusion matrices that stay readable from 3 to 400 classes,
per-class accuracy bars, and accuracy against the fusion weight.

Each function draws one PNG and writes it under a temporary name first, so a half-written picture
is never taken for done. Sizes grow with the number of classes but are capped: a 400-class
confusion matrix is one pixel block per class pair, not one labelled cell.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusion import metrics
from fusion.metrics import Labels
from p3dbase.atomic import atomic_write
from p3dbase.plotting import drawing, pyplot

SMALL = 30  # up to this many classes a confusion matrix shows every count and every name
NAMED = 150  # up to this many every class name is a tick label; beyond, every k-th
DPI = 110
LABEL_PT = 6.5  # tick labels of the large pictures: 10 px at DPI, the smallest size read without a loupe
LINE = 1.2  # a label's line height, in font sizes


def _save(fig, path: Path, tight: bool = True) -> Path:
    """Write `fig` as PNG (temporary name, then rename). `tight=False` for figures with hundreds of
    labels, whose margins are set by hand: the tight box lays out every label twice."""
    with drawing():
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_write(path) as f:
                fig.savefig(f, dpi=DPI, format="png", bbox_inches="tight" if tight else None)
        finally:
            pyplot().close(fig)
        return path


def png_bytes(fig, dpi: float = DPI) -> bytes:
    """`fig` as PNG bytes (for a page that inlines its pictures); the figure is closed."""
    with drawing():
        buffer = io.BytesIO()
        try:
            fig.savefig(buffer, dpi=dpi, format="png", bbox_inches="tight")
        finally:
            pyplot().close(fig)
        return buffer.getvalue()


def _label_step(row_inches: float, font_points: float) -> int:
    """Label every k-th of rows `row_inches` apart so that labels of `font_points` never overlap."""
    return max(1, int(np.ceil(LINE * font_points / 72 / max(row_inches, 1e-9))))


def class_order(per_class: np.ndarray) -> np.ndarray:
    """Classes from the best recognised to the worst (mean of the methods' per-class hit@1, NaN last;
    ties by index), the order of the large confusion matrices and the bars."""
    if per_class.ndim == 2:
        seen = ~np.isnan(per_class).all(axis=0)
        mean = np.full(per_class.shape[1], -1.0)
        mean[seen] = np.nanmean(per_class[:, seen], axis=0)
    else:
        mean = np.where(np.isnan(per_class), -1.0, per_class)
    return np.lexsort((np.arange(len(mean)), -mean))


def confusion(path: Path, names: Sequence[str], scores: Sequence[np.ndarray], labels: Labels,
              classes: Sequence[str]) -> Path:
    """confusion.png: `confusion_figure` written to `path`."""
    return _save(confusion_figure(names, scores, labels, classes), path)


def confusion_figure(names: Sequence[str], scores: Sequence[np.ndarray], labels: Labels, classes: Sequence[str]):
    """Row-normalised confusion matrices (rows: true class), one panel per method (`names`, `scores`).

    Up to SMALL classes: side by side, every cell with a count printed and every class named. More:
    panels in a grid, classes sorted by accuracy (best first, the same order on both axes and in
    every panel), a square-root colour scale so that rare confusions show, and the true classes named
    down the left at LABEL_PT (every k-th where the rows are closer than a line); results.md and
    report.html list the most confused pairs by name.
    """
    with drawing():
        plt = pyplot()
        from matplotlib.colors import PowerNorm

        n, k = len(classes), len(names)
        counts = [metrics.confusion_matrix(s, labels, n).astype(float) for s in scores]
        hits = np.stack([metrics.per_class_accuracy(metrics.hits_at_k(s, labels, 1), labels, n) for s in scores])
        if n <= SMALL:
            order = np.arange(n)
            cols, rows, side = k, 1, max(3.2, 0.32 * n + 1.5)
        else:
            order = class_order(hits)
            cols = 1 if k == 1 else 2
            rows = -(-k // cols)
            side = min(15.0, 3.0 + 0.06 * n)  # 101 classes: 9 in; 400: 15 in, about 4 px per class
        fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 1.5, side * rows + 0.6), squeeze=False)
        image = None
        labels_shown = [classes[i] for i in order]
        # axes.ravel() may hold one spare panel (an odd number of methods in two columns): strict=False
        for ax, name, c, h in zip(axes.ravel(), names, counts, hits, strict=False):
            c = c[np.ix_(order, order)]
            rates = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
            norm = PowerNorm(0.5, vmin=0, vmax=1) if n > SMALL else None
            image = ax.imshow(rates, cmap="viridis", interpolation="nearest", norm=norm,
                              **({} if norm else {"vmin": 0, "vmax": 1}))
            acc = 100 * np.nanmean(h)
            ax.set_title(f"{name}: mean class accuracy {acc:.1f}%" + ("" if n <= SMALL else " (classes by accuracy)"),
                         fontsize=9)
            ax.set_xlabel("predicted" if n <= SMALL else "predicted (classes in the order of the rows)")
            if n <= SMALL:
                for (i, j), value in np.ndenumerate(c):
                    if value:
                        ax.text(j, i, f"{int(value)}", ha="center", va="center", fontsize=7,
                                color="black" if rates[i, j] > 0.6 else "white")
        for ax in axes.ravel()[k:]:
            ax.axis("off")
        if image is not None:
            fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, label="share of the true class's videos")
        # Tick labels last: only now are the panels at their final size (the colorbar took its share).
        for panel, ax in enumerate(axes.ravel()[:k]):
            first = panel % cols == 0  # names down the left of each row of panels only
            if n <= SMALL:
                ax.set_xticks(range(n), labels_shown, rotation=90, fontsize=7)
                ax.set_yticks(range(n), labels_shown if first else [], fontsize=7)
                if first:
                    ax.set_ylabel("true")
                continue
            ax.apply_aspect()
            row_inches = ax.get_position().height * fig.get_figheight() / n
            ticks = list(range(0, n, _label_step(row_inches, LABEL_PT)))
            ax.set_xticks([])
            ax.set_yticks(ticks, [labels_shown[t] for t in ticks] if first else [], fontsize=LABEL_PT)
            if first:
                ax.set_ylabel("true" + ("" if len(ticks) == n else f" (every {ticks[1]}th class named)"))
        return fig


def per_class_bars(path: Path, names: Sequence[str], accuracy: np.ndarray, classes: Sequence[str]) -> Path:
    """per_class.png: `per_class_figure` written to `path`."""
    return _save(per_class_figure(names, accuracy, classes), path, tight=len(classes) <= SMALL)


MARKER_COLOURS = ("#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")  # none near the bars' blue


def per_class_figure(names: Sequence[str], accuracy: np.ndarray, classes: Sequence[str]):
    """Per-class video hit@1 (percent, `accuracy` [methods, classes]) as horizontal bars of the first
    method, sorted best first, with the other methods as markers on the same rows. The markers of
    each method sit at their own height within the row and the axis runs from -5 to 105, so a
    marker at 0 or at 100 is drawn whole and two methods at the same value do not hide each other."""
    with drawing():
        plt = pyplot()
        n = len(classes)
        order = class_order(accuracy[0])
        height = min(60.0, max(2.5, 0.13 * n + 1.6))
        width = 7.5
        fig, ax = plt.subplots(figsize=(width, height))
        y = np.arange(n)
        ax.barh(y, np.nan_to_num(accuracy[0][order]), color="#4c72b0", height=0.8, label=names[0])
        markers = "os^Dv<>"
        others = len(names) - 1
        for m, (name, acc) in enumerate(zip(names[1:], accuracy[1:], strict=True)):
            offset = (m - (others - 1) / 2) * min(0.25, 0.6 / max(others, 1))
            ax.scatter(acc[order], y + offset, s=18, marker=markers[m % len(markers)], zorder=3, label=name,
                       color=MARKER_COLOURS[m % len(MARKER_COLOURS)], edgecolors="black", linewidths=0.4, clip_on=False)
        ax.set_ylim(n - 0.5, -0.5)  # best first, at the top
        ax.set_xlim(-5, 105)
        ax.set_xticks(range(0, 101, 20))
        ax.set_xlabel("video hit@1 of the class's test videos (%)")
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)  # the grid under the bars: a bar stays one block of colour
        # Above the axes: a legend inside would cover the rows under it.
        ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(names), frameon=False)
        # inches for the title and the legend above, the axis label below
        fig.subplots_adjust(top=1 - 0.7 / height, bottom=0.6 / height)
        fig.suptitle(f"Per-class accuracy, sorted by {names[0]}", fontsize=9, y=1 - 0.1 / height, va="top")
        row_inches = ax.get_position().height * height / max(n, 1)
        font = min(8.0, row_inches * 72 / LINE)  # as large as the rows allow, up to 8 pt
        ticks = y if font >= LABEL_PT else y[::_label_step(row_inches, LABEL_PT)]  # else every k-th named
        font = max(font, LABEL_PT)
        if n > SMALL:  # many classes: the margin set here (no tight box), as wide as the names, up to half
            labels, inches = _fit_labels(fig, [classes[order[t]] for t in ticks], font, width / 2 - 0.2,
                                         tags=[f" #{order[t] + 1}" for t in ticks])
            fig.subplots_adjust(left=(inches + 0.2) / width, right=0.97)
        else:
            labels = [classes[order[t]] for t in ticks]
        ax.set_yticks(ticks, labels, fontsize=font)
        return fig


def _fit_labels(fig, labels: Sequence[str], points: float, inches: float,
                tags: Sequence[str] | None = None) -> tuple[list[str], float]:
    """`labels` at `points`, each longer than `inches` cut in its middle ("class_001_ver...ion_name": a
    class is told by its start and end), and the widest one's width in inches. A fixed margin cut the
    starts of long names off at the figure's edge, and with them what tells the rows apart. Names that
    differ only in their middle would be cut alike: those keep their `tags` (" #12": the 12th class, the 12th row of
    per_class.csv) after the cut, so that no two rows read the same."""
    from matplotlib.font_manager import FontProperties

    renderer, font = fig.canvas.get_renderer(), FontProperties(size=points)

    def width(text: str) -> float:
        return renderer.get_text_width_height_descent(text, font, ismath=False)[0] / renderer.dpi

    def fit(label: str, tag: str = "") -> tuple[str, float]:
        keep, cut, w = len(label), label + tag, width(label + tag)
        while w > inches and keep > 8:  # off the middle: about the share of characters that is too wide
            keep -= max(1, int(keep * (w - inches) / w))
            cut = _middle_cut(label, keep) + tag
            w = width(cut)
        return cut, w

    fitted = [fit(label) for label in labels]
    if tags is not None:
        seen: dict[str, set[str]] = {}
        for label, (cut, _) in zip(labels, fitted, strict=True):
            seen.setdefault(cut, set()).add(label)
        fitted = [fit(label, tag) if len(seen[cut]) > 1 else (cut, w)
                  for label, tag, (cut, w) in zip(labels, tags, fitted, strict=True)]
    return [cut for cut, _ in fitted], max((w for _, w in fitted), default=0.0)


def _middle_cut(text: str, keep: int) -> str:
    """`text` with its middle replaced by "..." so that `keep` of its characters remain."""
    return text if keep >= len(text) else f"{text[:(keep + 1) // 2]}...{text[len(text) - keep // 2:]}"


def weight_curve(path: Path, curves: dict[str, tuple[Sequence[float], np.ndarray]],
                 chosen: tuple[str, float] | None = None) -> Path:
    """fusion_weight.png: `weight_figure` written to `path`."""
    return _save(weight_figure(curves, chosen), path)


def weight_figure(curves: dict[str, tuple[Sequence[float], np.ndarray]], chosen: tuple[str, float] | None = None):
    """Video hit@1 (percent) against the flow weight (RGB weight 1), one line per curve
    ({"test, raw": (weights, hit@1 in 0..1), ...}); `chosen` = (score kind, weight) is marked."""
    with drawing():
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6.0, 3.8))
        for label, (weights, acc) in curves.items():
            style = "--" if label.startswith("held-out") else "-"
            ax.plot(weights, 100 * np.asarray(acc), style, marker="o", markersize=3, label=label)
        if chosen is not None:
            ax.axvline(chosen[1], color="grey", lw=0.8, ls=":")
            ax.text(chosen[1], ax.get_ylim()[1], f" used: {chosen[0]} 1:{chosen[1]:g}", fontsize=7, va="top")
        ax.set_xlabel("flow weight (RGB weight 1)")
        ax.set_ylabel("video hit@1 (%)")
        ax.set_title("Late fusion: accuracy against the flow weight", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        return fig
