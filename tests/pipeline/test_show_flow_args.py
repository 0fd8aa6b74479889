"""show-flow's picture arguments are checked before anything is read: a colour scale > 0, a .png name."""
from __future__ import annotations

import pytest

from pipeline.cli import main


@pytest.mark.parametrize("args, message", [
    (["--max-flow", "0"], "--max-flow must be a number of px per frame > 0"),
    (["--max-flow", "nan"], "--max-flow must be a number of px per frame > 0 (the magnitude shown at full "
                            "saturation), got nan"),
    (["--max-flow", "-3"], "got -3.0"),
    (["--out", "x.txt"], "--out x.txt: writes a PNG picture, so the name must end in .png"),
    (["--out", "no/such/x.png"], "--out no/such/x.png: the folder no/such does not exist"),
])
def test_show_flow_refuses_a_scale_or_a_name_it_would_ignore(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["show-flow", "a/b", *args, "--set", f"work_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())
