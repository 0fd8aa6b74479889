"""p3dbase.device.resolve_device: the one reading of every `device` setting, on a machine with or without GPUs."""
import pytest
import torch

from p3dbase.device import resolve_device
from p3dbase.errors import SettingError


@pytest.fixture
def two_gpus(monkeypatch):
    """torch as it looks with two visible GPUs (torch.device("cuda", i) itself needs none)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize("setting, local_rank, expected", [
    ("cpu", 0, torch.device("cpu")),
    ("auto", 0, torch.device("cuda", 0)),
    ("auto", 1, torch.device("cuda", 1)),  # torchrun's second process on the node
    ("cuda", 0, torch.device("cuda", 0)),
    ("cuda", 1, torch.device("cuda", 1)),
    ("cuda:1", 0, torch.device("cuda", 1)),  # an explicit index wins over the local rank
])
def test_with_two_gpus(two_gpus, setting, local_rank, expected):
    assert resolve_device(setting, "train.device", local_rank) == expected


def test_a_gpu_that_is_not_there_is_refused(two_gpus):
    with pytest.raises(SettingError, match=r"^eval.device: 'cuda:2' asked for GPU 2, but only 2 GPU\(s\) are visible$"):
        resolve_device("cuda:2", "eval.device")
    with pytest.raises(SettingError, match="asked for GPU 2"):
        resolve_device("auto", "train.device", local_rank=2)


def test_without_gpu_auto_is_the_cpu_and_cuda_an_error(no_gpu):
    assert resolve_device("auto", "flow.device") == torch.device("cpu")
    assert resolve_device("auto", "train.device", local_rank=3) == torch.device("cpu")
    for setting in ("cuda", "cuda:0"):
        with pytest.raises(SettingError, match=rf"^flow.device: .{setting}. asked for, but this torch sees no CUDA"):
            resolve_device(setting, "flow.device")


@pytest.mark.parametrize("setting", ["gpu", "cuda:x", "CPU", "", "cuda:", "mps"])
def test_other_names_are_errors_naming_the_key(two_gpus, setting):
    with pytest.raises(SettingError, match=r"^eval.device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got "):
        resolve_device(setting, "eval.device")
