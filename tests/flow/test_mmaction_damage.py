"""An mmaction-layout store damaged on disk (probe C): an image of another size among a video's, a
JPEG with flipped bytes that still decodes, an image rewritten in place after eval cached the video's
outputs. Each is a FlowError naming the image, which eval turns into an excluded video and `verify`
into a listed one: never a broadcast traceback, a silently different score or a stale one."""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from flow.errors import FlowError
from flow.store import MMACTION_SIDE_FILE, open_store
from flow.verify import verify_store
from fusion.config import EvalConfig
from fusion.engine import open_stream
from fusion.outputs import collect
from tests.builders import COLOURS, make_toy_store, save_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

HEIGHT, WIDTH, FRAMES = 24, 32, 10
VIDEO = "Red/v_Red_00"
CFG = EvalConfig(clips=2, crops="center", batch_views=4, svm_clips=2, jobs=1)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    make_toy_store(root, COLOURS, 1, frames=FRAMES, height=HEIGHT, width=WIDTH, layout="mmaction")
    return root


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    root = tmp_path_factory.mktemp("mm_ckpt")
    return [open_stream(m, save_tiny_checkpoint(root / m / "last.pt", m, seed=k))
            for k, m in enumerate(("rgb", "flow"))]


def _rewrite(path: Path, image: np.ndarray, side: str) -> None:
    """Replace an image of the video; `side`: "keep" the side file as it was, "update" its CRC32 of the
    image (as if the flow stage had written it) or "remove" it (a folder from another tool)."""
    data = cv2.imencode(".jpg", image)[1].tobytes()
    path.write_bytes(data)
    side_file = path.parent / MMACTION_SIDE_FILE
    if side == "remove":
        side_file.unlink()
    elif side == "update":
        content = json.loads(side_file.read_text())
        content["crc32"][path.name] = zlib.crc32(data)
        side_file.write_text(json.dumps(content))


@pytest.mark.parametrize("side", ["update", "remove"])
@pytest.mark.parametrize("name", ["img_00003.jpg", "flow_x_00002.jpg"])
def test_an_image_of_another_size_is_named_by_every_reader_and_verify(store, name, side):
    shape = (20, 30, 3) if name.startswith("img") else (20, 30)
    _rewrite(store / VIDEO / name, np.full(shape, 128, np.uint8), side)
    why = f"{name} is 30x20 px, but the video's first frame is {WIDTH}x{HEIGHT}: every image of a video"
    with open_store(store).open(VIDEO) as video:
        if name.startswith("img"):
            reads = [lambda: video.rgb(range(FRAMES)), lambda: list(video.images("rgb", [2], np.empty(
                (HEIGHT, WIDTH, 3), np.uint8))), lambda: video.jpeg_blobs("rgb", [2])]
        else:
            reads = [lambda: video.flow(range(FRAMES - 1)), lambda: video.flow_planes([1]),
                     lambda: list(video.images("flow", [1], np.empty((2, HEIGHT, WIDTH), np.uint8))),
                     lambda: video.jpeg_blobs("flow", [1])]
        for read in reads:  # was: a broadcast ValueError naming no file (the GPU path: resized quietly)
            with pytest.raises(FlowError, match=why):
                read()
        video.rgb([0])  # the other images read as before
    damaged = verify_store(store, jobs=1).damaged  # was: passed when the folder has no side file
    assert [v for v, _ in damaged] == [VIDEO] and why in damaged[0][1]


def test_a_first_frame_of_another_size_is_named_on_the_second(store):
    _rewrite(store / VIDEO / "img_00001.jpg", np.full((20, 30, 3), 128, np.uint8), "remove")
    with pytest.raises(FlowError, match=f"img_00002.jpg is {WIDTH}x{HEIGHT} px, but the video's first frame is 30x20"):
        open_store(store).open(VIDEO).rgb([1])


