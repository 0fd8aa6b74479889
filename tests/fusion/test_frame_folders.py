"""`predict` and `features` on frame folders damaged the ways probe C found: a stray frame with a huge
number, a frame of another size, an empty frame file. Each is that video's one error line, naming the
image, the others scored; the same refusals as the rawframes import (flow.rawframes), not a resize,
a hang or a traceback."""
from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from flow.errors import FlowError
from flow.rawframes import check, scan
from fusion.config import EvalConfig
from fusion.inputs import FolderReader, gather_inputs
from fusion.predict import predict
from tests.builders import FAST_FLOW, RAWFRAME_SIZE, last_checkpoints, write_rawframes

H, W = RAWFRAME_SIZE


def _folders(tmp_path):
    good = write_rawframes(tmp_path / "good", frames=6, flows=0)
    bad = write_rawframes(tmp_path / "bad", frames=6, flows=0, seed=1)
    return good, bad


def test_a_stray_huge_frame_number_is_the_videos_error(tmp_path, tiny_checkpoints):
    good, bad = _folders(tmp_path)
    (bad / "img_99999999999999.jpg").write_bytes((bad / "img_00002.jpg").read_bytes())
    why = "(the numbering jumps from img_00006.jpg to img_99999999999999.jpg)"
    with pytest.raises(FlowError) as read:
        FolderReader(bad)  # was: a list over 10^14 numbers, all memory taken
    assert str(read.value) == f"{bad}: 99999999999992 frame(s) missing in 1..99999999999999, e.g. image 7 {why}"
    with pytest.raises(FlowError) as imported:
        check(scan(bad))
    assert why in str(imported.value)  # one check, one message, for predict and the rawframes import
    assert [v.video_id for v in gather_inputs([tmp_path])[0]] == ["bad", "good"]
    predictions = predict([bad, good], last_checkpoints(tiny_checkpoints), FAST_FLOW, EvalConfig(clips=1))
    assert why in predictions[0].error and not predictions[0].top
    assert predictions[1].top and not predictions[1].error


@pytest.mark.parametrize("damage, why", [
    (lambda p: cv2.imwrite(str(p), np.full((20, 30, 3), 128, np.uint8)),
     f"img_00003.jpg is 30x20 px, but the video's first frame is {W}x{H}: every image of a video must have one size"),
    (lambda p: p.write_bytes(b""), "img_00003.jpg: empty file (0 bytes), not an image"),
], ids=["another size", "empty"])
def test_a_broken_frame_is_the_videos_error(tmp_path, tiny_checkpoints, damage, why):
    good, bad = _folders(tmp_path)
    damage(bad / "img_00003.jpg")
    with pytest.raises(FlowError, match=re.escape(why)):  # was: resized to the first frame's size and scored
        list(FolderReader(bad).frames())
    predictions = predict([bad, good], last_checkpoints(tiny_checkpoints), FAST_FLOW, EvalConfig(clips=1))
    assert why in predictions[0].error and not predictions[0].top
    assert predictions[1].top and not predictions[1].error
