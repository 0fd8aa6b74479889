"""`bench/gpu.py --smoke`: every section of the prepared GPU run at tiny sizes on the CPU (CUDA hidden),
so that the script cannot rot between GPU loans, and a run stopped by SIGTERM keeps what it measured.

No rate or duration is asserted (a shared CPU); what is asserted is what the GPU run's reader relies
on: every row there with its schema, in the order of value, the ratios against the right baseline,
the pass criteria (the compiled TV-L1 within one uint8 level of eager, fit checks never a verdict),
exact-flow EPE, store sizes, every stage of `make all` and its report."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ["correctness", "flow", "training", "train_compiled", "flow_compiled", "loading", "e2e"]
ROW_KEYS = {"what", "figure", "ratio", "target", "passed", "status"}


def start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.Popen([sys.executable, "bench/gpu.py", "--smoke", "--out", str(out), "--work",
                             str(tmp_path / "w"), *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return proc, out


def rows(section: dict, prefix: str = "") -> list[dict]:
    return [r for r in section["rows"] if r["what"].startswith(prefix)]


def test_smoke_run_writes_every_section_and_row(tmp_path):
    proc, out = start(tmp_path)
    log = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, log[-5000:]
    report = json.loads((out / "gpu.json").read_text())
    sections = report["sections"]
    assert list(sections) == SECTIONS
    for name, section in sections.items():
        assert section["status"] == "ok", (name, section["errors"])
        # Every row was written to DIR/sections as it was measured: the same rows as the report's.
        assert json.loads((out / "sections" / f"{name}.json").read_text())["rows"] == section["rows"]
        for row in section["rows"]:
            assert ROW_KEYS <= set(row) and row["status"] in ("ok", "skipped", "failed"), row
            assert row["passed"] in (True, False, None), row
            # A GPU target never passes or fails on the CPU; only code-level criteria decide there.
            if row["target"].startswith(">= 1000"):
                assert row["passed"] is None, row
    env = report["environment"]
    assert env["torch"] and env["device"] == "cpu" and "cudnn" in env and "triton" in env and "compiler" in env

    # correctness: every CUDA test of tests/cuda collected, each skipped for want of a GPU.
    defined = {m for f in (REPO / "tests" / "cuda").glob("test_*.py")
               for m in re.findall(r"^def (test_\w+)", f.read_text(), re.M)}
    tests = sections["correctness"]["rows"]
    assert {r["what"].split("::")[-1] for r in tests} == defined
    assert all(r["status"] == "skipped" and "no CUDA device" in r["figure"] for r in tests)

    # flow: the [flow] default batch first and its verdict at once, then OpenCV (the ratios' baseline,
    # filled into the row above it too), then the other batch; EPE against SynthActions' exact flow.
    flow = sections["flow"]["rows"]
    eager = [r for r in flow if r.get("mode") == "eager"]
    assert [r["batch"] for r in eager] == [4, 1]
    assert flow[0]["batch"] == 4 and flow[1]["target"] == ">= 1000 pairs/s"
    assert all(r["pairs_s"] <= r["solve_pairs_s"] for r in eager)  # the copy to the host only adds time
    assert all(r["epe_px"] < 0.5 for r in eager), eager
    if hasattr(cv2, "optflow"):
        assert flow[2]["ratio"] == "1.00x (baseline)" and "within 0.1 px of it" in flow[2]["figure"]
        assert all(r["ratio"].endswith("x OpenCV") for r in eager)

    # training: bf16 + channels_last_3d at the chosen batch first with its verdict, fp32 last; every
    # bf16 row at that batch compared with fp32 at the same batch; fit checks never a verdict.
    train = sections["training"]["rows"]
    assert [r["what"].split(" matmul")[0] for r in train[:2]] == ["bf16", "tf32"]
    timed = [r for r in train if "steps" in r]
    assert timed[0]["what"].startswith("train p3d_tiny bf16 AMP + channels_last_3d, batch 2")
    assert timed[-1]["what"].startswith("train p3d_tiny fp32") and timed[-1]["precision"] == "tf32"
    assert train[3]["target"] == ">= 1000 clips/s" and train[3]["best_clips_s"] == timed[0]["clips_s"]
    assert {r["batch"] for r in timed} == {2}  # "x fp32" at equal batch
    assert all(r["ratio"] == "%.2fx fp32 (batch 2)" % (r["clips_s"] / timed[-1]["clips_s"]) for r in timed[:-1])
    checks = [r for r in train if r.get("fit_check")]
    assert checks and all(r["batch"] > 2 for r in checks)
    verdicts = [r for r in train if "best_clips_s" in r]
    assert {v["best_clips_s"] for v in verdicts} <= {r["clips_s"] for r in timed}
    assert any(r.get("largest_batch") == 4 for r in train)
    # MFU: clips/s x FLOPs per clip / the measured peak of its precision, the same ratio on every bf16 row.
    per_clip = {round(r["mfu"] / r["clips_s"], 12) for r in timed if r["precision"] == "bf16"}
    assert len(per_clip) == 1

    # train_compiled: torch.compile's path (traced only in --smoke) against eager at the same batch.
    compiled = sections["train_compiled"]["rows"]
    row = next(r for r in compiled if "torch.compile" in r["what"])
    assert row["ratio"].startswith("%.2fx eager (batch 2)" % (row["clips_s"] / timed[0]["clips_s"]))
    decision = next(r for r in compiled if "compile_wins" in r)
    assert decision["compile_wins"] == (row["clips_s"] > timed[0]["clips_s"])

    # flow_compiled: the criterion against the flow section's eager flow (identical when only traced).
    solved = [r for r in sections["flow_compiled"]["rows"] if r.get("mode") == "compiled"]
    assert [r["batch"] for r in solved] == [4, 1]
    assert all(r["within_one_level"] == 1.0 and r["max_levels"] == 0 and r["passed"] is True for r in solved)
    assert all(r["target"] == ">= 99.9% within one level of eager" for r in solved)

    # loading: both codecs, both modalities, an epoch of workers x prefetch x 4 batches; a raw frame
    # holds its 64x48 BGR image and 64x48x2 flow image (one fewer flow than frames) uncompressed.
    loading = sections["loading"]["rows"]
    loaded = {(r["codec"], r["modality"]) for r in loading if "clips_s" in r}
    assert loaded == {("png", "rgb"), ("png", "flow"), ("raw", "rgb"), ("raw", "flow")}
    assert all(r["epoch_batches"] == r["workers"] * 4 * 4 and r["batches"] >= 2 for r in loading if "clips_s" in r)
    assert all(r["ratio"].endswith("x training") for r in loading if "clips_s" in r)
    size = {r["codec"]: r["bytes_per_frame"] for r in loading if "bytes_per_frame" in r}
    assert 64 * 48 * (3 + 2 * 7 / 8) <= size["raw"] < 1.1 * 64 * 48 * (3 + 2 * 7 / 8) + 2000
    assert size["png"] < size["raw"]

    # e2e: every stage of make all, the stored flow against the exact flow, and the report.
    stages = [r["what"].split(" (")[0] for r in sections["e2e"]["rows"] if r["what"].startswith("make ")]
    assert stages == ["make synth", "make flow", "make train-rgb", "make train-flow", "make eval",
                      "make all on SynthActions"]
    assert "| svm_two_stream |" in sections["e2e"]["extra"]["report"]

    text = (out / "gpu.md").read_text()
    assert "| section | what ran | figure | ratio | target | result |" in text
    assert all(f"| **{name}** | ok" in text for name in SECTIONS)
    assert (out / "gpu.log").stat().st_size > 0


def test_sigterm_mid_section_keeps_the_rows_and_writes_the_report(tmp_path):
    """SIGTERM while the training section runs (as a slot's time limit sends it): the flow section's
    rows and the training rows measured so far are in gpu.json and gpu.md, training says stopped
    (and what it was measuring), the sections not reached say so, and the run exits 143."""
    proc, out = start(tmp_path, "--sections", "flow", "training", "loading")
    partial = out / "sections" / "training.json"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len(json.loads(partial.read_text())["rows"]) >= 3:  # the matmul peaks and a training row
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before the training section measured three rows"
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]

    sections = json.loads((out / "gpu.json").read_text())["sections"]
    assert sections["flow"]["status"] == "ok" and any(r.get("mode") == "eager" for r in sections["flow"]["rows"])
    training = sections["training"]
    assert training["status"] == "stopped" and len(training["rows"]) >= 3
    assert training["rows"] == json.loads(partial.read_text())["rows"]
    assert any("stopped by SIGTERM" in n for n in training["notes"]), training["notes"]
    assert sections["loading"]["status"] == "not run"
    text = (out / "gpu.md").read_text()
    assert "| **training** | stopped" in text and training["rows"][0]["what"] in text
