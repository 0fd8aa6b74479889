"""local_processes: `jobs = 1000` on a small machine was a fork bomb ending in the OOM killer; now it
is one line naming the setting, before any process starts."""
import joblib
import pytest

from p3dbase.cluster import MAX_PROCESSES_PER_CORE, local_processes, local_threads
from p3dbase.errors import SettingError


def test_zero_is_one_process_per_usable_core_and_up_to_four_per_core_pass(monkeypatch):
    monkeypatch.setattr(joblib, "cpu_count", lambda: 2)
    assert local_processes(0, "flow.jobs") == 2
    assert local_processes(1, "flow.jobs") == 1
    assert local_processes(2 * MAX_PROCESSES_PER_CORE, "eval.jobs") == 8


def test_more_than_four_per_core_is_refused_naming_the_setting(monkeypatch):
    monkeypatch.setattr(joblib, "cpu_count", lambda: 2)
    with pytest.raises(SettingError) as err:
        local_processes(1000, "flow.jobs")
    assert str(err.value) == ("flow.jobs = 1000 would start 1000 worker processes on 2 usable CPU core(s), each a "
                              "few hundred MB: at most 8 here (4 per core), or 0 for one per core")


def test_the_stages_ask_before_starting_anything(tmp_path, monkeypatch):
    """verify refuses flow.jobs = 9 on 2 cores before it reads a video (the flow stage and the inference
    engine, for eval.jobs and transfer.jobs, ask the same function)."""
    from flow.verify import verify_store
    from tests.builders import make_toy_store

    monkeypatch.setattr(joblib, "cpu_count", lambda: 2)
    make_toy_store(tmp_path / "store", ["a", "b"], 1)
    with pytest.raises(SettingError, match=r"^flow\.jobs = 9 would start 9 worker processes"):
        verify_store(tmp_path / "store", jobs=9)


def test_torch_threads_are_bounded_by_the_usable_cores_where_training_starts(monkeypatch):
    """train.threads = 100000 was a MemoryError, then a segmentation fault. The bound is checked where
    training starts, not when the config loads: a config written on a larger machine still loads."""
    from pipeline.config import load_config

    monkeypatch.setattr(joblib, "cpu_count", lambda: 2)
    assert (local_threads(0, "train.threads"), local_threads(8, "train.threads")) == (0, 8)
    with pytest.raises(SettingError) as err:
        local_threads(9, "train.threads")
    assert str(err.value) == ("train.threads = 9 torch threads on 2 usable CPU core(s): at most 8 here (4 per core), "
                              "or 0 for one per core")
    assert load_config(None, ["train.threads=64"]).train.threads == 64
