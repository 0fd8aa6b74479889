"""DDP: two gloo processes under torchrun take the same steps as one process on the combined batch, and
a run resumes exactly under DDP, or with another process count, from a checkpoint written by two."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from streams.checkpoint import read_checkpoint, step_path
from streams.train import train_stream
from tests.builders import stream_data

CLASSES = ["up", "down"]
REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
from pathlib import Path
from streams.config import ModelConfig, TrainConfig
from streams.train import train_stream
from tests.builders import stream_data
a = json.loads(sys.argv[1])
data = stream_data(Path(a["root"]), [tuple(i) for i in a["train"]], [tuple(i) for i in a["val"]], a["classes"])
train_stream(data, "rgb", ModelConfig(**a["model"]), TrainConfig(**a["train_cfg"]), Path(a["out"]))
"""


def torchrun(tmp_path: Path, toy_store, model_cfg, train_cfg, out: Path, processes: int = 2) -> None:
    """train_stream on the toy store in `processes` gloo processes under torchrun."""
    root, train, val = toy_store
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    args = {"root": str(root), "train": train, "val": val, "classes": CLASSES, "out": str(out),
            "model": dataclasses.asdict(model_cfg), "train_cfg": dataclasses.asdict(train_cfg)}
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", str(script), json.dumps(args)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def ddp_run(toy_store, tmp_path_factory, configs):
    """Four steps in two processes, a checkpoint after each; BN in training mode everywhere (no partial
    BN): each BN must see the global batch, across processes."""
    tmp = tmp_path_factory.mktemp("ddp")
    model_cfg, train_cfg = configs(max_steps=4, checkpoint_every=1, keep_checkpoints=4, weight_decay=0.0)
    torchrun(tmp, toy_store, model_cfg, train_cfg, tmp / "ddp")
    return tmp / "ddp", model_cfg, train_cfg


def test_two_gloo_processes_compute_the_one_process_gradients(ddp_run, toy_store, tmp_path):
    out, model_cfg, train_cfg = ddp_run
    root, train, val = toy_store
    single = train_stream(stream_data(root, train, val, CLASSES), "rgb", model_cfg,
                          dataclasses.replace(train_cfg, max_steps=1), tmp_path / "single")

    one = read_checkpoint(single.checkpoint).state
    two = read_checkpoint(step_path(out, 1)).state
    assert len(two["rng"]) == 2 and two["world_size"] == 2
    # With no weight decay, SGD's momentum buffer after the first step is that step's gradient.
    grads_one = [s["momentum_buffer"] for _, s in sorted(one["optimizer"]["state"].items())]
    grads_two = [s["momentum_buffer"] for _, s in sorted(two["optimizer"]["state"].items())]
    assert len(grads_one) == len(grads_two) > 30
    for g1, g2 in zip(grads_one, grads_two, strict=True):
        assert g1.abs().max() > 0
        assert (g1 - g2).abs().max() <= 1e-4 * g1.abs().max() + 1e-7
    for name, value in one["model"].items():  # weights after the step and BN running statistics
        if value.is_floating_point():
            # Summation order differs with the process count: the error scales with the tensor's largest
            # value, so the absolute part does too (a near-zero running mean beside values of ~1.4).
            assert torch.allclose(value, two["model"][name], rtol=1e-4, atol=1e-5 * float(value.abs().max())), name


def resumable_copy(out: Path, step: int, to: Path) -> Path:
    """A run folder as a run killed after the checkpoint of `step` leaves it."""
    to.mkdir()
    shutil.copy2(step_path(out, step), to)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (to / "metrics.jsonl").write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= step))
    return to


def test_a_ddp_run_resumes_exactly_under_ddp(ddp_run, toy_store, tmp_path):
    out, model_cfg, train_cfg = ddp_run
    resumed = resumable_copy(out, 2, tmp_path / "resumed")
    torchrun(tmp_path, toy_store, model_cfg, train_cfg, resumed)
    whole, again = read_checkpoint(step_path(out, 4)).state, read_checkpoint(step_path(resumed, 4)).state
    for part in ("model", "rng"):
        assert repr(whole[part]) == repr(again[part]), part
    assert all(torch.equal(whole["model"][k], again["model"][k]) for k in whole["model"])
    assert (resumed / "metrics.jsonl").read_text().splitlines() != []
    losses = [[r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "train"] for d in (out, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 4


def test_a_two_process_checkpoint_resumes_in_one_process(ddp_run, toy_store, tmp_path, capsys):
    """Another process count gives the same global batch (each step's clips depend only on seed, epoch
    and index): the one-process continuation ends where the two-process run did, up to float sums."""
    out, model_cfg, train_cfg = ddp_run
    root, train, val = toy_store
    resumed = resumable_copy(out, 2, tmp_path / "one")
    result = train_stream(stream_data(root, train, val, CLASSES), "rgb", model_cfg, train_cfg, resumed)
    assert result.resumed_from == step_path(resumed, 2) and result.step == 4
    assert "was written by 2 process(es), this run has 1" in capsys.readouterr().out
    whole, again = read_checkpoint(step_path(out, 4)).state["model"], read_checkpoint(result.checkpoint).state["model"]
    for name, value in whole.items():
        if value.is_floating_point():
            assert torch.allclose(value, again[name], rtol=1e-4, atol=1e-5 * float(value.abs().max())), name
