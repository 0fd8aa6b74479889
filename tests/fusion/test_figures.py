"""The report's pictures read back as pixels: confusion cells where the counts put them, per-class bars
as long as their accuracy and markers whole at 0 and 100, labels legible at 12 and 400 classes, the
flow contact sheet's colours; the most-confused table on a worked example; the page's size at 400."""
import numpy as np
import pandas as pd
import pytest

from fusion import figures, report
from fusion.report import EvalReport, MethodScores
from tests.pictures import blobs, read_png

VIRIDIS_TOP = (37, 231, 253)  # BGR of viridis at 1.0: a cell holding all of its row's videos
ORANGE = (82, 132, 221)  # BGR of figures.MARKER_COLOURS[0], the first marker method
BAR = (176, 114, 76)  # BGR of the bars' #4c72b0


def scores_for(n: int, videos_per_class: int = 3, seed: int = 0):
    """Scores that get most videos right and send the rest to the next class."""
    rng = np.random.default_rng(seed)
    labels = [(c,) for c in range(n) for _ in range(videos_per_class)]
    scores = rng.normal(0, 0.1, (len(labels), n))
    for row, (c,) in enumerate(labels):
        scores[row, (c + 1) % n if rng.random() < 0.3 else c] += 5
    return scores, labels


@pytest.mark.parametrize("n", [3, 101, 400])
def test_pictures_and_page_for_3_101_and_400_classes(tmp_path, n):
    classes = [f"class_{i:03d}_name" for i in range(n)]
    rgb, labels = scores_for(n, seed=1)
    flow, _ = scores_for(n, seed=2)
    methods = [MethodScores("rgb", rgb, ""), MethodScores("flow", flow, ""),
               MethodScores("fusion", (rgb + 1.5 * flow) / 2.5, "")]
    table = report.results_table(methods, labels, "t", 0)
    curves = {"test, raw": ([0.0, 1.0, 1.5, 2.0], np.array([0.5, 0.6, 0.7, 0.65]))}
    report.write_report(tmp_path, EvalReport("t", table, [], methods, methods, [f"v{i}" for i in range(len(labels))],
                                             labels, classes, {}, curves, ("raw", 1.5)))
    limits = {"confusion.png": 12e6, "per_class.png": 4e6, "fusion_weight.png": 0.5e6}
    for name, max_bytes in limits.items():
        path = tmp_path / name
        image = read_png(path)
        assert path.stat().st_size < max_bytes, name
        assert 200 < image.shape[1] < 6000 and 200 < image.shape[0] < 7000, (name, image.shape)
        assert image.std() > 20, f"{name} is (nearly) one colour"
    # The confusion pictures: about 70% of each row on the diagonal, viridis' top colour there.
    assert blobs(read_png(tmp_path / "confusion.png"), VIRIDIS_TOP, 30)
    text = (tmp_path / "results.md").read_text()
    assert ("## Most confused pairs (fusion)" in text) == (n > figures.SMALL)
    page = (tmp_path / "report.html").read_text()
    assert (tmp_path / "report.html").stat().st_size <= 5e6  # small enough to mail
    assert page.count('class="confusion-map"') == (3 if n > figures.SMALL else 0)
    assert page.count('<table class="matrix">') == (0 if n > figures.SMALL else 3)


@pytest.mark.parametrize("n", [3, 40])
def test_class_names_with_dollar_signs_are_drawn_as_written(tmp_path, n):
    """A class named "a$^$b" (a folder name) raised matplotlib's TeX parse error in savefig: no report."""
    classes = ["a$^$b", "save $$$ now", *(f"c{i}" for i in range(n - 2))]
    rgb, labels = scores_for(n, seed=1)
    methods = [MethodScores("rgb", rgb, "")]
    report.write_report(tmp_path, EvalReport("t", report.results_table(methods, labels, "t", 0), [], methods, methods,
                                             [f"v{i}" for i in range(len(labels))], labels, classes, {}, {}, None))
    assert read_png(tmp_path / "confusion.png").std() > 20 and read_png(tmp_path / "per_class.png").std() > 20
    fig = figures.per_class_figure(["rgb"], np.linspace(0, 100, n)[None], classes)
    assert {"a$^$b", "save $$$ now"} <= {t.get_text() for t in fig.axes[0].get_yticklabels()}