def _flip_tail(path: Path) -> None:
    """Bytes flipped in the entropy-coded data, the size and mtime kept: libjpeg still decodes it
    (warning "Corrupt JPEG data" on stderr, naming no file), into a wrong image."""
    data = bytearray(path.read_bytes())
    stat = path.stat()
    for i in range(len(data) // 2, len(data) // 2 + 40, 4):
        if data[i] not in (0xFE, 0xFF) and data[i - 1] != 0xFF:  # no marker made or broken
            data[i] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("name", ["img_00005.jpg", "flow_y_00004.jpg"])
def test_a_decodable_jpeg_with_flipped_bytes_fails_its_crc32_on_read(store, name):
    path = store / VIDEO / name
    _flip_tail(path)
    assert cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED) is not None  # it does decode
    why = f"{name} is corrupt \\(CRC32 mismatch\\)"
    modality, index = ("rgb", 4) if name.startswith("img") else ("flow", 3)
    with open_store(store).open(VIDEO) as video:
        reads = [video.rgb] if modality == "rgb" else [video.flow, video.flow_planes]
        for read in [*reads, lambda i: video.jpeg_blobs(modality, i)]:
            with pytest.raises(FlowError, match=why):  # was: decoded into garbage and scored
                read([index])


def test_eval_excludes_a_damaged_video_with_the_image_named(store, streams, tmp_path):
    for i in range(FRAMES):  # every frame: which ones the views read is not this test's business
        _flip_tail(store / VIDEO / f"img_{i + 1:05d}.jpg")
    _rewrite(store / "Blue/v_Blue_00" / "flow_x_00002.jpg", np.full((20, 30), 128, np.uint8), "remove")
    got, failed = collect(open_store(store), streams, {v: (True, True) for v in open_store(store).video_ids()}, CFG,
                          torch.device("cpu"), tmp_path / "cache")
    assert sorted(got) == ["Green/v_Green_00"]  # was: Red scored from a garbage frame, Blue a traceback
    assert f"video {VIDEO}: " in failed[VIDEO] and ".jpg is corrupt (CRC32 mismatch)" in failed[VIDEO]
    assert "flow_x_00002.jpg is 30x20 px" in failed["Blue/v_Blue_00"]


def test_eval_cache_notices_an_image_rewritten_in_place(store, streams, tmp_path):
    """The cache is keyed by the video's folder: its own size and mtime do not change when an image in
    it is rewritten, its files' do."""
    needs = {v: (True, True) for v in open_store(store).video_ids()}
    got, failed = collect(open_store(store), streams, needs, CFG, torch.device("cpu"), tmp_path / "cache")
    assert not failed
    folder = store / VIDEO
    before = folder.stat()
    image = cv2.imread(str(folder / "img_00003.jpg"))
    _rewrite(folder / "img_00003.jpg", 255 - image, "update")  # a hand-repaired store: side file kept in step
    os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))
    again, failed = collect(open_store(store), streams, needs, CFG, torch.device("cpu"), tmp_path / "cache")
    assert not failed
    assert not np.array_equal(again[VIDEO]["rgb"].logits, got[VIDEO]["rgb"].logits)  # was: the cached ones
    np.testing.assert_array_equal(again["Green/v_Green_00"]["rgb"].logits, got["Green/v_Green_00"]["rgb"].logits)


def test_a_fifo_where_an_image_belongs_is_one_line_not_a_wait(store):
    """read_bytes() of a FIFO in a frame's place waited for a writer for ever (`verify` hung at 0%)."""
    import os
    import signal

    folder = store / COLOURS[0] / f"v_{COLOURS[0]}_00"
    (folder / "img_00002.jpg").unlink()
    os.mkfifo(folder / "img_00002.jpg")

    def expired(signum, frame):
        raise TimeoutError("still waiting after 30 s")
    signal.signal(signal.SIGALRM, expired)
    signal.alarm(30)
    try:
        with pytest.raises(FlowError, match=r"img_00002\.jpg: not a regular file \(a FIFO, socket or device\)"):
            with open_store(store).open(f"{COLOURS[0]}/v_{COLOURS[0]}_00") as video:
                video.rgb(range(FRAMES))
    finally:
        signal.alarm(0)
