"""The one reading of a `device` setting (`flow.device`, `train.device`, `eval.device`, ...) as a torch device.

It lives on the project's ground (`p3dbase`), so that every package reads a device the same way. The
three readings it replaces differed; each difference is now decided once:

- "auto": this process's GPU when torch sees one, else the CPU. This process's GPU is `local_rank`
  (torchrun's LOCAL_RANK for a training process, 0 elsewhere), always with an explicit index.
- "cuda": the same GPU; an error when torch sees none (never a silent fall-back to the CPU).
- "cuda:N": GPU N, checked against the GPUs torch sees, so a wrong index fails here and not at the
  first tensor moved.
- "cpu": the CPU. Anything else is an error naming the key.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from p3dbase.errors import SettingError

if TYPE_CHECKING:
    import torch


def check_device_setting(setting: str) -> None:
    """For a config's validate(): ValueError unless `setting` is spelled as a device setting. Whether
    the GPU exists is checked where it is used (resolve_device), so a config stays loadable anywhere."""
    if setting not in ("auto", "cpu") and not setting.startswith("cuda"):
        raise ValueError(f"device: must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {setting!r}")


def resolve_device(setting: str, key: str, local_rank: int = 0) -> torch.device:
    """`setting` of config key `key` (named in errors, e.g. "flow.device") as a torch device."""
    import torch  # here, not at the top: every config imports check_device_setting, and a stage that
    # never touches a tensor (a re-run of `flow`, `verify`, listing a data set) should not pay torch's import
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if setting in ("auto", "cuda") or (setting.startswith("cuda:") and setting[5:].isdigit()):
        if not torch.cuda.is_available():
            raise SettingError(f"{key}: {setting!r} asked for, but this torch sees no CUDA GPU (use 'auto' or 'cpu')")
        index = int(setting[5:]) if setting.startswith("cuda:") else local_rank
        if index >= torch.cuda.device_count():
            raise SettingError(f"{key}: {setting!r} asked for GPU {index}, but only "
                            f"{torch.cuda.device_count()} GPU(s) are visible")
        return torch.device("cuda", index)
    raise SettingError(f"{key}: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {setting!r}")
