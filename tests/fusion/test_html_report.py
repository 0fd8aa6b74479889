"""report.html of a tiny evaluation, opened in headless Chromium: it loads without a complaint, fetches
nothing, shows every picture and table, sorts, and its contents agree with the files of the run."""
import base64
import json
import re
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from flow.encoding import decode
from flow.store import open_store
from flow.visualise import flow_to_colour
from fusion import fuse, html_report
from fusion.config import EvalConfig
from fusion.stage import EvalJob, run_eval
from tests.browser import open_page

from .conftest import CLASSES

CFG = EvalConfig(clips=2, crops="center", batch_views=5, svm_clips=2, svm_cs=[0.1, 10.0], svm_folds=3, jobs=1)


def metrics_lines(steps: int = 12) -> str:
    records = []
    for step in range(1, steps + 1):
        records.append({"kind": "train", "step": step, "epoch": step / 6, "loss": 1.2 / step ** 0.5,
                        "acc": step / steps, "lr": 0.01})
        if step % 6 == 0:
            records.append({"kind": "val", "step": step, "epoch": step // 6, "val_loss": 0.9, "val_acc": 0.5,
                            "val_video_acc": 0.6})
    records.append({"kind": "val", "step": steps, "epoch": 2, "val_loss": 0.8, "val_acc": 0.6})  # an older log's
    return "".join(json.dumps(r) + "\n" for r in records) + '{"kind": "train", "step": 13, "lo'  # cut by a kill


@pytest.fixture(scope="module")
def tiny_run(tiny_store, tiny_checkpoints, tmp_path_factory):
    """An evaluation of both streams with training curves, one held-out group and one missing test video."""
    store, train, test = tiny_store
    root = tmp_path_factory.mktemp("html_run")
    streams = {}
    for name, folder in tiny_checkpoints.items():
        streams[name] = root / "train" / name
        streams[name].mkdir(parents=True)
        shutil.copy(folder / "last.pt", streams[name] / "last.pt")
        (streams[name] / "metrics.jsonl").write_text(metrics_lines())
    val = [item for item in train if item[0].endswith("_04")]
    fit = [item for item in train if item not in val]
    out = root / "eval"
    evaluation = EvalJob(open_store(store), streams, fit, test + [("Blue/v_Blue_99", (2,))], CLASSES,
                         protocol="tiny split 1", val=val, val_note="group 04")
    run_eval(evaluation, CFG, out)
    return out, store


@pytest.fixture(scope="module")
def page(tiny_run):
    with open_page(tiny_run[0] / "report.html") as p:
        yield p


def test_the_page_loads_in_a_browser_without_a_complaint_and_fetches_nothing(page, tiny_run):
    assert page.complaints() == []
    requested = page.requested()
    assert requested and all(url.startswith(("file:", "data:")) for url in requested), requested
    assert page.evaluate("document.title") == "Evaluation: tiny split 1"
    # Every picture decoded: two training curves, the fusion-weight curve, then a frame and a flow per worst video.
    images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
    worst = page.evaluate("document.querySelectorAll('#worst .video').length")
    assert worst >= 1
    assert len(images) == 3 + 2 * worst
    assert all(done and width > 0 for done, width, _ in images), images


def test_the_page_shows_every_table(page, tiny_run):
    out = tiny_run[0]
    results = pd.read_csv(out / "results.csv")
    rows = page.evaluate("Array.from(document.querySelectorAll('#results table tbody tr'))"
                         ".map(r => Array.from(r.cells).map(c => c.textContent.trim()))")
    assert [r[0] for r in rows] == results["method"].tolist()
    # video_hit@1 is the third column (method, clip_hit@1, video_hit@1, ...), 2 decimals like results.md
    assert [r[2] for r in rows] == [f"{v:.2f}" for v in results["video_hit@1"]]
    per_class = page.evaluate("Array.from(document.querySelectorAll('#per-class-table tbody tr'))"
                              ".map(r => r.cells[0].textContent)")
    assert per_class == CLASSES
    # 3 classes: the confusion matrices are tables with every count, one per drawn method
    matrices = page.evaluate("Array.from(document.querySelectorAll('table.matrix')).map(t => t.tBodies[0].rows.length)")
    assert matrices == [3, 3, 3, 3]
    excluded = page.evaluate("document.querySelector('#excluded table tbody').textContent")
    assert "Blue/v_Blue_99" in excluded


