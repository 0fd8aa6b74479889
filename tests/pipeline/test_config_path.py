"""Where the settings travel in the train stage, and that no call climbs back in the flow and train
stages, traced while they run on tiny SynthActions.

The whole `Config` and its sections reach only the stage (pipeline.stages), the dataset reader that
its [dataset] section names, the stream trainer (streams.train) and the net's builder ([model]); the
helpers beside the trainer (schedule, resume checks, loaders, metrics) receive plain values. And no
call climbs back: a lower layer (p3dbase < flow < streams < fusion < pipeline) never calls up into a
higher one, and no module calls back into one that is below it on the stack.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from pipeline import stages
from pipeline.config import load_config
from tests.builders import REPO, TINY

LAYERS = ("p3dbase", "flow", "streams", "fusion", "pipeline")
# Modules that define the settings: their own methods (validate, dump_toml) are the settings' code.
CONFIG_MODULES = {"pipeline.config", "pipeline.datasets.config", "streams.config", "flow.config", "fusion.config"}
SETTINGS_REACH = {"pipeline.stages", "pipeline.datasets", "pipeline.datasets.ucf101", "streams.train",
                  "streams.builder"}


def _is_settings(value) -> bool:
    return (dataclasses.is_dataclass(value) and not isinstance(value, type)
            and type(value).__module__ in CONFIG_MODULES)


class Trace:
    """A sys.setprofile hook over the project's modules: where a settings object arrives as an argument,
    and every call path as the sequence of project modules on the stack."""

    def __init__(self):
        self.reached: dict[str, set[str]] = {}
        self.climbs: set[tuple[str, ...]] = set()
        self.upward: set[tuple[str, str]] = set()  # (caller, callee) with the callee in a higher layer

    def __call__(self, frame, event, arg):
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith(LAYERS):
            return
        code = frame.f_code
        for name in code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]:
            if module not in CONFIG_MODULES and _is_settings(frame.f_locals.get(name)):
                self.reached.setdefault(module, set()).add(f"{code.co_name}({name})")
        path: list[str] = []  # the project modules on the stack, innermost first, repeats collapsed
        f = frame
        while f is not None:
            m = f.f_globals.get("__name__", "")
            if m.startswith(LAYERS) and (not path or path[-1] != m):
                path.append(m)
            f = f.f_back
        if module in path[1:]:  # this call re-enters a module that is further out on the stack
            self.climbs.add(tuple(reversed(path)))
        if len(path) > 1 and _layer(path[0]) > _layer(path[1]):
            self.upward.add((path[1], path[0]))


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def _traced(stage, *args) -> Trace:
    trace = Trace()
    sys.setprofile(trace)
    try:
        stage(*args)
    finally:
        sys.setprofile(None)
    return trace


@pytest.fixture(scope="module")
def stages_traced(tmp_path_factory) -> dict[str, Trace]:
    work: Path = tmp_path_factory.mktemp("work")
    cfg = load_config(REPO / "configs" / "synth.toml", [f"work_dir={work}", f"dataset.root={work / 'synth'}", *TINY])
    stages.synth_stage(cfg)
    flow = _traced(stages.flow_stage, cfg)
    assert (work / "flow" / "config.toml").is_file()  # written by the flow stage once the store took the settings
    train = _traced(stages.train_stage, cfg, "rgb")
    assert (work / "train" / "rgb" / "split1" / "last.pt").is_file()
    return {"flow": flow, "train": train}


@pytest.fixture
def traced(stages_traced) -> Trace:
    return stages_traced["train"]


def test_the_settings_reach_the_stage_the_reader_the_trainer_and_the_builder_only(traced):
    assert set(traced.reached) == SETTINGS_REACH, traced.reached


@pytest.mark.parametrize("stage", ["flow", "train"])
def test_no_call_climbs_back_to_a_module_it_has_left(stages_traced, stage):
    trace = stages_traced[stage]
    assert not trace.upward, sorted(trace.upward)
    assert not trace.climbs, sorted(trace.climbs)[:5]
