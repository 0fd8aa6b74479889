"""`python -m pipeline verify`: exit status 1 and the damaged video named when a stored image changed,
0 once the flow stage redid it; without a store, one line saying to run the flow stage."""
from __future__ import annotations

import cv2

from flow.config import FlowConfig
from flow.stage import FlowJob, run_flow
from pipeline.cli import main
from tests.builders import moving_square, write_video


def test_verify_reports_a_damaged_video_which_the_next_flow_run_redoes(tmp_path, capsys):
    video = write_video(tmp_path / "videos" / "a.avi", moving_square(5))
    cfg = FlowConfig(size="", jobs=1, nscales=2, warps=1, inner_iterations=5, outer_iterations=2,
                     store="mmaction")
    run_flow([FlowJob("Cls/a", video)], tmp_path / "work" / "flow", cfg)
    image = tmp_path / "work" / "flow" / "Cls" / "a" / "flow_x_00002.jpg"
    cv2.imwrite(str(image), cv2.imread(str(image), cv2.IMREAD_GRAYSCALE) // 2)
    args = ["verify", "--set", f"work_dir={str(tmp_path / 'work')!r}", "--set", "flow.jobs=1"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "verify: 1 videos read, 1 damaged" in out and "damaged Cls/a:" in out and "flow_x_00002.jpg" in out
    assert run_flow([FlowJob("Cls/a", video)], tmp_path / "work" / "flow", cfg).computed == 1
    assert main(args) == 0


def test_verify_without_a_store_says_to_run_the_flow_stage(tmp_path, capsys):
    assert main(["verify", "--set", f"work_dir={str(tmp_path)!r}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no flow store at" in err and "run `make flow`" in err and "before `verify`" in err
