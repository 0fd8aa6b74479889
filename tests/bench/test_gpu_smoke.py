"""`bench/gpu.py --smoke`: every section of the prepared GPU run at tiny sizes on the CPU (CUDA hidden),
so that the script cannot rot between GPU loans. Figures are not checked (a shared CPU), what they
are made of is: exact-flow EPE, store sizes, every stage of `make all` and its report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ["correctness", "flow", "training", "loading", "e2e"]


def test_smoke_run_writes_every_section_and_none_fails(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--smoke", "--out", str(out), "--work", str(tmp_path / "w")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu.json").read_text())
    sections = report["sections"]
    assert list(sections) == SECTIONS
    for name, section in sections.items():
        assert section["status"] == "ok", (name, section["errors"])
        assert section["seconds"] <= section["budget_s"]

    # 1: every CUDA test collected, and each skipped for want of a GPU (the smoke run hides it).
    tests = sections["correctness"]["rows"]
    assert len(tests) >= 7 and all(r["status"] == "skipped" and "no CUDA device" in r["figure"] for r in tests)

    # 2: the torch TV-L1 against SynthActions' exact flow, at every batch size.
    solved = [r for r in sections["flow"]["rows"] if "batch" in r and r["status"] == "ok"]
    assert [r["batch"] for r in solved] == [1, 4]
    assert all(0 < r["epe_px"] < 0.5 and r["pairs_s"] > 0 for r in solved), solved

    # 3: three training configurations and the batch search, inference.
    trained = [r for r in sections["training"]["rows"] if "clips_s" in r and r["what"].startswith("train")]
    assert len(trained) >= 4 and all(r["clips_s"] > 0 for r in trained)
    assert any(r.get("largest_batch") == 4 for r in sections["training"]["rows"])

    # 4: both codecs, both modalities; a raw frame holds its 64x48 BGR image and 64x48x2 flow
    # image (one fewer flow than frames) uncompressed; PNG is smaller.
    rows = sections["loading"]["rows"]
    loaded = {(r["codec"], r["modality"]) for r in rows if r.get("clips_s", 0) > 0}
    assert loaded == {("png", "rgb"), ("png", "flow"), ("raw", "rgb"), ("raw", "flow")}
    size = {r["what"].split(", ")[1].split(":")[0]: r["bytes_per_frame"] for r in rows if "bytes_per_frame" in r}
    assert 64 * 48 * (3 + 2 * 7 / 8) <= size["raw"] < 1.1 * 64 * 48 * (3 + 2 * 7 / 8) + 2000
    assert size["png"] < size["raw"]

    # 5: every stage of make all, the stored flow against the exact flow, and the report.
    stages = [r["what"].split(" (")[0] for r in sections["e2e"]["rows"] if r["what"].startswith("make ")]
    assert stages == ["make synth", "make flow", "make train-rgb", "make train-flow", "make eval",
                      "make all on SynthActions"]
    assert "| svm_two_stream |" in sections["e2e"]["extra"]["report"]

    text = (out / "gpu.md").read_text()
    assert "| section | what ran | figure | ratio | target | result |" in text
    assert all(f"| **{name}** | ok" in text for name in SECTIONS)
    assert (out / "gpu.log").stat().st_size > 0
