"""`python -m pipeline report WORK_DIR` rebuilds report.html of every evaluation and transfer report from
their files; the transfer page in a real browser: chance, the paper's figure, the stand-in caveat."""
import json
import re
import sys

import cv2
import numpy as np
import pandas as pd
import pytest

from fusion import report
from fusion.report import EvalReport, MethodScores
from pipeline.cli import main
from pipeline.transfer.report import COLUMNS, STAND_IN, TransferReport, chart_figure, comparison, write_report
from streams.checkpoint import file_sha256
from tests.browser import open_page

STAMP = re.compile(r"Written \d{4}-\d\d-\d\d \d\d:\d\d UTC")


def eval_report(out, n: int = 12):
    """An evaluation report of `n` classes from made-up scores (no store: the page says so)."""
    rng = np.random.default_rng(0)
    labels = [(c,) for c in range(n) for _ in range(2)]
    rgb = rng.normal(size=(len(labels), n)) + 3 * np.eye(n)[[c for (c,) in labels]]
    flow = rng.normal(size=(len(labels), n))
    methods = [MethodScores("rgb", rgb, ""), MethodScores("flow", flow, ""), MethodScores("fusion", rgb + flow, "")]
    table = report.results_table(methods, labels, "t", 0)
    report.write_report(out, EvalReport("Evaluation: t", table, ["a note"], methods, methods,
                                        [f"C{c}/v{i}" for i, (c,) in enumerate(labels)], labels,
                                        [f"class {c}" for c in range(n)], {"C0/gone": "no flow"}))
    return table


def transfer_table() -> pd.DataFrame:
    rows = [("ucf101", "three_split", "rgb", 61.5), ("aslan", "aslan_view2", "rgb", 55.0),
            ("yupenn", "loo", "rgb", 40.0)]
    return pd.DataFrame([{"benchmark": b, "protocol": p, "stream": s, "accuracy": a, "se": np.nan, "auc": np.nan,
                          "hit@3": np.nan, "mAP": np.nan, "videos": 30, "excluded": 1, "selected": "C=1 (cv)",
                          "details": ""} for b, p, s, a in rows], columns=COLUMNS)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("work")
    split = eval_report(tmp_path / "eval" / "split1")
    report.write_average(tmp_path / "eval", report.average_tables([split], "t average"), "Evaluation: average",
                         ["Mean over 1 split."])
    eval_report(tmp_path / "runs" / "other" / "eval", n=40)
    write_report(tmp_path / "transfer", TransferReport(
        transfer_table(), ["Streams: rgb = x.pt"], {"ucf101": "ucf101", "aslan": "aslan", "yupenn": "yupenn"},
        {"ucf101": 101, "aslan": 432, "yupenn": 14}, stand_ins=["ucf101", "yupenn"]))
    (tmp_path / "eval" / "split1" / "cache").mkdir()  # entered by no search
    return tmp_path


def test_report_rebuilds_every_page_from_the_files(work, capsys):
    pages = [work / "eval" / "split1" / "report.html", work / "runs" / "other" / "eval" / "report.html",
             work / "transfer" / "report.html", work / "eval" / "report.html"]
    before = [STAMP.sub("", p.read_text()) for p in pages]
    for p in pages:
        p.unlink()
    marker = work / "eval" / "split1" / "report.json"
    listing = json.loads(marker.read_text())
    listing["files"]["report.html"] = "0" * 64  # stale: the rebuild must set it
    marker.write_text(json.dumps(listing))
    assert main(["report", str(work)]) == 0
    assert [STAMP.sub("", p.read_text()) for p in pages] == before  # the same page, from the files alone
    out = capsys.readouterr().out
    assert all(f"report: wrote {p}" in out for p in pages)
    # report.json keeps describing the folder: the rebuilt page's SHA-256 follows it
    listing = json.loads(marker.read_text())["files"]
    assert listing["report.html"] == file_sha256(pages[0])
    # the average's page: its table and a link to each split's page
    assert '<a href="split1/report.html">split1</a>' in pages[3].read_text()
    assert "<td>fusion</td>" in pages[3].read_text()
    # one report folder alone
    pages[1].unlink()
    assert main(["report", str(work / "runs" / "other" / "eval")]) == 0 and pages[1].is_file()


