"""The report's pictures at 3, 101 and 400 classes, the most-confused table on a worked example,
and the flow contact sheet."""
import struct

import numpy as np
import pandas as pd
import pytest

from fusion import figures, report
from fusion.report import MethodScores


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # IHDR: width, height


def scores_for(n: int, videos_per_class: int = 3, seed: int = 0):
    """Scores that get most videos right and send the rest to the next class."""
    rng = np.random.default_rng(seed)
    labels = [(c,) for c in range(n) for _ in range(videos_per_class)]
    scores = rng.normal(0, 0.1, (len(labels), n))
    for row, (c,) in enumerate(labels):
        scores[row, (c + 1) % n if rng.random() < 0.3 else c] += 5
    return scores, labels


@pytest.mark.parametrize("n", [3, 101, 400])
def test_pictures_for_3_101_and_400_classes(tmp_path, n):
    classes = [f"class_{i:03d}_name" for i in range(n)]
    rgb, labels = scores_for(n, seed=1)
    flow, _ = scores_for(n, seed=2)
    methods = [MethodScores("rgb", rgb, ""), MethodScores("flow", flow, ""),
               MethodScores("fusion", (rgb + 1.5 * flow) / 2.5, "")]
    table = report.results_table(methods, labels, "t", 0)
    curves = {"test, raw": ([0.0, 1.0, 1.5, 2.0], np.array([0.5, 0.6, 0.7, 0.65]))}
    report.write_report(tmp_path, table, "t", [], methods, methods, [f"v{i}" for i in range(len(labels))], labels,
                        classes, {}, curves, ("raw", 1.5))
    limits = {"confusion.png": 12e6, "per_class.png": 4e6, "fusion_weight.png": 0.5e6}
    for name, max_bytes in limits.items():
        path = tmp_path / name
        width, height = png_size(path)
        assert path.stat().st_size < max_bytes, name
        assert 200 < width < 6000 and 200 < height < 7000, (name, width, height)
    text = (tmp_path / "results.md").read_text()
    assert ("## Most confused pairs (fusion)" in text) == (n > figures.SMALL)


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


def test_contact_sheet_and_wheel_legend(tmp_path):
    legend = figures.wheel_legend(33)
    assert legend.shape == (33, 33, 3) and legend.dtype == np.uint8
    assert (legend[16, 16] == 255).all()  # no motion at the centre: white
    assert (legend[0, 0] == 255).all()  # outside the disc: white background
    # Rightward motion at the rim is red in the Middlebury wheel (BGR: red is the last channel).
    assert legend[16, 32, 2] == 255 and legend[16, 32, 0] < 40
    rgb = np.zeros((3, 24, 32, 3), np.uint8)
    flows = np.zeros((3, 24, 32, 2), np.float32)
    flows[..., 0] = 1.0
    path = figures.contact_sheet(tmp_path / "sheet.png", rgb, flows, [0, 4, 8], 2.0, "v: test")
    width, height = png_size(path)
    assert width > height > 100