def test_confusion_cells_are_where_the_counts_put_them(tmp_path):
    classes = ["a", "b", "c"]
    labels = [(c,) for c in range(3) for _ in range(2)]
    right = np.eye(3)[[c for (c,) in labels]]
    shifted = np.eye(3)[[(c + 1) % 3 for (c,) in labels]]  # every video taken for the next class
    image = read_png(figures.confusion(tmp_path / "c.png", ["right", "shifted"], [right, shifted], labels, classes))
    # Full cells (share 1.0) are viridis' top colour; the colour bar's top is a thin strip, not a square.
    cells = [b for b in blobs(image, VIRIDIS_TOP, 20) if b[4] > 200 and 0.8 < b[2] / b[3] < 1.25]
    assert len(cells) == 6, cells
    by_x = sorted(cells)  # the left panel's three cells, then the right one's
    for panel, expected in ((by_x[:3], [0, 1, 2]), (by_x[3:], [1, 2, 0])):
        mine = sorted(panel, key=lambda b: b[1])  # top row first
        columns = np.argsort(np.argsort([b[0] for b in mine])).tolist()  # left-to-right rank of each row's cell
        assert columns == expected
        # equal cells, one per row, in three distinct rows
        assert len({b[1] for b in mine}) == 3 and max(b[4] for b in mine) < 1.3 * min(b[4] for b in mine)


def test_per_class_bars_and_markers_at_0_50_and_100(tmp_path):
    # Bars: the first method at 100, 50, 0 (sorted best first); markers: the second at 0, 50, 100.
    accuracy = np.array([[100.0, 50.0, 0.0], [0.0, 50.0, 100.0]])
    image = read_png(figures.per_class_bars(tmp_path / "p.png", ["fusion", "rgb"], accuracy, ["a", "b", "c"]))
    marks = [b for b in blobs(image, ORANGE, 25) if b[4] > 6]
    assert len(marks) == 4, marks  # three rows and the legend's
    legend, *rows = sorted(marks, key=lambda b: b[1])  # the legend sits above the axes
    # Whole markers: as many pixels at 0 and at 100 as at 50 (an axis ending at 0 or 100 halves them).
    sizes = [b[4] for b in rows]
    assert max(sizes) < 1.25 * min(sizes), sizes
    x0, x50, x100 = (b[0] + b[2] / 2 for b in rows)  # rows a, b, c: markers at 0, 50, 100
    assert abs((x50 - x0) - (x100 - x50)) <= 2 and x100 - x0 > 200
    # Bars: row a reaches 100, row b 50, row c has none.
    bars = sorted((b for b in blobs(image, BAR, 10) if b[4] > 50 and b[3] > 5), key=lambda b: b[1])
    bars = [b for b in bars if b[1] > legend[1] + legend[3]]  # the legend's patch aside
    assert len(bars) == 2, bars
    assert abs(bars[0][0] - x0) <= 3 and abs(bars[0][0] + bars[0][2] - x100) <= 3
    assert abs(bars[1][0] + bars[1][2] - x50) <= 3


def test_long_class_names_stay_inside_the_per_class_picture():
    """At 400 classes the left margin was 30% of the width whatever the names: long ones lost their
    starts ("_action_name_very_long_action_name_"), and with them what tells the rows apart. Now the
    margin follows the names, up to half the width, and longer ones are cut in the middle."""
    n = 400
    classes = [f"class_{i:03d}_" + "very_long_action_name_" * (1 + i % 3) for i in range(n)]
    fig = figures.per_class_figure(["fusion"], np.linspace(0, 100, n)[None], classes)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    labels = [t for t in fig.axes[0].get_yticklabels() if t.get_text()]
    assert len(labels) == n and all(t.get_window_extent(renderer).x0 >= 0 for t in labels)
    texts = [t.get_text() for t in labels]
    assert [t[:9] for t in texts] == [f"class_{i:03d}" for i in reversed(range(n))]  # best first
    assert "class_000_very_long_action_name_" in texts and any("..." in t for t in texts)
    assert all(t.endswith("action_name_") for t in texts)
    short = figures.per_class_figure(["fusion"], np.linspace(0, 100, n)[None], [f"c{i}" for i in range(n)])
    assert short.subplotpars.left < 0.1 < 0.45 < fig.subplotpars.left <= 0.5  # the bars get the width names leave


def test_long_names_that_differ_in_their_middle_are_told_apart_by_their_number():
    """Cut in the middle, "kinetics_..._017_..._clip" and "kinetics_..._018_..._clip" read the same:
    rows whose cuts collide keep their class number (" #18", the 18th class) after the cut; rows whose
    cut is their own carry none."""
    n = 400
    classes = [f"kinetics_{'a' * 40}_{i:03d}_{'b' * 40}_clip" for i in range(n - 1)] + ["short_one"]
    fig = figures.per_class_figure(["fusion"], np.linspace(0, 100, n)[None], classes)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    texts = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
    assert len(texts) == n == len(set(texts))
    assert "short_one" in texts  # its own: no number
    cut = [t for t in texts if t != "short_one"]
    assert all("..." in t and t.startswith("kinetics_") for t in cut)
    numbers = sorted(int(t.rsplit(" #", 1)[1]) for t in cut)
    assert numbers == list(range(1, n))  # the 1-based class numbers of the 399 long names
    assert all(t.get_window_extent(renderer).x0 >= 0 for t in fig.axes[0].get_yticklabels())


