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
