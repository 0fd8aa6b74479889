"""eval when none of the test videos can be scored: one line naming a video and why, an error the CLI
prints as `error: ...` with exit status 2 (P3DError), and no report written."""
import shutil

import pytest

from flow.store import open_store
from fusion.config import EvalConfig
from fusion.errors import FusionError
from fusion.stage import EvalJob, run_eval
from p3dbase.errors import P3DError

from .conftest import CLASSES

CFG = EvalConfig(clips=2, crops="center", batch_views=5, svm=False, jobs=1)


def test_no_test_video_scored_is_one_line_naming_a_video_and_why(tiny_store, tiny_checkpoints, tmp_path):
    store, train, test = tiny_store
    root = tmp_path / "store"
    shutil.copytree(store, root)
    damaged = sorted(v for v, _ in test)
    for video_id in damaged:  # every test video's pack cut short, as a full disk or a bad copy leaves it
        path = open_store(root).path(video_id)
        path.write_bytes(path.read_bytes()[:100])
    out = tmp_path / "out"
    with pytest.raises(FusionError) as caught:
        run_eval(EvalJob(open_store(root), tiny_checkpoints, train, test, CLASSES, protocol="tiny split 1"), CFG, out)
    message = str(caught.value)
    assert isinstance(caught.value, P3DError)  # what the CLI turns into one `error:` line and exit status 2
    assert "\n" not in message
    assert message.startswith(f"none of the test videos could be evaluated ({len(test)} excluded, e.g. ")
    example = message.partition("e.g. ")[2]
    assert example.split(":")[0] in damaged and "not a complete pack file" in example
    assert "('" not in message  # the example reads as text, not as a Python tuple
    assert not (out / "results.csv").exists()
