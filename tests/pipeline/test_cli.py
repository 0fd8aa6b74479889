"""The command line: every stage has --help, user errors print one line and exit 2."""
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stage", ["synth", "flow", "train", "eval"])
def test_help_for_every_stage(stage, capsys):
    with pytest.raises(SystemExit) as done:
        main([stage, "--help"])
    assert done.value.code == 0
    assert "--config" in capsys.readouterr().out


def test_train_needs_a_stream(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train"])
    assert done.value.code == 2
    assert "--stream" in capsys.readouterr().err


@pytest.mark.parametrize("shard", ["3/2", "x/2", "1"])
def test_bad_shard(shard, capsys):
    with pytest.raises(SystemExit):
        main(["flow", "--shard", shard])
    assert "--shard" in capsys.readouterr().err


def test_user_error_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[flow]\nbund = 1\n")
    run = subprocess.run([sys.executable, "-m", "pipeline", "flow", "--config", str(bad)],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    # the whole line, suggestion quoted as one key (it once printed flow.'bound')
    assert run.stderr == f"error: {bad}: unknown key 'flow.bund' (did you mean 'flow.bound'?)\n"


def test_missing_dataset_root_is_a_clear_error(tmp_path, capsys):
    code = main(["flow", "--set", "dataset.format=ucf101", "--set", f"dataset.root={tmp_path / 'none'}",
                 "--set", f"dataset.annotations={tmp_path / 'none'}", "--set", f"work_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "none" in err


def test_eval_and_train_take_checkpoints_and_a_run(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert "--rgb" in out and "--flow" in out and "--run" in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--run" in capsys.readouterr().out


def test_show_flow_without_a_store_is_one_line(tmp_path, capsys):
    assert main(["show-flow", "a/b", "--set", f"work_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no flow store at") and "make flow" in err


@pytest.mark.parametrize("setting, message", [("train.val_fraction=1.5", "val_fraction: must be in [0, 1)"),
                                               ("train.run=a/b", "run: must be a plain folder name")])
def test_bad_held_out_and_run_settings(setting, message, capsys):
    assert main(["eval", "--set", setting]) == 2
    assert message in capsys.readouterr().err


def test_sigterm_stops_a_stage_as_ctrl_c_does(tmp_path, monkeypatch, capsys):
    """scancel and batch time limits send SIGTERM: the process died at once, without the stage's
    KeyboardInterrupt path (workers stopped, manifest written, temporaries removed) or a line saying
    to re-run. Now it is that path, with its own line and exit status 143; the handler is put back."""
    import os
    import signal
    import time

    from pipeline import stages

    def stage_that_gets_terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        raise AssertionError("SIGTERM did not stop the stage")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(stages, "synth_stage", stage_that_gets_terminated)
    assert main(["synth", "--set", f"dataset.root={str(tmp_path / 'synth')!r}"]) == 143
    assert capsys.readouterr().err == "terminated (SIGTERM): re-run the same command to resume\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_ctrl_c_does_not_cut_the_cleanup_of_the_first(tmp_path, monkeypatch, capsys):
    """A first Ctrl-C starts the stage's cleanup (workers stopped, manifest written); a second one arriving
    during it raised inside that cleanup (loky's shutdown: its semaphores leaked, its traceback printed).
    Now the first Ctrl-C is the only one until main returns, and the handler is put back."""
    import os
    import signal
    import time

    from pipeline import stages
    cleaned = []

    def stage_interrupted_twice(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler interrupts this
            raise AssertionError("Ctrl-C did not stop the stage")
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # pressed again while the stage cleans up
            time.sleep(0.05)
            cleaned.append(True)

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(stages, "synth_stage", stage_interrupted_twice)
    assert main(["synth", "--set", f"dataset.root={str(tmp_path / 'synth')!r}"]) == 130
    assert cleaned == [True]
    assert capsys.readouterr().err == "interrupted: re-run the same command to resume\n"
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_while_the_interpreter_exits_prints_no_traceback(tmp_path):
    """After main has said what happened, the interpreter's exit joins the worker pools' threads (loky's
    atexit join); a Ctrl-C there printed loky's traceback. `python -m pipeline` now ignores it there and
    exits with main's status."""
    import signal
    import subprocess
    import sys
    import time

    script = ("import atexit, signal, sys, time\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)  # as an interactive shell starts it\n"
              "def exiting():\n"
              "    print('exiting', flush=True)\n"
              "    time.sleep(1.5)  # as loky's join of its threads\n"
              "atexit.register(exiting)\n"
              "from pipeline.cli import run_program\n"
              "run_program(['config', '--config', 'configs/tiny.toml'])\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[2])
    for line in proc.stdout:
        if line == "exiting\n":
            break
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_signals_are_held_through_a_block_and_taken_after_it():
    """Ctrl-C inside torch's import (pybind11) was `terminate called ...` and a core dump (exit 134); the CLI
    now imports torch with the signals held: a Ctrl-C there is raised when the import is over."""
    import os
    import signal

    from pipeline.cli import signals_held

    before = signal.getsignal(signal.SIGINT)
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # twice: taken once
            reached.append("the end of the block")
    assert reached == ["the end of the block"] and signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("error", [
    MemoryError(),
    RuntimeError("[enforce fail at alloc_cpu.cpp:118] data. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 6442450944 bytes. Error code 12 (Cannot allocate memory)"),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total capacity)\nmore lines"),
    RuntimeError("could not create a primitive"),  # oneDNN under `ulimit -v`
])
def test_running_out_of_memory_is_one_line_saying_what_to_lower(tmp_path, monkeypatch, capsys, error):
    """MemoryError and torch's allocators' RuntimeErrors were a traceback (a setting or the machine, not a
    bug); now one line, exit status 2. Other RuntimeErrors keep their traceback."""
    from pipeline import stages

    def stage_out_of_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(stages, "synth_stage", stage_out_of_memory)
    assert main(["synth", "--set", f"dataset.root={str(tmp_path / 'synth')!r}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory (") and err.count("\n") == 1
    assert "lower train.batch_size, eval.batch_views or the jobs and workers" in err


def test_a_runtime_error_that_is_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    from pipeline import stages

    def stage_with_a_bug(*args, **kwargs):
        raise RuntimeError("expected scalar type Float but found Double")

    monkeypatch.setattr(stages, "synth_stage", stage_with_a_bug)
    with pytest.raises(RuntimeError, match="expected scalar type"):
        main(["synth", "--set", f"dataset.root={str(tmp_path / 'synth')!r}"])


def test_the_makefile_passes_a_config_path_with_spaces_whole(tmp_path):
    """`make synth CONFIG="my cfg/t.toml"` ran `--config my cfg/t.toml`: two arguments, "unrecognized
    arguments: cfg/t.toml". `make -n` prints what each target would run."""
    import shlex
    import shutil

    from tests.builders import REPO

    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    config = str(tmp_path / "my cfg" / "t.toml")
    for target, variable in (("synth", "CONFIG"), ("eval", "CONFIG"), ("transfer", "TRANSFER_CONFIG")):
        printed = subprocess.run(["make", "-n", "-C", str(REPO), target, f"{variable}={config}",
                                  "VENV=" + str(tmp_path / "venv")], capture_output=True, text=True, check=True).stdout
        line = next(line for line in printed.splitlines() if " -m pipeline " in line)
        words = shlex.split(line)
        assert words[words.index("--config") + 1] == config, line


def test_an_interrupted_predict_timeline_says_its_re_run_needs_force(tmp_path, monkeypatch, capsys):
    """`predict --timeline` refuses the timeline files a stopped run wrote: "re-run the same command to
    resume" was a promise its re-run then broke (refused: the files exist)."""
    from fusion import predict as predict_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_module, "predict", interrupted)
    video = tmp_path / "v.avi"
    video.write_bytes(b"")
    for timeline, said in ((["--timeline"], "interrupted: re-run it with --force to score every video again\n"),
                           ([], "interrupted: re-run the same command to resume\n")):
        assert main(["predict", str(video), "--rgb", str(tmp_path / "rgb.pt"), *timeline]) == 130
        assert capsys.readouterr().err == said