def test_a_page_that_cannot_be_written_skips_its_report_and_the_rest_are_rebuilt(tmp_path, capsys):
    """A folder where one report's report.html belongs (or a read-only report folder) stopped `report`
    with an OSError line, and the reports after it were never rebuilt."""
    for name in ("a", "zz"):
        eval_report(tmp_path / name / "eval")
        (tmp_path / name / "eval" / "report.html").unlink()
    (tmp_path / "a" / "eval" / "report.html").mkdir()
    assert main(["report", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert f"report: skipped {tmp_path / 'a' / 'eval'}: " in out and "Is a directory" in out
    assert (tmp_path / "zz" / "eval" / "report.html").is_file()


def test_report_of_a_folder_without_reports_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no evaluation or transfer report under" in err and "make eval" in err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_transfer_page_in_a_browser_shows_chance_the_paper_and_the_stand_in_caveat(work):
    with open_page(work / "transfer" / "report.html") as page:
        assert page.complaints() == []
        assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert page.evaluate("document.images.length") == 1
        caveat = page.evaluate("(() => { const c = document.getElementById('stand-in');"
                               " return [c.offsetHeight, c.textContent]; })()")
        assert caveat[0] > 0 and "ucf101, yupenn" in caveat[1] and "not comparable" in caveat[1]
        rows = page.evaluate("Array.from(document.querySelectorAll('#transfer-table tbody tr'))"
                             ".map(r => Array.from(r.cells).map(c => c.textContent.trim()))")
        heads = page.evaluate("Array.from(document.querySelectorAll('#transfer-table thead th'))"
                              ".map(h => h.textContent)")
        got = {r[0]: dict(zip(heads, r, strict=True)) for r in rows}
        # chance: one class of 101 and of 14; ASLAN's balanced pairs 50, whatever its 432 actions
        assert [got[b]["chance"] for b in ("ucf101", "aslan", "yupenn")] == ["0.99", "50.00", "7.14"]
        assert [got[b]["paper P3D"] for b in ("ucf101", "aslan", "yupenn")] == ["88.60", "80.80", "99.50"]
        assert [got[b]["data"] for b in ("ucf101", "aslan", "yupenn")] == ["stand-in", "real", "stand-in"]
        shot = cv2.imdecode(np.frombuffer(page.screenshot(), np.uint8), cv2.IMREAD_COLOR)
        assert shot.std() > 20


def test_transfer_chart_has_a_chance_line_per_benchmark_and_the_caveat():
    compared = comparison(transfer_table(), {"ucf101": "ucf101", "aslan": "aslan", "yupenn": "yupenn"})
    fig = chart_figure(compared, {"ucf101": 100 / 101, "aslan": 50.0, "yupenn": 100 / 14}, ["yupenn"])
    ax = fig.axes[0]
    levels = sorted(float(seg[0][1]) for c in ax.collections if c.get_gid() == "chance" for seg in c.get_segments())
    np.testing.assert_allclose(levels, sorted([100 / 101, 50.0, 100 / 14]))
    assert any(STAND_IN in t.get_text() for t in fig.texts)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ["STAND-IN" in t for t in ticks] == [False, False, True]
    assert "chance" in ax.get_legend_handles_labels()[1]


def test_a_large_confusion_matrix_names_the_cell_under_the_pointer(work):
    out = work / "runs" / "other" / "eval"  # 40 classes: a picture, not a table
    per_class = pd.read_csv(out / "per_class.csv")
    mean = per_class[["rgb", "flow", "fusion"]].mean(axis=1)
    order = sorted(range(len(mean)), key=lambda c: (-mean[c], c))  # best first, ties by index
    best, worst = per_class["class"][order[0]], per_class["class"][order[-1]]
    with open_page(out / "report.html", height=1200) as page:
        box = page.evaluate("(() => { const i = document.querySelector('details[open] img.confusion-map');"
                            " i.scrollIntoView({block: 'center'}); const b = i.getBoundingClientRect();"
                            " return [b.left, b.top, b.width, i.dataset.tip]; })()")
        cell = box[2] / 40
        page.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": box[0] + cell / 2, "y": box[1] + cell / 2})
        tip = page.evaluate(f"document.getElementById('{box[3]}').textContent")
        assert tip == f"true {best} \u2192 predicted {best}: 2 of 2 videos"
        # the last row's first cell: the worst class, and how often it was taken for the best one
        page.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": box[0] + cell / 2,
                                               "y": box[1] + box[2] - cell / 2})
        tip = page.evaluate(f"document.getElementById('{box[3]}').textContent")
        assert tip.startswith(f"true {worst} \u2192 predicted {best}: ") and tip.endswith(" of 2 videos")
        assert page.complaints() == []


def test_without_jinja2_the_other_files_are_written_and_the_page_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "jinja2", None)  # `import jinja2` raises ImportError
    eval_report(tmp_path / "eval", n=3)
    assert not (tmp_path / "eval" / "report.html").exists()
    assert (tmp_path / "eval" / "results.csv").is_file() and (tmp_path / "eval" / "report.json").is_file()
    assert "report.html not written: Jinja2 is not installed" in capsys.readouterr().out
    assert main(["report", str(tmp_path)]) == 2
    assert "report.html needs Jinja2" in capsys.readouterr().err