def _legible(fig, axis: str = "y") -> tuple[float, int]:
    """(the smallest tick-label height in pixels, how many pairs of neighbouring labels overlap)."""
    fig.set_dpi(figures.DPI)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    boxes = [t.get_window_extent(renderer) for ax in fig.axes[:1]
             for t in (ax.get_yticklabels() if axis == "y" else ax.get_xticklabels()) if t.get_text()]
    boxes.sort(key=lambda b: b.y0)
    overlaps = sum(1 for a, b in zip(boxes, boxes[1:], strict=False) if a.y1 > b.y0 + 0.5)
    heights = [t.get_fontsize() * figures.DPI / 72 for ax in fig.axes[:1] for t in ax.get_yticklabels() if t.get_text()]
    return min(heights), overlaps


@pytest.mark.parametrize("n", [12, 400])
def test_labels_are_legible_at_12_and_400_classes(n):
    classes = [f"class_{i:03d}_name" for i in range(n)]
    rgb, labels = scores_for(n, seed=1)
    fig = figures.confusion_figure(["rgb", "flow"], [rgb, rgb[::-1]], labels, classes)
    height, overlaps = _legible(fig)
    assert height >= 9 and overlaps == 0, (height, overlaps)  # 9 px: 6.5 pt at 110 dpi
    named = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
    assert len(named) == n if n <= figures.SMALL else n / 5 <= len(named) < n
    accuracy = np.stack([np.linspace(0, 100, n), np.linspace(100, 0, n)])
    fig = figures.per_class_figure(["fusion", "rgb"], accuracy, classes)
    height, overlaps = _legible(fig)
    assert height >= 9 and overlaps == 0, (height, overlaps)
    assert len([t for t in fig.axes[0].get_yticklabels() if t.get_text()]) == n  # every class named


def test_large_confusion_rows_sorted_by_class_accuracy():
    accuracy = np.array([[50.0, 100.0, np.nan, 0.0, 100.0], [50.0, 80.0, np.nan, 0.0, 100.0]])
    # means: 50, 90, nan, 0, 100 -> best first, NaN (no test video) last, ties by index
    assert figures.class_order(accuracy).tolist() == [4, 1, 0, 3, 2]
    assert figures.class_order(np.array([1.0, 1.0, 2.0])).tolist() == [2, 0, 1]


def test_most_confused_pairs_worked_example():
    classes = ["a", "b", "c", "d"]
    # True a: 4 videos, 2 taken for b, 1 for c. True b: 2 videos, both right. True c: 2 videos, 2 taken
    # for b. True d: 1 video, taken for a.
    labels = [(0,), (0,), (0,), (0,), (1,), (1,), (2,), (2,), (3,)]
    predicted = [0, 1, 1, 2, 1, 1, 1, 1, 0]
    scores = np.eye(4)[predicted]
    table = report.most_confused(scores, labels, classes)
    expected = pd.DataFrame({"true": ["c", "a", "d", "a"], "predicted": ["b", "b", "a", "c"],
                             "videos": [2, 2, 1, 1], "share": [100.0, 50.0, 100.0, 25.0]})
    pd.testing.assert_frame_equal(table, expected)
    assert len(report.most_confused(scores, labels, classes, top=2)) == 2
    text = report.confused_markdown("fusion", table)
    assert "| c | b | 2 | 100.0% |" in text and "| a | c | 1 | 25.0% |" in text
    perfect = report.most_confused(np.eye(4)[[0, 1]], [(0,), (1,)], classes)
    assert perfect.empty and "No test video" in report.confused_markdown("x", perfect)


def test_markdown_cells_hold_any_class_name():
    """A `|` or a line break in a class name (a folder name) split the confused-pairs row into extra
    cells or rows; the results table escaped `|` but kept line breaks."""
    table = pd.DataFrame({"true": ["a|b"], "predicted": ["two\nlines"], "videos": [3], "share": [50.0]})
    rows = [line for line in report.confused_markdown("x", table).splitlines() if line.startswith("| ")]
    assert rows[1:] == ["| a\\|b | two lines | 3 | 50.0% |"]
    methods = pd.DataFrame({"method": ["odd |\r\nname"], "video_hit@1": [12.345]})
    assert report.to_markdown(methods, "t").splitlines()[-1] == "| odd \\| name | 12.35 |"
    # HTML in a class name is text, not markup, to a Markdown renderer (backslash escapes)
    html = pd.DataFrame({"true": ["<script>alert(1)</script>"], "predicted": ["A&amp;B"], "videos": [1],
                         "share": [1.0]})
    rows = [line for line in report.confused_markdown("x", html).splitlines() if line.startswith("| ")]
    assert rows[1:] == ["| \\<script>alert(1)\\</script> | A\\&amp;B | 1 | 1.0% |"]
