"""Training a stream on the toy store: it learns, resumes exactly, stops on NaN, and checkpoints load."""
from __future__ import annotations

import dataclasses
import errno
import io
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import get_worker_info

import p3dbase.atomic
from flow.stage import flow_settings
from flow.store import create_store
from p3dbase.atomic import DiskFullError
from p3dbase.errors import P3DError
from streams import metrics as streams_metrics
from streams import train as streams_train
from streams.builder import to_channels_last
from streams.checkpoint import (
    CHECKSUM,
    final_checkpoint,
    load_checkpoint,
    payload_sha256,
    read_checkpoint,
    save_checkpoint,
    step_checkpoints,
)
from streams.clips import ClipDataset
from streams.errors import StreamsError
from streams.p3d import build_model
from streams.plots import curves_figure
from streams.schedule import param_groups
from streams.train import lr_schedule, train_stream
from tests.builders import deny_as_for_a_user, save_tiny_checkpoint, stream_data

CLASSES = ["up", "down"]


def toy(root: Path, train: list, val: list):
    """The toy store opened, with training and validation items, as train_stream takes them."""
    return stream_data(root, train, val, CLASSES)


def train_records(out: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.fixture(scope="module")
def flow_run(toy_store, tmp_path_factory, configs):
    root, train, val = toy_store
    out = tmp_path_factory.mktemp("flow_run")
    model_cfg, train_cfg = configs(epochs=5, lr=0.02, schedule="cosine", checkpoint_every=3, keep_checkpoints=2)
    result = train_stream(toy(root, train, val), "flow", model_cfg, train_cfg, out)
    return result, out


def test_a_tiny_flow_stream_learns(flow_run):
    result, out = flow_run
    losses = [r["loss"] for r in train_records(out)]
    assert result.finished and result.step == 5 * 4 == len(losses)
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4
    # Chance is 0.5 (16 validation videos). The best epoch, not the last: on so few tiny batches the last
    # epoch's accuracy jumps between 0.5 and 1.0 with the CPU's kernels (batch-norm statistics), while the
    # loss falls every time; a stream that learns nothing stays at chance in every epoch.
    assert result.best_val_acc >= 0.8
    assert [r["epoch"] for r in train_records(out, "val")] == [1, 2, 3, 4, 5]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in sorted(out.glob("checkpoint_*.pt"))] == ["checkpoint_00000018.pt", "checkpoint_00000020.pt"]


def test_the_finished_model_loads_for_evaluation(flow_run, toy_store):
    result, out = flow_run
    assert final_checkpoint(out) == result.checkpoint == out / "last.pt"
    model, ckpt = load_checkpoint(result.checkpoint)
    assert not model.training and ckpt.modality == "flow" and ckpt.classes == CLASSES and ckpt.step == 20
    assert ckpt.input_convention == "flow u8 (x, y; 128 = zero motion) minus 128"
    assert ckpt.model_config["arch"] == "p3d_tiny" and ckpt.train_config["crop"] == 28
    assert ckpt.metrics["val_acc"] == result.val_acc
    assert "optimizer" not in ckpt.state  # last.pt is the model only; resuming uses checkpoint_*.pt
    assert ckpt.state["started_from"] == {}  # random weights (a fine-tuned run names its start: test_finetune)
    x = torch.randn(3, 2, 8, 28, 28)
    assert model.features(x).shape == (3, 256) and model(x).shape == (3, 2)


def test_a_finished_run_is_not_trained_again(flow_run, toy_store, configs):
    result, out = flow_run
    root, train, val = toy_store
    mtime = result.checkpoint.stat().st_mtime_ns
    settings = dict(epochs=5, lr=0.02, schedule="cosine", checkpoint_every=3, keep_checkpoints=2, workers=1)
    again = train_stream(toy(root, train, val), "flow", *configs(**settings), out)
    assert again.finished and again.step == 20 and again.val_acc == result.val_acc
    assert result.checkpoint.stat().st_mtime_ns == mtime