def test_a_damaged_report_is_one_line_naming_the_file(tmp_path, capsys):
    eval_report(tmp_path / "eval", n=3)
    (tmp_path / "eval" / "scores.npz").write_bytes(b"PK\x03\x04 cut short")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scores.npz" in err and "re-run `make eval`" in err


def _edit_npz(path, edit):
    with np.load(path) as stored:
        arrays = dict(stored)
    edit(arrays)
    np.savez(path, **arrays)


def _edit_json(path, edit):
    inputs = json.loads(path.read_text())
    edit(inputs)
    path.write_text(json.dumps(inputs))


DAMAGE = {  # a report file that reads but is not what the report wrote: (file, edit, what the line says)
    "weight csv without its curve column": ("fusion_weight.csv", lambda p: p.write_text("q\n1\n"), "no column 'curve'"),
    "inputs of wrong types": ("report_inputs.json", lambda p: _edit_json(p, lambda d: d.update(
        {k: 12345 for k in d if k != "kind"})), "'title' is not a text"),
    "chosen rule of a wrong kind": ("report_inputs.json", lambda p: _edit_json(p, lambda d: d.update(
        chosen=["mean", 1])), "'chosen' is not null or"),
    "checkpoints a list": ("report_inputs.json", lambda p: _edit_json(p, lambda d: d.update(checkpoints=[1])),
                           "'checkpoints' is not a table"),
    "scores without classes": ("scores.npz", lambda p: _edit_npz(p, lambda z: z.pop("classes")), "no 'classes'"),
    "a stream's scores of another shape": ("scores.npz", lambda p: _edit_npz(p, lambda z: z.update(rgb=z["rgb"][:3])),
                                           "'rgb' is float64 (3, 3), not floats of 6 videos x 3 classes"),
    "NaN scores": ("scores.npz", lambda p: _edit_npz(p, lambda z: z["rgb"].__setitem__((0, 0), np.nan)),
                   "'rgb' holds NaN or +inf scores"),
    "labels past the classes": ("scores.npz", lambda p: _edit_npz(p, lambda z: z["labels"].__setitem__(0, 9)),
                                "'labels' is not 6 rows"),
    "results cut mid-row": ("results.csv", lambda p: p.write_text(p.read_text()[:-40]), "cut short"),
    "results of other columns": ("results.csv", lambda p: p.write_text("a,b\n1,2\n"), "no column 'method'"),
    "results without a row": ("results.csv", lambda p: p.write_text("".join(p.read_text().splitlines(True)[:-1])),
                              "no row of fusion (scored in scores.npz)"),
    "per-class of other columns": ("per_class.csv", lambda p: p.write_text("a,b\n1,2\n"), "no column 'class'"),
    "per-class with text for numbers": ("per_class.csv", lambda p: p.write_text(p.read_text().replace(
        "100.00", "lots")), "line 2: rgb must be a number or empty, got 'lots'"),
    "per-class video count not whole": ("per_class.csv", lambda p: _edit_cell(p, 1, "videos", "2.5"),
                                        "line 3: videos must be a whole number, got '2.5'"),
    "results with a column twice": ("results.csv", lambda p: p.write_text("".join(
        line.rstrip("\n") + (",mAP\n" if k == 0 else ",1\n") for k, line in enumerate(p.open()))),
        "column 'mAP' twice"),
    "weights with inf": ("fusion_weight.csv", lambda p: p.write_text(p.read_text().replace("0.5", "inf")),
                         "line 2: hit@1 must be a number or empty, got 'inf'"),
    "excluded of other columns": ("excluded.csv", lambda p: p.write_text("a\n1\n"), "no column 'video_id'"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_report_file_that_reads_but_is_wrong_skips_that_report_in_one_line(tmp_path, capsys, case):
    """A file that parses but is not what the report wrote (a stray edit, another tool's file, a copy cut at
    a line): that report is skipped with one line naming the file and what is wrong, the others are
    rebuilt, exit status 2 (before: a traceback, or a page built from whatever was left)."""
    name, damage, says = DAMAGE[case]
    eval_report(tmp_path / "eval", n=3)
    eval_report(tmp_path / "runs" / "ok" / "eval", n=3)
    (tmp_path / "eval" / "fusion_weight.csv").write_text("curve,flow_weight,hit@1\n\"test, raw\",1,0.5\n")
    capsys.readouterr()
    for page in tmp_path.rglob("report.html"):
        page.unlink()
    damage(tmp_path / "eval" / name)
    assert main(["report", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert f"report: skipped {tmp_path / 'eval'}: {tmp_path / 'eval' / name}: " in out and says in out
    assert err.count("\n") == 1 and f"{tmp_path / 'eval' / name}: " in err and "re-run `make eval`" in err
    assert (tmp_path / "runs" / "ok" / "eval" / "report.html").is_file()
    assert not (tmp_path / "eval" / "report.html").exists()


def _edit_cell(path, row, column, value):
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[row, column] = value
    table.to_csv(path, index=False)


TRANSFER_DAMAGE = {  # a transfer report file edited: (file, edit, what the line says after the file's name)
    "videos as text": ("results.csv", lambda p: _edit_cell(p, 0, "videos", "abc"),
                       "line 2: videos must be a whole number, got 'abc'"),
    "videos empty": ("results.csv", lambda p: _edit_cell(p, 1, "videos", ""), "line 3: videos must be a whole number"),
    "excluded negative": ("results.csv", lambda p: _edit_cell(p, 2, "excluded", "-1"),
                          "line 4: excluded must be a whole number, got '-1'"),
    "accuracy as text": ("results.csv", lambda p: _edit_cell(p, 1, "accuracy", "n/a"),
                         "line 3: accuracy must be a number or empty, got 'n/a'"),
    "results cut mid-row": ("results.csv", lambda p: p.write_text(p.read_text()[:-30]), "cut short"),
    "classes a list": ("report_inputs.json", lambda p: _edit_json(p, lambda d: d.update(classes=[1, 2])),
                       "'classes' is not a table of benchmark -> its number of classes"),
    "a class count as text": ("report_inputs.json", lambda p: _edit_json(p, lambda d: d["classes"].update(
        ucf101="six")), "'classes' is not a table"),
    "paper_of a list": ("report_inputs.json", lambda p: _edit_json(p, lambda d: d.update(paper_of=["a"])),
                        "'paper_of' is not a table of benchmark -> the paper's benchmark"),
    "stand_ins a number": ("report_inputs.json", lambda p: _edit_json(p, lambda d: d.update(stand_ins=5)),
                           "'stand_ins' is not a list of benchmark names (it is '5')"),
    "notes a number": ("report_inputs.json", lambda p: _edit_json(p, lambda d: d.update(notes=5)),
                       "'notes' is not a list of texts"),
}


@pytest.mark.parametrize("case", list(TRANSFER_DAMAGE))
def test_an_edited_transfer_report_is_skipped_in_one_line_naming_the_file(tmp_path, capsys, case):
    """An edited results.csv or report_inputs.json of a transfer report was a traceback (ValueError,
    TypeError, AttributeError) that ended the rebuild: now that report is skipped with a line naming the
    file (and line) and what is wrong, the others are rebuilt, exit status 2."""
    name, damage, says = TRANSFER_DAMAGE[case]
    for where in (tmp_path / "transfer", tmp_path / "runs" / "ok" / "transfer"):
        write_report(where, TransferReport(transfer_table(), ["Streams: rgb = x.pt"],
                                           {"ucf101": "ucf101", "aslan": "aslan"}, {"ucf101": 101, "aslan": 432},
                                           stand_ins=["ucf101"]))
        (where / "report.html").unlink()
    capsys.readouterr()
    damage(tmp_path / "transfer" / name)
    assert main(["report", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert f"report: skipped {tmp_path / 'transfer'}: {tmp_path / 'transfer' / name}: {says}" in out
    assert err.count("\n") == 1 and "re-run `make transfer`" in err and "Traceback" not in err
    assert (tmp_path / "runs" / "ok" / "transfer" / "report.html").is_file()
    assert not (tmp_path / "transfer" / "report.html").exists()


@pytest.mark.parametrize("name", ["report_inputs.json", "results.csv"])
def test_a_fifo_in_a_report_is_refused_not_waited_on(tmp_path, name):
    """A FIFO in place of a report's file: `report` waited on it for ever. Run in a child, so that the
    old behaviour fails by the timeout instead of hanging the suite."""
    import os
    import subprocess

    from tests.builders import REPO

    eval_report(tmp_path / "eval", n=3)
    os.unlink(tmp_path / "eval" / name)
    os.mkfifo(tmp_path / "eval" / name)
    done = subprocess.run([sys.executable, "-m", "pipeline", "report", str(tmp_path)], cwd=REPO, timeout=120,
                          capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"eval/{name}: " in done.stdout, done.stdout
    assert "not a regular file (a FIFO, socket or device)" in done.stdout, done.stdout
    assert "Errno" not in done.stdout
