"""A store a `flow` run is still writing: train took the videos finished so far for the whole
training set (exit 0, a model trained on 35 of 36 videos) and eval scored a part. Now both refuse in
one line naming the run, verify says what it cannot check, and nothing is left behind by a run."""
import os
import signal
import subprocess
import sys

import pytest

from flow.store import open_store
from p3dbase.atomic import writer_token
from pipeline import stages
from pipeline.config import load_config
from pipeline.errors import PipelineError
from tests.builders import REPO, make_toy_store


@pytest.fixture
def cfg(tmp_path):
    make_toy_store(tmp_path / "flow", ["a", "b"], 1)
    return load_config(None, [f"work_dir={str(tmp_path)!r}", "flow.jobs=1"])


def test_train_and_eval_refuse_a_store_that_a_flow_run_is_writing(cfg, capsys):
    store = open_store(cfg.work / "flow")
    with store.running():
        assert store.running_flows() == [writer_token()]
        for stage in ("train-rgb", "eval"):
            with pytest.raises(PipelineError, match=rf"is being written by a running `flow` \({writer_token()}\): "
                                                    rf"{stage} would read only the videos finished so far"):
                stages._flow_store(cfg, stage)
        stages.verify_stage(cfg)
        assert "verify: a `flow` run" in capsys.readouterr().out
    assert store.running_flows() == [] and not list(store.root.glob(".flow-running-*"))
    assert stages._flow_store(cfg, "eval")[1] == {"a/v_a_00", "b/v_b_00"}


def test_a_killed_runs_mark_does_not_count_and_is_cleared(cfg):
    store = open_store(cfg.work / "flow")
    code = ("import sys, os, time; from flow.store import open_store; s = open_store(sys.argv[1])\n"
            "with s.running():\n    print('in', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(store.root)], cwd=REPO, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline() == "in\n"
        assert len(store.running_flows()) == 1
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        child.kill()
    assert store.running_flows() == [] and len(list(store.root.glob(".flow-running-*"))) == 1  # left by kill -9
    with store.running():
        assert store.running_flows() == [writer_token()]
    assert not list(store.root.glob(".flow-running-*"))