def test_a_finished_run_in_a_folder_this_user_cannot_write_is_reported_not_refused(flow_run, toy_store, tmp_path,
                                                                                  configs, monkeypatch):
    """A finished run on a read-only share: its lock cannot be made, yet `train` reports it as trained (it
    refused before: "Permission denied"); a run with training left to do says the folder cannot be written,
    in one line, and writes nothing."""
    result, out = flow_run
    root, train, val = toy_store

    def unwritable(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    monkeypatch.setattr(streams_train, "try_lock", unwritable)
    settings = dict(epochs=5, lr=0.02, schedule="cosine", checkpoint_every=3, keep_checkpoints=2, workers=1)
    again = train_stream(toy(root, train, val), "flow", *configs(**settings), out)
    assert again.finished and again.step == 20 and again.checkpoint == result.checkpoint
    fresh = tmp_path / "fresh"
    with pytest.raises(StreamsError, match=rf"^{fresh}: cannot write the run's folder \(Permission denied\): train "
                                           r"into a folder this user can write"):
        train_stream(toy(root, train, val), "flow", *configs(**settings), fresh)
    assert not fresh.exists() or not any(fresh.iterdir())


def test_a_damaged_finished_model_says_how_to_rebuild_it(flow_run, toy_store, tmp_path, configs):
    result, out = flow_run
    root, train, val = toy_store
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    data = (copy / "last.pt").read_bytes()
    (copy / "last.pt").write_bytes(data[: len(data) // 2])
    settings = dict(epochs=5, lr=0.02, schedule="cosine", checkpoint_every=3, keep_checkpoints=2, workers=1)
    with pytest.raises(StreamsError, match=r"finished model is damaged: delete .*last\.pt and re-run to rebuild it "
                                           r"from the newest step checkpoint"):
        train_stream(toy(root, train, val), "flow", *configs(**settings), copy)
    (copy / "last.pt").unlink()  # as the message says: the run ends again from its step-20 checkpoint
    again = train_stream(toy(root, train, val), "flow", *configs(**settings), copy)
    assert again.finished and again.step == 20 and (copy / "last.pt").is_file()


def test_resume_continues_exactly(toy_store, tmp_path, configs, capsys):
    """Stopped mid-epoch and resumed (with a DataLoader worker this time), the run logs the same losses
    and ends with the same weights as an uninterrupted one; dropout makes the RNG state matter."""
    root, train, val = toy_store
    model_cfg, train_cfg = configs(epochs=2, checkpoint_every=3)
    model_cfg = dataclasses.replace(model_cfg, dropout_rgb=0.5)
    whole = train_stream(toy(root, train, val), "rgb", model_cfg, train_cfg, tmp_path / "whole")

    parts = tmp_path / "parts"
    first = train_stream(toy(root, train, val), "rgb", model_cfg, dataclasses.replace(train_cfg, max_steps=3),
                         parts)
    assert not first.finished and first.step == 3 and first.checkpoint.name == "checkpoint_00000003.pt"
    assert (f"rgb stream: stopped at step 3 of {whole.step} (train.max_steps = 3); checkpoint {first.checkpoint}: "
            "re-run without max_steps (or a larger one) to continue") in capsys.readouterr().out  # it was silent
    # a step checkpoint copied onto last.pt was reported "already trained", and eval would score it
    shutil.copyfile(first.checkpoint, parts / "last.pt")
    with pytest.raises(StreamsError, match=rf"last\.pt holds step 3 of {whole.step}: not the finished model of this "
                                           r"run \(a step checkpoint copied onto it\?\): move it out of "):
        train_stream(toy(root, train, val), "rgb", model_cfg, train_cfg, parts)
    (parts / "last.pt").unlink()
    with open(parts / "metrics.jsonl", "a") as f:  # logged by a killed run after its last checkpoint
        f.write(json.dumps({"kind": "train", "step": 4, "loss": 123.0}) + "\n")
    rest = train_stream(toy(root, train, val), "rgb", model_cfg, dataclasses.replace(train_cfg, workers=1), parts)
    assert rest.finished and rest.resumed_from == parts / "checkpoint_00000003.pt"

    assert [r["loss"] for r in train_records(parts)] == [r["loss"] for r in train_records(tmp_path / "whole")]
    assert train_records(parts, "val") == train_records(tmp_path / "whole", "val")
    a, b = read_checkpoint(whole.checkpoint).state["model"], read_checkpoint(rest.checkpoint).state["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_damaged_newer_checkpoint_is_set_aside_and_pruning_keeps_the_good_ones(toy_store, tmp_path, configs,
                                                                                  capsys):
    """A damaged (or foreign, or folder) checkpoint numbered above the one resumed from outranked every
    checkpoint the resumed run wrote: with keep_checkpoints=1 pruning deleted each as it came, and the
    one resumed from; the next re-run started from step 0. It is moved aside (<name>.damaged) now."""
    root, train, val = toy_store
    model_cfg, train_cfg = configs(epochs=2, checkpoint_every=2, keep_checkpoints=1)
    first = train_stream(toy(root, train, val), "rgb", model_cfg, dataclasses.replace(train_cfg, max_steps=2),
                         tmp_path)
    assert first.checkpoint.name == "checkpoint_00000002.pt"
    (tmp_path / "checkpoint_00000008.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "checkpoint_00000009.pt").mkdir()
    capsys.readouterr()
    second = train_stream(toy(root, train, val), "rgb", model_cfg, dataclasses.replace(train_cfg, max_steps=4),
                          tmp_path)
    out = capsys.readouterr().out
    assert second.resumed_from == tmp_path / "checkpoint_00000002.pt" and second.step == 4
    assert f"moved it to {tmp_path / 'checkpoint_00000008.pt.damaged'}" in out
    assert "checkpoint_00000009.pt is a folder (or another non-file), not a checkpoint" in out
    assert [p.name for _, p in step_checkpoints(tmp_path)] == ["checkpoint_00000004.pt"]  # the newest good one
    (tmp_path / "last.pt").mkdir()  # it resumed, trained, and died renaming onto it: refused at the start
    with pytest.raises(StreamsError, match=r"last\.pt is a folder \(or another non-file\) where the finished model "
                                           r"belongs: move it out of the run folder and re-run$"):
        train_stream(toy(root, train, val), "rgb", model_cfg, train_cfg, tmp_path)


@pytest.mark.parametrize("damage", [
    lambda state: state.update(rng="x"),
    lambda state: state["optimizer"].update(param_groups=[{"params": [0]}]),
    lambda state: state.pop("scheduler"),
])
def test_a_step_checkpoint_whose_training_state_cannot_be_restored_is_one_line(toy_store, tmp_path, configs, damage):
    """rng, optimizer or scheduler entries an edit or another tool wrote (checksum recomputed) were a
    TypeError / ValueError / KeyError traceback on resume."""
    root, train, val = toy_store
    model_cfg, train_cfg = configs(epochs=2, checkpoint_every=3)
    first = train_stream(toy(root, train, val), "rgb", model_cfg, dataclasses.replace(train_cfg, max_steps=3), tmp_path)
    state = torch.load(first.checkpoint, weights_only=True)
    damage(state)
    state[CHECKSUM] = {"sha256": payload_sha256(state)}
    torch.save(state, first.checkpoint)
    with pytest.raises(StreamsError, match=r"checkpoint .*checkpoint_00000003\.pt: its training state .* cannot be "
                                           r"restored \(.+\): delete it to resume from an older checkpoint"):
        train_stream(toy(root, train, val), "rgb", model_cfg, train_cfg, tmp_path)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(toy_store, tmp_path, monkeypatch, configs):
    root, train, val = toy_store
    calls = []
    real = torch.nn.functional.cross_entropy

    def diverging(logits, labels, **kwargs):
        calls.append(1)
        loss = real(logits, labels, **kwargs)
        return loss * math.nan if len(calls) >= 4 else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", diverging)
    with pytest.raises(StreamsError, match=r"not finite at step 4 .*kept checkpoint .*checkpoint_00000002\.pt") as err:
        train_stream(toy(root, train, val), "flow", *configs(checkpoint_every=2, log_every=3), tmp_path)
    monkeypatch.undo()
    assert "train.lr" in str(err.value)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["checkpoint_00000002.pt"]
    model, ckpt = load_checkpoint(tmp_path / "checkpoint_00000002.pt")
    assert ckpt.step == 2 and all(torch.isfinite(p).all() for p in model.parameters())


def test_a_validation_loss_that_is_not_finite_stops_before_last_pt(toy_store, tmp_path, monkeypatch, configs):
    """lr=10 with fc_lr_mult=1000: training losses stayed finite, the weights reached ~1e34, validation
    said `loss nan`, and the run wrote last.pt, exited 0, and `train` later called it trained."""
    from streams import train as streams_train

    root, train, val = toy_store
    real = streams_train.evaluate

    def diverged(run, loader):
        scores = real(run, loader)
        return {**scores, "val_loss": math.nan} if run.metrics and len(train_records(tmp_path, "val")) >= 1 \
            else scores

    monkeypatch.setattr(streams_train, "evaluate", diverged)
    with pytest.raises(StreamsError, match=r"the validation loss is not finite after epoch 2 \(step \d+\): the run "
                                           r"diverged; stopped and kept checkpoint .*Lower train\.lr"):
        train_stream(toy(root, train, val), "rgb", *configs(epochs=3), tmp_path)
    assert not (tmp_path / "last.pt").exists()


def test_a_stream_asked_for_while_it_trains_says_so(tmp_path):
    """eval or predict on a run folder while its training runs said only "has not finished ... run the
    train stage again", which would start a second run on the same folder."""
    from p3dbase.lock import hold_lock
    from streams.checkpoint import run_lock

    run = tmp_path / "rgb" / "split1"
    run.mkdir(parents=True)
    with hold_lock(run_lock(run), holder="4242"):
        with pytest.raises(StreamsError, match=r"does not exist yet: training in .*split1 is running now \(pid 4242; "
                                               r"it holds no checkpoint\): wait for it to finish"):
            final_checkpoint(run)
    # A folder no run ever wrote into (model.init_from=/tmp) was called an unfinished run to resume.
    with pytest.raises(StreamsError, match=r"split1 is a folder but no training run \(no last\.pt, no checkpoint\): "
                                           r"give a checkpoint file or a run folder$"):
        final_checkpoint(run)
    (run / "metrics.jsonl").write_text("")  # a run killed before its first checkpoint
    with pytest.raises(StreamsError, match=r"has not finished \(it holds no checkpoint\); run the train stage"):
        final_checkpoint(run)


def test_other_settings_do_not_resume(toy_store, tmp_path, configs):
    root, train, val = toy_store
    train_stream(toy(root, train, val), "flow", *configs(max_steps=1), tmp_path)
    with pytest.raises(StreamsError, match=r"train\.lr: 0\.01 in the checkpoint, 0\.1 now"):
        train_stream(toy(root, train, val), "flow", *configs(max_steps=2, lr=0.1), tmp_path)
    with pytest.raises(StreamsError, match="has not finished"):
        final_checkpoint(tmp_path)
    # What a run killed mid-write left (a half-written checkpoint of a process that is gone) is removed
    # when the folder's next run takes it; it stayed for ever (hundreds of MB each for P3D-199).
    import socket
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    left = tmp_path / f".checkpoint_00000002.pt.tmp-{socket.gethostname()}-{dead.pid}-3"
    left.write_bytes(b"half a checkpoint")
    # The run's name only places the folder: one renamed (runs/a -> runs/b) resumes under its new name.
    resumed = train_stream(toy(root, train, val), "flow", *configs(max_steps=2, run="renamed"), tmp_path)
    assert resumed.resumed_from == tmp_path / "checkpoint_00000001.pt" and resumed.step == 2
    assert not left.exists()


def test_warm_up_longer_than_an_iterations_run_is_refused(toy_store, tmp_path, configs):
    """train.iterations = 4 with warmup_epochs = 1000 trained at a learning rate that never left the
    warm-up (the same setting counted in epochs was refused)."""
    root, train, val = toy_store
    with pytest.raises(StreamsError, match=r"^train\.warmup_epochs = 1000 is \d+ steps here, more than "
                                           r"train\.iterations = 4: the run would end in its warm-up"):
        train_stream(toy(root, train, val), "rgb", *configs(iterations=4, warmup_epochs=1000.0), tmp_path)


def test_a_checkpoint_from_before_a_new_setting_resumes(toy_store, tmp_path, configs):
    # Checkpoints written before train.val_groups / val_fraction / run existed lack those keys: a resume
    # with the new fields at their defaults is the same run, not a changed one.
    root, train, val = toy_store
    train_stream(toy(root, train, val), "flow", *configs(max_steps=1), tmp_path)
    path = tmp_path / "checkpoint_00000001.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("val_groups", "val_fraction", "run"):
        del state["train_config"][key]
    save_checkpoint(path, state)
    result = train_stream(toy(root, train, val), "flow", *configs(max_steps=2), tmp_path)
    assert result.resumed_from == path and result.step == 2
    with pytest.raises(StreamsError, match=r"train\.val_fraction: 0\.0 in the checkpoint, 0\.5 now"):
        train_stream(toy(root, train, val), "flow", *configs(max_steps=3, val_fraction=0.5), tmp_path)


def test_user_errors(toy_store, tmp_path, configs):
    root, train, val = toy_store
    with pytest.raises(StreamsError, match="class9/v001"):
        train_stream(toy(root, train + [("class9/v001", 1)], val), "rgb", *configs(), tmp_path / "out")
    with pytest.raises(StreamsError, match="batch_size"):
        train_stream(toy(root, train[:3], val), "rgb", *configs(), tmp_path / "out")
    with pytest.raises(StreamsError, match=r"\[train\] crop"):
        train_stream(toy(root, train, val), "rgb", *configs(crop=40), tmp_path / "out")


def test_bad_checkpoints_name_the_file(flow_run, tmp_path):
    _, out = flow_run
    data = (out / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "foreign.pt")
    (tmp_path / "text.pt").write_text("hello")
    for name in ("cut.pt", "foreign.pt", "text.pt", "absent.pt"):
        with pytest.raises(StreamsError, match=name):
            load_checkpoint(tmp_path / name)


def test_checkpoints_are_read_with_weights_only(tmp_path):
    class Payload:  # anything but tensors and plain containers must be refused, not executed
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"format": "p3d-two-stream streams checkpoint", "version": 1, "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(StreamsError, match=r"evil\.pt holds code \(the pickled Python object print\).*not loaded"):
        load_checkpoint(tmp_path / "evil.pt")
    # A plain pickle (protocol 4, not torch's format) is one error, without torch's two lines of warning.
    (tmp_path / "plain.pt").write_bytes(pickle.dumps({"x": 1}, protocol=4))
    with warnings.catch_warnings(record=True) as said, pytest.raises(StreamsError, match=r"plain\.pt cannot be read"):
        warnings.simplefilter("always")
        load_checkpoint(tmp_path / "plain.pt")
    assert not [w for w in said if "pickle protocol" in str(w.message)]


def test_a_checkpoint_without_read_permission_is_named_as_such(tmp_path, monkeypatch):
    """It was "cannot be read (truncated or not a PyTorch file?): [Errno 13] Permission denied": a user
    then looks for a damaged file. Real permissions for a user; as root (who reads anything) os.access
    answers as for a user."""
    path = save_tiny_checkpoint(tmp_path / "locked.pt", "rgb")
    path.chmod(0)
    deny_as_for_a_user(monkeypatch, path, os.R_OK)
    try:
        with pytest.raises(StreamsError, match=r"^checkpoint .*locked\.pt cannot be read: no permission$"):
            load_checkpoint(path)
    finally:
        path.chmod(0o644)


def test_a_checkpoint_path_that_is_a_fifo_is_named_as_such(tmp_path):
    """It said "does not exist" of a named pipe that does."""
    os.mkfifo(tmp_path / "pipe.pt")
    with pytest.raises(StreamsError, match=r"pipe\.pt is not a regular file \(a FIFO, socket or device\)$"):
        load_checkpoint(tmp_path / "pipe.pt")


def test_a_thousand_dataloader_workers_are_refused_in_one_line(toy_store, tmp_path, configs, monkeypatch):
    """train.workers = 1000 started 1000 DataLoader processes (twice, with validation): the OOM killer.
    At most 4 per usable core (p3dbase.cluster.local_processes), said before any process starts."""
    import joblib

    from p3dbase.errors import SettingError

    monkeypatch.setattr(joblib, "cpu_count", lambda: 2)
    root, train, val = toy_store
    model_cfg, train_cfg = configs(workers=9)
    with pytest.raises(SettingError, match=r"^train\.workers = 9 would start 9 worker processes on 2 usable") as err:
        train_stream(stream_data(root, train, val, CLASSES), "flow", model_cfg, train_cfg, tmp_path / "run")
    # 0 is no worker for train.workers (it said "or 0 for one per core", the meaning of flow.jobs' 0)
    assert str(err.value).endswith("or 0 for none (loading in the trainer's process)")


def test_weights_that_are_not_finite_are_never_checkpointed(toy_store, tmp_path, monkeypatch, configs):
    """lr=10 blew up BatchNorm's running statistics while the loss (on batch statistics) stayed finite:
    the run 'succeeded' with inf in its checkpoints. Here bn1.running_var becomes inf after step 3."""
    root, train, val = toy_store
    real = streams_train.train_step

    def blowing_up(net, *args, **kwargs):
        out = real(net, *args, **kwargs)
        blowing_up.steps += 1
        if blowing_up.steps >= 3:
            net.bn1.running_var.fill_(math.inf)
        return out

    blowing_up.steps = 0
    monkeypatch.setattr(streams_train, "train_step", blowing_up)
    with pytest.raises(StreamsError, match=r"weights are not finite at step 4 \(1 tensor\(s\) with inf/NaN, "
                                           r"e\.g\. bn1\.running_var\).*kept checkpoint .*checkpoint_00000002\.pt"):
        train_stream(toy(root, train, val), "flow", *configs(checkpoint_every=2), tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["checkpoint_00000002.pt"]
    assert list(tmp_path.glob(".*")) == []
    _, ckpt = load_checkpoint(tmp_path / "checkpoint_00000002.pt")
    assert all(torch.isfinite(t).all() for t in ckpt.state["model"].values() if t.is_floating_point())


def test_evaluation_refuses_a_checkpoint_with_non_finite_weights(flow_run, tmp_path):
    """Written by an older version or another tool: eval and predict would score NaN."""
    _, out = flow_run
    state = torch.load(out / "last.pt", weights_only=True)
    state["model"]["fc.bias"][1] = math.nan
    del state["checksum"]
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(StreamsError, match=r"nan\.pt holds non-finite weights \(1 tensor\(s\) .*fc\.bias\)"):
        load_checkpoint(tmp_path / "nan.pt")
    with pytest.raises(StreamsError, match="not written: the weights are not finite"):
        save_checkpoint(tmp_path / "again.pt", state)
    assert not (tmp_path / "again.pt").exists()
    # A negative BatchNorm variance (an edited or foreign file) makes every output NaN as well
    state["model"]["fc.bias"][1] = 0.0
    name = next(k for k in state["model"] if k.endswith("running_var"))
    state["model"][name][0] = -1.0
    torch.save(state, tmp_path / "negvar.pt")
    with pytest.raises(StreamsError, match=rf"negvar\.pt holds a negative BatchNorm running variance .*{name}"):
        load_checkpoint(tmp_path / "negvar.pt")


def test_a_checkpoint_holds_a_checksum_of_its_contents(flow_run, tmp_path):
    _, out = flow_run
    data = bytearray((out / "last.pt").read_bytes())
    weights = read_checkpoint(out / "last.pt").state["model"]["layer1.0.conv_reduce.weight"]
    at = bytes(data).find(weights.numpy().tobytes())
    assert at > 0
    data[at + 5] ^= 0x10  # one flipped bit inside a tensor: torch.load reads it without complaint
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    with pytest.raises(StreamsError, match=r"flipped\.pt is corrupt: its contents do not match the SHA-256"):
        read_checkpoint(tmp_path / "flipped.pt")
    old = torch.load(out / "last.pt", weights_only=True)
    old["checksum"] = "deadbeef"  # a checksum that is no table: the check was skipped without a word
    torch.save(old, tmp_path / "odd.pt")
    with pytest.raises(StreamsError, match=r"odd\.pt: its checksum is 'deadbeef', not a table of its SHA-256"):
        read_checkpoint(tmp_path / "odd.pt")
    del old["checksum"]  # written before checksums: still read
    torch.save(old, tmp_path / "old.pt")
    assert read_checkpoint(tmp_path / "old.pt").step == 20


def test_a_full_disk_while_checkpointing_is_one_error_and_leaves_no_temp(toy_store, tmp_path, monkeypatch, configs):
    """torch.save reports a failed write as "unexpected pos ..." (a RuntimeError without the cause): the
    full disk must still be one DiskFullError naming the checkpoint."""
    root, train, val = toy_store

    class NearlyFull(io.FileIO):  # room for 1000 bytes of a checkpoint, as a full disk leaves
        def write(self, data):
            if self.tell() + len(data) > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    def small_disk(path, mode="r", *args, **kwargs):
        if "checkpoint_" in str(path) and "b" in mode:
            return NearlyFull(path, "w")
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(p3dbase.atomic, "open", small_disk, raising=False)  # atomic_write opens the temporary file
    with pytest.raises(DiskFullError, match=r"checkpoint_00000002\.pt: disk full"):
        train_stream(toy(root, train, val), "flow", *configs(checkpoint_every=2), tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]

    def no_room_to_append(path, mode="r", *args, **kwargs):
        if mode == "a":
            raise OSError(errno.ENOSPC, "No space left on device")
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(streams_metrics, "open", no_room_to_append, raising=False)  # metrics.jsonl is appended to
    with pytest.raises(DiskFullError, match=r"metrics\.jsonl: disk full"):
        train_stream(toy(root, train, val), "flow", *configs(checkpoint_every=2), tmp_path / "again")


def test_a_resume_on_another_training_list_is_refused(toy_store, tmp_path, configs):
    """A video gone from the list changed the steps per epoch (4 -> 3) and the resumed schedule jumped."""
    root, train, val = toy_store
    train_stream(toy(root, train, val), "flow", *configs(max_steps=1), tmp_path)
    with pytest.raises(StreamsError, match=r"the training list changed: 0 video\(s\) added; 1 video\(s\) removed, "
                                           r"e\.g\. down/v_down_15 \(32 videos then, 31 now\)"):
        train_stream(toy(root, train[:-1], val), "flow", *configs(max_steps=2), tmp_path)
    with pytest.raises(StreamsError, match="the same videos in another order"):
        train_stream(toy(root, train[::-1], val), "flow", *configs(max_steps=2), tmp_path)
    resumed = train_stream(toy(root, train, val), "flow", *configs(max_steps=2), tmp_path)
    assert resumed.step == 2 and resumed.resumed_from == tmp_path / "checkpoint_00000001.pt"


def test_a_killed_data_loader_worker_stops_with_the_checkpoint_to_resume(toy_store, tmp_path, monkeypatch, configs):
    """A worker killed by the system (SIGKILL, as the OOM killer sends) stops the run with one line naming
    the checkpoint, not a traceback; the re-run resumes from it (exactly: test_resume_continues_exactly)."""
    root, train, val = toy_store
    real = ClipDataset.__getitem__

    def killed_later(self, key):
        if self.train and get_worker_info() is not None:
            killed_later.calls += 1
            if killed_later.calls > 40:  # in the second epoch, after the checkpoints of steps 3 and 4
                os.kill(os.getpid(), signal.SIGKILL)
        return real(self, key)

    killed_later.calls = 0
    monkeypatch.setattr(ClipDataset, "__getitem__", killed_later)
    settings = dict(epochs=5, lr=0.02, schedule="cosine", checkpoint_every=3, keep_checkpoints=2, workers=1)
    with pytest.raises(StreamsError, match=r"a data loader worker died \(DataLoader worker \(pid(\(s\))? \d+\) "
                                           r"(is killed by signal|exited unexpectedly).*re-run the same "
                                           r"command to resume from "
                                           r".*checkpoint_00000004\.pt$") as err:
        train_stream(toy(root, train, val), "flow", *configs(**settings), tmp_path)
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    again = train_stream(toy(root, train, val), "flow", *configs(max_steps=6, **settings), tmp_path)
    assert again.step == 6 and again.resumed_from == tmp_path / "checkpoint_00000004.pt"


def test_param_groups_follow_the_caffe_multipliers(configs):
    model = build_model("p3d_tiny", 4, in_channels=2, partial_bn=True)
    groups = {g["name"]: g for g in param_groups(model, "flow", lr=0.01, weight_decay=5e-4, fc_lr_mult=10.0,
                                                     flow_conv1_lr_mult=5.0)}
    assert {n: (g["lr"], g["weight_decay"]) for n, g in groups.items()} == {
        "weights": (0.01, 5e-4), "bn": (0.01, 0.0), "fc.weight": (0.1, 5e-4), "fc.bias": (0.2, 0.0),
        "conv1": (0.05, 5e-4)}
    assert len(groups["bn"]["params"]) == 2  # partial BN: only bn1's scale and shift train
    counted = sum(len(g["params"]) for g in groups.values())
    assert counted == sum(p.requires_grad for p in model.parameters())
    rgb_groups = param_groups(build_model("p3d_tiny", 4), "rgb", lr=0.01, weight_decay=5e-4)
    assert "conv1" not in {g["name"] for g in rgb_groups}


def test_learning_rate_schedules(configs):
    _, step = configs(epochs=10, lr_steps=[4, 8], warmup_epochs=1)
    assert [lr_schedule(step, 10)(s) for s in (0, 4, 9, 10, 39, 40, 80, 99)] == \
        pytest.approx([0.1, 0.5, 1.0, 1.0, 1.0, 0.1, 0.01, 0.01])
    _, cosine = configs(epochs=10, schedule="cosine")
    assert [lr_schedule(cosine, 10)(s) for s in (0, 50, 100)] == pytest.approx([1.0, 0.5, 0.0])


@pytest.mark.numerical  # also run with 2 threads by `make test`
def test_channels_last_gives_the_same_logits():
    """The CUDA memory format (channels_last_3d for the 3-D convs, channels_last for res5) changes no result."""
    torch.manual_seed(0)
    model = build_model("p3d_tiny", 5).eval().double()  # float64: the kernels' summation orders differ
    x = torch.randn(2, 3, 8, 40, 40, dtype=torch.float64)
    expected = model(x)
    to_channels_last(model)
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert model.layer4[0].conv_s.weight.is_contiguous(memory_format=torch.channels_last)
    logits = model(x.contiguous(memory_format=torch.channels_last_3d))
    assert (logits - expected).abs().max() <= 1e-10 * expected.abs().max()


def test_curves_show_the_learning_rate_schedule(flow_run, configs):
    _, out = flow_run
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lr_ax = curves_figure(history, "flow").axes[2]
    (line,) = lr_ax.get_lines()
    steps = list(line.get_xdata())
    assert steps == list(range(1, 21)) and lr_ax.get_ylabel() == "learning rate"
    _, cfg = configs(epochs=5, lr=0.02, schedule="cosine")
    # the lr metrics.jsonl logs after step s is the schedule's at s: 0.02 x a cosine from 1 to 0 over 20 steps
    assert list(line.get_ydata()) == pytest.approx([0.02 * lr_schedule(cfg, 4)(s) for s in steps], rel=1e-12, abs=1e-15)
    assert line.get_ydata()[-1] == 0.0 and line.get_ydata()[9] == pytest.approx(0.01)


def test_the_loss_axis_labels_are_numbers_not_tex_source():
    """The log loss axis was labelled `$\\mathdefault{10^{1}}$` in curves.png and report.html: matplotlib's
    tick labels are TeX, and the pictures draw text as written (p3dbase.plotting.drawing)."""
    history = [{"kind": "train", "step": s, "epoch": 1, "loss": loss, "acc": 0.5, "lr": 0.1}
               for s, loss in enumerate([40.0, 12.0, 3.0, 0.7, 0.2], 1)]
    fig = curves_figure(history, "rgb")
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
    assert labels and all(float(text) > 0 for text in labels)  # plain numbers: "0.1", "1", "10", "100"
    assert {"0.1", "1", "10"} <= set(labels)


def test_a_loss_of_zero_is_drawn_without_warnings():
    """One class: the loss is 0 and matplotlib warned twice per epoch that it cannot be log-scaled."""
    import warnings

    history = [{"kind": "train", "step": s, "epoch": 1, "loss": 0.0, "acc": 1.0, "lr": 0.1} for s in (1, 2, 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = curves_figure(history, "rgb")
        fig.canvas.draw()
    assert fig.axes[0].get_yscale() == "linear"
    history[0]["loss"] = 0.5
    assert curves_figure(history, "rgb").axes[0].get_yscale() == "log"


def test_checkpoints_carry_the_flow_settings_and_a_resume_on_other_flow_is_refused(toy_store, tmp_path, configs):
    root, train, val = toy_store
    out = tmp_path / "out"
    first = train_stream(toy(root, train, val), "flow", *configs(max_steps=1), out)
    assert read_checkpoint(first.checkpoint).flow == flow_settings(20.0, {}) == {"bound": 20.0, "source": "videos"}
    other = tmp_path / "bound5"  # the same videos, their flow stored at another bound
    shutil.copytree(root, other)
    create_store(other, codec="raw", bound=5.0, overwrite=True)
    with pytest.raises(StreamsError, match=r"cannot resume: flow stream .*checkpoint_00000001\.pt was trained on "
                                           r"input made with bound = 20\.0, but the store at .*bound5 has bound = 5\.0 "
                                           r"\(bound differ\).*another output directory"):
        train_stream(toy(other, train, val), "flow", *configs(max_steps=2), out)
    # the RGB stream reads no flow: its frames depend on the size alone
    rgb = train_stream(toy(root, train, val), "rgb", *configs(max_steps=1), tmp_path / "rgb")
    again = train_stream(toy(other, train, val), "rgb", *configs(max_steps=2), tmp_path / "rgb")
    assert again.resumed_from == rgb.checkpoint and read_checkpoint(again.checkpoint).flow["bound"] == 5.0


def test_tensorboard_shows_the_numbers_of_metrics_jsonl(toy_store, tmp_path, configs, capsys):
    """A run stopped after its checkpoint of step 2 had logged step 3: the resumed run logs step 3 again,
    and TensorBoard, like metrics.jsonl, shows each step once. Validation accuracy is on the console."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    root, train, val = toy_store
    settings = dict(epochs=2, checkpoint_every=2, tensorboard=True)
    train_stream(toy(root, train, val), "flow", *configs(max_steps=3, **settings), tmp_path)
    (tmp_path / "checkpoint_00000003.pt").unlink()
    result = train_stream(toy(root, train, val), "flow", *configs(**settings), tmp_path)
    assert result.resumed_from == tmp_path / "checkpoint_00000002.pt" and result.step == 8

    events = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    logged = train_records(tmp_path)
    for name in ("loss", "acc", "lr", "clips_per_s", "data_wait"):
        scalars = events.Scalars(f"train/{name}")
        assert [e.step for e in scalars] == [r["step"] for r in logged] == list(range(1, 9))
        expected = [r[name] for r in logged]  # TensorBoard keeps float32
        assert [e.value for e in scalars] == pytest.approx(expected, rel=1e-6, abs=1e-30)
    validation = train_records(tmp_path, "val")
    for name in ("acc", "video_acc", "loss"):
        scalars = events.Scalars(f"val/{name}")
        assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in scalars] == \
            [(r["step"], r[f"val_{name}"]) for r in validation]
    console = capsys.readouterr().out
    for r in validation:
        assert (f"flow epoch {r['epoch']}: val clip accuracy {100 * r['val_acc']:.1f}%, "
                f"video {100 * r['val_video_acc']:.1f}%") in console


def test_tensorboard_without_the_package_is_one_clear_error(toy_store, tmp_path, monkeypatch, configs):
    root, train, val = toy_store
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(StreamsError, match=r"train\.tensorboard = true needs the tensorboard package .*\[tb\]"):
        train_stream(toy(root, train, val), "flow", *configs(tensorboard=True), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_broken_tensorboard_or_odd_metrics_lines_are_one_line_not_a_traceback(tmp_path, monkeypatch):
    """A tensorboard whose import fails with protobuf's TypeError, and a metrics.jsonl line with
    `"step": null` (an edit, another tool) were tracebacks on resume."""
    import builtins

    from streams import metrics

    real = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise TypeError("Descriptors cannot be created directly.\nIf this call came from a _pb2.py file ...")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(StreamsError, match=r"^train\.tensorboard = true: the tensorboard package fails to import "
                                           r"\(TypeError: Descriptors cannot be created directly\.\): repair it"):
        metrics._summary_writer()
    monkeypatch.undo()
    # bytes that are not UTF-8 (a damaged disk block) were a UnicodeDecodeError traceback on resume
    (tmp_path / "metrics.jsonl").write_bytes(b'{"kind": "train", "step": 1}\n{"kind": "train", "step": null}\n'
                                             b'{"kind": "train", "step": "x"}\n\xff\xfe\x00garbage\n'
                                             b'{"kind": "train", "step": 2, "note": "\xe9"}\n'
                                             b'{"kind": "train", "step": 3}\n[1]\n')
    logger = metrics.MetricsLogger(tmp_path, is_main=True, modality="rgb", arch="p3d_tiny")
    logger.resume_at(2)
    assert logger.history == [{"kind": "train", "step": 1}]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_forked_loader_workers_after_opencv_work_do_not_hang(toy_store, tmp_path):
    # A forked child that reconfigures OpenCV's thread pool after the parent has used it waits forever:
    # DataLoader workers did, after earlier OpenCV work in the same process (a pytest run, a notebook).
    # train_stream shuts the pool down before forking (flow.video.opencv_single_thread).
    root, train, val = toy_store
    script = f"""
import cv2, numpy as np
from streams.train import lr_schedule, train_stream
from tests.builders import stream_data, toy_configs
cv2.setNumThreads(4)
img = np.random.rand(2000, 2000).astype(np.float32)
for _ in range(5):
    cv2.GaussianBlur(img, (31, 31), 5)
result = train_stream(stream_data({str(root)!r}, {train!r}, {val!r}, ["up", "down"]), "flow",
                      *toy_configs(max_steps=2, workers=2), {str(tmp_path)!r})
print(result.step, cv2.getNumThreads())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split()[-2:] == ["2", "4"], out.stderr[-2000:]


def test_fp16_amp_resumes_exactly_with_the_grad_scaler_state(toy_store, tmp_path, monkeypatch, configs):
    """fp16 autocast with a GradScaler (on CUDA in real runs; here on the CPU, where torch has both):
    a run stopped at step 3 continues as the uninterrupted one, the scaler's scale and growth count
    included, which a fresh scaler would reset."""
    monkeypatch.setattr(streams_train, "autocast_dtype", lambda amp, device: torch.float16)
    root, train, val = toy_store
    settings = dict(epochs=2, checkpoint_every=3, amp="fp16")
    whole = train_stream(toy(root, train, val), "flow", *configs(max_steps=6, **settings), tmp_path / "whole")
    train_stream(toy(root, train, val), "flow", *configs(max_steps=3, **settings), tmp_path / "parts")
    stopped = read_checkpoint(tmp_path / "parts" / "checkpoint_00000003.pt").state["scaler"]
    assert stopped["_growth_tracker"] > 0 or stopped["scale"] != 65536.0  # not a fresh scaler's state
    rest = train_stream(toy(root, train, val), "flow", *configs(max_steps=6, **settings), tmp_path / "parts")
    assert rest.resumed_from == tmp_path / "parts" / "checkpoint_00000003.pt"
    a, b = read_checkpoint(whole.checkpoint).state, read_checkpoint(rest.checkpoint).state
    assert a["scaler"] == b["scaler"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    losses = [[r["loss"] for r in train_records(tmp_path / run)] for run in ("whole", "parts")]
    assert losses[0] == losses[1] and len(losses[0]) == 6


def test_a_second_run_on_a_busy_output_folder_is_refused(toy_store, tmp_path, configs):
    """Two `train` commands on one folder would both train and log every step twice: the second one
    stops at once, naming the folder and the process that holds it (the lock dies with its holder)."""
    from p3dbase.lock import try_lock

    root, train, val = toy_store
    out = tmp_path / "out"
    with try_lock(tmp_path / ".out.lock") as held:  # another run on `out`, as train_stream takes it
        assert held is None
        busy = rf"{out} is being written by another training run \(pid {os.getpid()}\)"
        with pytest.raises(StreamsError, match=busy):
            train_stream(toy(root, train, val), "flow", *configs(max_steps=1), out)
    assert not (out / "metrics.jsonl").exists()
    assert train_stream(toy(root, train, val), "flow", *configs(max_steps=1), out).step == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_loader_workers_die_with_the_trainer():
    """A worker outlived a kill -9 of its trainer by ~10 s (torch's own watchdog polls): the kernel now
    kills it with the trainer."""
    from torch.utils.data import Dataset

    from streams.loaders import make_loader
    from tests.builders import death_signal

    class DeathSignal(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return death_signal()

    loader = make_loader(DeathSignal(), batch=2, workers=1, seed=0, pin_memory=False)
    assert next(iter(loader)).tolist() == [signal.SIGKILL, signal.SIGKILL]
    assert death_signal() == 0  # the trainer itself is not tied to pytest


def test_a_batch_a_stuck_worker_never_sends_is_one_line_not_a_wait_for_ever(tmp_path, monkeypatch):
    """A worker whose batch never comes (its queue thread failed on EMFILE under `ulimit -n`, a hung disk)
    was waited for for ever; the loader now gives up after loaders.BATCH_TIMEOUT_S and the trainer says so
    in one line, with how to resume."""
    import time

    from torch.utils.data import Dataset

    from streams import loaders

    class Stuck(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            time.sleep(30)
            return i

    monkeypatch.setattr(loaders, "BATCH_TIMEOUT_S", 0.5)
    loader = loaders.make_loader(Stuck(), batch=2, workers=1, seed=0, pin_memory=False)
    started = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        next(iter(loader))
    assert time.monotonic() - started < 20
    said = loaders.stop_on_dead_worker(err.value, [loader], "rgb", tmp_path)
    assert str(said) == ("rgb stream: no batch from the data loader workers in 0.5 s (a worker is stuck: too few open "
                         "files (`ulimit -n`) or too little memory, or the store's disk hangs); re-run the same "
                         "command to start again (no checkpoint had been written)")


def test_a_worker_stopped_by_the_process_group_s_signal_is_a_stop_not_an_out_of_memory_kill(tmp_path, monkeypatch):
    """SIGTERM to the whole process group (scancel, docker stop) or Ctrl-C in a terminal kills the workers
    too, and their death could be seen before this process's own signal: the run ended "a data loader
    worker died (... the system kills workers that run out of memory ...)", exit 2. Now this process's
    signal is let in (its handler stops the run as a stop); a worker stopped alone is named as such."""
    import threading

    from streams import loaders

    monkeypatch.setattr(loaders, "SIGNAL_WAIT_S", 5.0)
    death = RuntimeError("DataLoader worker (pid 4242) is killed by signal: Terminated. ")

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()  # the group's signal, a bit later
        with pytest.raises(KeyboardInterrupt):
            loaders.stop_on_dead_worker(death, [], "rgb", tmp_path)
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.setattr(loaders, "SIGNAL_WAIT_S", 0.0)
    said = str(loaders.stop_on_dead_worker(death, [], "rgb", tmp_path))
    assert said.startswith("rgb stream: a data loader worker was stopped by a signal sent to it (DataLoader worker "
                           "(pid 4242) is killed by signal: Terminated)") and "out of memory" not in said
    killed = RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")  # the OOM killer's SIGKILL
    assert "the system kills workers that run out of memory" in str(
        loaders.stop_on_dead_worker(killed, [], "rgb", tmp_path))
    # This process's signal came first and its exception was lost (raised in a finalizer): noted, it is
    # the stop at once, and no next epoch starts (its iter() waited 10 minutes on the dead workers).
    from p3dbase.cluster import clear_stop, note_stop

    class Terminated(KeyboardInterrupt):
        pass

    note_stop(Terminated())
    try:
        with pytest.raises(Terminated):
            loaders.stop_on_dead_worker(death, [], "rgb", tmp_path)
        with pytest.raises(Terminated):
            next(loaders.read_batches([1, 2], tmp_path))
    finally:
        clear_stop()
    assert next(loaders.read_batches([1, 2], tmp_path)) == 1


def test_a_damaged_pack_read_by_a_worker_is_one_line_naming_the_video(toy_store, tmp_path, configs):
    """Read in a DataLoader worker, a broken video came back as torch's 15-line "Caught FlowError in
    DataLoader worker process 0. Original Traceback ..."; now one line: the video and how to resume."""
    root, train, val = toy_store
    store = tmp_path / "store"
    shutil.copytree(root, store)
    damaged = train[5][0]
    pack = store / f"{damaged}.pack"
    pack.write_bytes(pack.read_bytes()[:100])
    for workers in (1, 0):
        with pytest.raises(P3DError) as err:
            train_stream(toy(store, train, val), "flow", *configs(workers=workers), tmp_path / f"out{workers}")
        text = str(err.value)
        assert "\n" not in text and "Traceback" not in text and damaged in text, text
        assert "is not a complete pack file: run `python -m pipeline verify --config ...` (it marks the damaged " \
            "videos), then `make flow` (it redoes them); once the store is repaired, re-run" in text, text
        assert text.endswith("re-run the same command to start again (no checkpoint had been written)")


def test_compile_is_off_on_a_cpu_as_the_config_says(toy_store, tmp_path, configs, monkeypatch):
    """`train.compile = true` on a CPU compiled anyway (a minute of compiling for a tiny run), though the
    config's Speed settings say they act on CUDA only."""
    root, train, val = toy_store

    def compiled(*args, **kwargs):
        raise AssertionError("torch.compile called on a CPU run")

    monkeypatch.setattr(torch, "compile", compiled)
    model_cfg, train_cfg = configs(epochs=1, compile=True)
    assert train_stream(toy(root, train, val), "rgb", model_cfg, train_cfg, tmp_path / "run").finished


def test_a_folder_where_the_run_lock_belongs_is_named(toy_store, tmp_path, configs):
    """A folder at .split1.lock read "cannot write the run's folder (Is a directory)" and named a key that
    does not exist (train.work_dir); the folder is writable, the lock's place is taken."""
    from streams.checkpoint import run_lock

    root, train, val = toy_store
    out = tmp_path / "split1"
    run_lock(out).mkdir(parents=True)
    with pytest.raises(StreamsError, match=r"\.split1\.lock is a folder where the run's lock file belongs: move it "
                                           r"away and re-run$"):
        train_stream(toy(root, train, val), "rgb", *configs(epochs=1), out)


def test_a_crop_the_net_cannot_take_is_one_line_before_any_work():
    """`train.crop = 1` (pooled to nothing) and one 16-px clip a step (one BatchNorm value a channel) passed
    the config check and were a traceback from the first step."""
    from streams.train import check_clips_fit

    with pytest.raises(StreamsError, match=r"^train\.crop = 1 with 2 clip\(s\) of 4 frames a step "
                                           r"\(train\.batch_size\) is too small for p3d_tiny \(Given input size"):
        check_clips_fit("p3d_tiny", "rgb", 2, 4, 1)
    with pytest.raises(StreamsError, match=r"train\.crop = 16 with 1 clip\(s\) .* \(Expected more than 1 value per "
                                           r"channel when training"):
        check_clips_fit("p3d63", "flow", 1, 16, 16)
    check_clips_fit("p3d63", "flow", 1, 16, 16, partial_bn=True)  # frozen BNs: trains (a real step does too)
    check_clips_fit("p3d_tiny", "flow", 2, 4, 3)  # the smallest crop the nets take
    check_clips_fit("p3d199", "rgb", 1, 16, 160)  # one clip of the paper's size: fine


def test_cuda_decoding_on_a_run_without_cuda_is_refused_naming_the_device(toy_store, tmp_path, configs):
    """It said the nvjpeg extra (torchvision) was missing, after the workers had started: installing it
    would not have given a GPU to decode on."""
    root, train, val = toy_store
    with pytest.raises(StreamsError, match=r'^train\.decode = "cuda" decodes the training JPEGs with nvJPEG on a '
                                           r'CUDA device, but this run trains on cpu: leave train\.decode = "cpu"'):
        train_stream(toy(root, train, val), "rgb", *configs(decode="cuda", max_steps=1), tmp_path)
