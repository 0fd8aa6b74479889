"""streams.distributed.setup: a training process's device (p3dbase.device), a missing GPU as a SettingError."""
import pytest
import torch

from p3dbase.errors import SettingError
from streams import distributed


def test_a_missing_gpu_is_a_setting_error_naming_train_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SettingError, match=r"^train.device: 'cuda' asked for, but this torch sees no CUDA GPU"):
        distributed.setup("cuda")
    ctx = distributed.setup("auto")
    assert (ctx.device, ctx.world_size, ctx.owns_group) == (torch.device("cpu"), 1, False)


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "abc"}, r"^environment variable WORLD_SIZE='abc' is not a whole number"),
    ({"WORLD_SIZE": "1", "RANK": "3"}, r"^environment variables WORLD_SIZE=1, RANK=3, LOCAL_RANK=0: a rank must be "),
    ({"WORLD_SIZE": "2", "RANK": "1"}, r"^WORLD_SIZE=2 but MASTER_ADDR and MASTER_PORT not set: launch with torchrun"),
    ({"WORLD_SIZE": "0"}, r"a rank must be 0..WORLD_SIZE-1"),
])
def test_a_wrong_launch_environment_is_one_line_before_any_wait(monkeypatch, env, message):
    """Leftover torchrun / SLURM variables were tracebacks (int('abc'), DistributedSampler's 'Invalid rank
    3', env:// rendezvous's MASTER_ADDR) or, with an address, a silent 30-minute wait deaf to Ctrl-C."""
    from streams.errors import StreamsError

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StreamsError, match=message):
        distributed.setup("cpu")


def test_a_group_that_never_forms_is_one_line_after_the_join_timeout(monkeypatch, capsys):
    """WORLD_SIZE=2 with an address and no second process waited torch's 30 minutes without a word;
    it says what it waits for, and gives up after JOIN_TIMEOUT with one line."""
    import datetime
    import socket

    from streams.errors import StreamsError

    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed, "JOIN_TIMEOUT", datetime.timedelta(seconds=2))
    with pytest.raises(StreamsError, match=rf"^rank 0 could not join the 2 processes at 127.0.0.1:{port}: .*"
                                           r"unset them to train in one process\)$"):
        distributed.setup("cpu")
    assert f"train: waiting for the 2 processes of the group at 127.0.0.1:{port}" in capsys.readouterr().out


def test_only_process_zero_prints_notes_and_warnings(monkeypatch, capsys, caplog):
    """Every rank printed "held out as validation" and the readers' warnings: N copies under torchrun."""
    import logging

    log = logging.getLogger("pipeline.datasets")
    for name, value in {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    for rank, heard in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        caplog.clear()
        with caplog.at_level(logging.WARNING), distributed.main_process_speaks():
            print("train: held out as validation")
            log.warning("3 of 9 listed videos skipped")
        assert ("held out" in capsys.readouterr().out) is heard
        assert ("skipped" in caplog.text) is heard
    assert logging.root.manager.disable == logging.NOTSET  # given back