def test_the_per_class_table_sorts(page):
    def column(index: int) -> list:
        return page.evaluate(f"Array.from(document.querySelectorAll('#per-class-table tbody tr'))"
                             f".map(r => r.cells[{index}].dataset.value ?? r.cells[{index}].textContent)")

    names = page.evaluate("Array.from(document.querySelectorAll('#per-class-table thead th')).map(h => h.textContent)")
    rgb = names.index("rgb")
    header = f"document.querySelectorAll('#per-class-table thead th')[{rgb}]"
    before = [float(v) for v in column(rgb)]
    page.evaluate(f"{header}.click()")
    assert [float(v) for v in column(rgb)] == sorted(before)
    page.evaluate(f"{header}.click()")
    assert [float(v) for v in column(rgb)] == sorted(before, reverse=True)
    assert page.evaluate(f"{header}.getAttribute('aria-sort')") == "descending"
    page.evaluate("document.querySelectorAll('#per-class-table thead th')[0].click()")
    assert column(0) == sorted(CLASSES, key=str.lower)
    # the rows moved whole: each class keeps its own accuracy
    table = dict(zip(column(0), column(rgb), strict=True))
    page.evaluate("document.querySelectorAll('#per-class-table thead th')[0].click()")
    assert dict(zip(column(0), column(rgb), strict=True)) == table and column(0) == sorted(CLASSES, reverse=True)


def test_the_screenshot_is_not_blank(page):
    shot = cv2.imdecode(np.frombuffer(page.screenshot(), np.uint8), cv2.IMREAD_COLOR)
    assert shot.shape[0] > 2000 and shot.shape[1] >= 1280  # the whole page, not one window
    assert shot.std() > 20
    colours = np.unique(shot[::4, ::4].reshape(-1, 3), axis=0)
    assert len(colours) > 200  # text, tables, plots and frames; a blank or unstyled page has a handful


def _data_image(uri: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)


def test_worst_videos_are_the_most_confident_mistakes_with_their_stored_frames(page, tiny_run):
    out, store_root = tiny_run
    scores = pd.read_csv(out / "scores.csv")
    fusion = scores[scores["method"] == "fusion"]
    wrong = fusion[fusion["predicted"] != fusion["labels"]]
    inputs = json.loads((out / "report_inputs.json").read_text())
    with np.load(out / "scores.npz") as saved:
        row = {str(v): i for i, v in enumerate(saved["video_ids"])}
        probs = fuse.probabilities(saved["fusion"], inputs["chosen"][0])
    confidence = {v: probs[row[v]].max() for v in wrong["video_id"]}
    expected = sorted(confidence, key=lambda v: (-confidence[v], v))[:html_report.WORST]
    shown = page.evaluate("Array.from(document.querySelectorAll('#worst .video code')).map(c => c.textContent)")
    assert shown == expected and len(expected) >= 1
    # The first video's pictures are its stored middle frame and flow, pixel for pixel.
    store = open_store(store_root)
    with store.open(expected[0]) as video:
        index = video.num_flows // 2
        rgb, flow = video.rgb([index])[0], decode(video.flow([index]), store.bound)[0]
    sources = page.evaluate("Array.from(document.querySelectorAll('#worst .video')[0].querySelectorAll('img'))"
                            ".map(i => i.src)")
    assert rgb.shape[1] < html_report.FRAME_PX  # small frames go lossless
    shown_rgb, shown_flow = (_data_image(s) for s in sources)
    np.testing.assert_array_equal(shown_rgb, rgb)
    np.testing.assert_array_equal(shown_flow, flow_to_colour(flow, store.bound / 4))
    tops = page.evaluate("Array.from(document.querySelectorAll('#worst .video')[0].querySelectorAll('thead th'))"
                         ".map(h => h.textContent)")
    assert tops == ["rgb top-3", "flow top-3", "fusion top-3"]


def test_the_page_is_one_file_that_names_nothing_outside(tiny_run):
    text = (tiny_run[0] / "report.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert links and all(link.startswith(("data:", "#")) for link in links), links
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text
