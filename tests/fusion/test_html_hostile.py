"""report.html with class names and video ids that are markup (folder names are users' text): opened in
headless Chromium, every one shows as text and none runs; at 40 classes the confusion maps carry the
names in their JSON cell data, at 3 in tables."""
import numpy as np
import pytest

from fusion import report
from fusion.report import EvalReport, MethodScores
from tests.browser import open_page

HOSTILE = ['</script><script>window.pwned = 1</script>', '<img src=x onerror="window.pwned = 2">',
           '"><svg onload="window.pwned = 3">', "{{ 7 * 7 }} & &amp; 'quoted'"]


def hostile_report(out, n: int):
    """An eval report of `n` classes, the first four named HOSTILE, and video ids of markup too."""
    rng = np.random.default_rng(0)
    classes = [*HOSTILE, *(f"class {c}" for c in range(len(HOSTILE), n))][:n]
    labels = [(c,) for c in range(n) for _ in range(2)]
    rgb = rng.normal(size=(len(labels), n)) + 3 * np.eye(n)[[c for (c,) in labels]]
    flow = rng.normal(size=(len(labels), n))
    methods = [MethodScores("rgb", rgb, ""), MethodScores("flow", flow, ""), MethodScores("fusion", rgb + flow, "")]
    table = report.results_table(methods, labels, "<b>protocol</b>", 0)
    video_ids = [f"{HOSTILE[i % len(HOSTILE)]}/v{i}" for i in range(len(labels))]
    report.write_report(out, EvalReport("Evaluation: <i>t</i>", table, ["a <script>window.pwned = 4</script> note"],
                                        methods, methods, video_ids, labels, classes,
                                        {"<img src=y onerror='window.pwned = 5'>": "no flow"}))
    return classes


@pytest.mark.parametrize("n", [3, 40])
def test_markup_in_names_is_shown_as_text_and_never_runs(tmp_path, n):
    classes = hostile_report(tmp_path / "eval", n)
    with open_page(tmp_path / "eval" / "report.html") as page:
        assert page.evaluate("typeof window.pwned") == "undefined"
        assert page.complaints() == []
        assert page.evaluate("document.querySelectorAll('#per-class-table script, #per-class-table img').length") == 0
        shown = page.evaluate("Array.from(document.querySelectorAll('#per-class-table tbody tr'))"
                              ".map(r => r.cells[0].textContent)")
        assert sorted(shown) == sorted(classes)
        assert page.evaluate("document.title") == "Evaluation: <i>t</i>"
        text = page.evaluate("document.body.textContent")
        assert "a <script>window.pwned = 4</script> note" in text and "<img src=y onerror='window.pwned = 5'>" in text
        if n > 12:  # the confusion maps' cell data: JSON inside <script type="application/json">
            cells = page.evaluate("JSON.parse(document.getElementById('cells-1').textContent)")
            assert HOSTILE[0] in repr(cells)


def test_two_classes_give_top_two_tables_not_a_failed_page(tmp_path):
    """The worst videos' tables asked for a third best class: with two classes the page's template
    failed (jinja2's "list object has no element 2") and eval stopped after all its work."""
    labels = [(0,), (1,), (0,), (1,)]
    wrong = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])  # every video called the other class
    methods = [MethodScores("rgb", wrong, ""), MethodScores("flow", wrong, ""), MethodScores("fusion", wrong, "")]
    table = report.results_table(methods, labels, "two classes", 0)
    report.write_report(tmp_path / "eval", EvalReport("Evaluation", table, [], methods, methods,
                                                      [f"c/v{i}" for i in range(4)], labels, ["a", "b"], {}))
    page = (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")
    assert "fusion top-2" in page and "top-3" not in page
