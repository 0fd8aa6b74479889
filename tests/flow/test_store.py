import itertools
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flow.errors import FlowError
from flow.store import check_video_id, create_store, open_store, write_video

REPO = Path(__file__).resolve().parents[2]


def arrays(n=5, h=12, w=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, h, w, 3), np.uint8), rng.integers(0, 256, (n - 1, h, w, 2), np.uint8))


@pytest.mark.parametrize("codec", ["png", "raw"])
def test_packed_round_trip_is_lossless(tmp_path, codec):
    store = create_store(tmp_path, "packed", codec=codec)
    rgb, flow = arrays()
    store.write_video("Cls/v_1", rgb, flow)
    again = open_store(tmp_path)
    assert again.layout == "packed" and again.codec == codec and again.bound == 20.0
    with again.open("Cls/v_1") as v:
        assert (v.num_frames, v.num_flows, v.height, v.width) == (5, 4, 12, 16)
        assert np.array_equal(v.rgb(range(5)), rgb)
        assert np.array_equal(v.flow([3, 0, 3]), flow[[3, 0, 3]])
        assert v.rgb([]).shape == (0, 12, 16, 3)


def test_mmaction_layout_names_are_one_based_and_readable(tmp_path):
    store = create_store(tmp_path, "mmaction", jpeg_quality=100)
    rgb, flow = arrays(n=3, h=32, w=32)
    rgb[:] = 90  # flat images survive JPEG almost exactly
    flow[..., 0], flow[..., 1] = 128, 200
    store.write_video("Cls/v_1", rgb, flow)
    names = sorted(os.listdir(tmp_path / "Cls" / "v_1"))  # and the hidden side file of checksums
    assert names == [".p3d.json", "flow_x_00001.jpg", "flow_x_00002.jpg", "flow_y_00001.jpg", "flow_y_00002.jpg",
                     "img_00001.jpg", "img_00002.jpg", "img_00003.jpg"]
    with open_store(tmp_path).open("Cls/v_1") as v:
        assert (v.num_frames, v.num_flows) == (3, 2)
        assert np.abs(v.rgb([2]).astype(int) - 90).max() <= 1
        got = v.flow([1])[0].astype(int)
        assert np.abs(got[..., 0] - 128).max() <= 1 and np.abs(got[..., 1] - 200).max() <= 1


@pytest.mark.parametrize("layout", ["packed", "mmaction"])
def test_streaming_writer_equals_whole_video_and_is_deterministic(tmp_path, layout):
    rgb, flow = arrays(n=7)
    a = create_store(tmp_path / "a", layout)
    a.write_video("v", rgb, flow)
    b = create_store(tmp_path / "b", layout)
    with b.writer("v") as w:
        for k in range(0, 7, 3):
            w.add_rgb(rgb[k:k + 3])
            if k:
                w.add_flow(flow[k - 3:k])
        w.add_flow(flow[6:])
    pa, pb = a.path("v"), b.path("v")
    files = sorted(p.name for p in pa.iterdir()) if pa.is_dir() else [""]
    for name in files:
        assert (pa / name if name else pa).read_bytes() == (pb / name if name else pb).read_bytes()
    assert (tmp_path / "a" / "store.json").read_bytes() == (tmp_path / "b" / "store.json").read_bytes()


@pytest.mark.parametrize("layout", ["packed", "mmaction"])
def test_a_video_appears_only_when_complete(tmp_path, layout):
    store = create_store(tmp_path, layout)
    rgb, flow = arrays()
    store.write_video("A/done", rgb, flow)
    writer = store.writer("A/half")
    writer.add_rgb(rgb[:3])
    assert store.video_ids() == ["A/done"] and not store.has("A/half")
    with pytest.raises(RuntimeError):
        with store.writer("A/crash") as w:
            w.add_rgb(rgb)
            raise RuntimeError("killed")
    assert store.video_ids() == ["A/done"]
    assert not any(p.name.startswith(".crash") for p in (tmp_path / "A").iterdir())
    # the half-written one is what a killed run leaves: it is cleaned up, never listed
    assert store.clean_stale(["A/half", "A/done"]) >= 1
    assert sorted(p.name for p in (tmp_path / "A").iterdir()) == [store.path("A/done").name]
    with pytest.raises(FlowError, match="A/half"):
        store.open("A/half")


def test_wrong_counts_and_shapes_are_refused(tmp_path):
    store = create_store(tmp_path)
    rgb, flow = arrays()
    with pytest.raises(FlowError, match="5 frames need 4 flow images, got 3"):
        store.write_video("v", rgb, flow[:3])
    with pytest.raises(FlowError, match="uint8"):
        store.write_video("v", rgb.astype(np.float32), flow)
    with pytest.raises(FlowError, match="earlier images"):
        store.write_video("v", rgb, flow[:, :6])
    assert store.video_ids() == []


@pytest.mark.parametrize("bad", ["", "/abs", "a/../b", ".hidden", "a//b", "a/.tmp"])
def test_bad_video_ids(tmp_path, bad):
    store = create_store(tmp_path)
    with pytest.raises(FlowError, match="video id"):
        store.path(bad)


def test_indices_out_of_range_name_the_video(tmp_path):
    store = create_store(tmp_path)
    store.write_video("v", *arrays())
    with store.open("v") as v:
        with pytest.raises(FlowError, match="video v: flow index 4 out of range"):
            v.flow([4])
        with pytest.raises(FlowError, match="frame index -1"):
            v.rgb([-1])


def test_broken_pack_file_is_reported(tmp_path):
    store = create_store(tmp_path)
    store.write_video("v", *arrays())
    path = store.path("v")
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(FlowError, match="video v: .* not a complete pack file"):
        store.open("v")


def test_reader_pickles_for_dataloader_workers(tmp_path):
    store = create_store(tmp_path)
    rgb, flow = arrays()
    store.write_video("v", rgb, flow)
    clone = pickle.loads(pickle.dumps(store.open("v")))
    assert np.array_equal(clone.flow([1]), flow[[1]])


def test_open_store_errors(tmp_path):
    with pytest.raises(FlowError, match="no flow store"):
        open_store(tmp_path)
    (tmp_path / "store.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(FlowError, match="not a flow store"):
        open_store(tmp_path)
    (tmp_path / "store.json").write_text("{")
    with pytest.raises(FlowError, match="cannot read"):
        open_store(tmp_path)


def test_reopening_with_other_settings_is_refused_unless_overwrite(tmp_path):
    create_store(tmp_path, params={"scale_step": 0.5})
    create_store(tmp_path, params={"scale_step": 0.5})  # same settings: fine
    with pytest.raises(FlowError, match=r"\(scale_step: 0\.5 in the store, 0\.8 now\); use another"):
        create_store(tmp_path, params={"scale_step": 0.8})
    with pytest.raises(FlowError, match=r"\(bound: 20\.0 in the store, 10\.0 now\)"):
        create_store(tmp_path, bound=10, params={"scale_step": 0.5})
    with pytest.raises(FlowError, match=r"\(scale_step: 0\.5 in the store, none now; "
                                        r"warps: none in the store, 3 now\)"):
        create_store(tmp_path, params={"warps": 3})
    # The flow codec, one codec for both unless named: only the codec that changed is named.
    with pytest.raises(FlowError, match=r"\(codec: \"png\" in the store, \"raw\" now\);") as e:
        create_store(tmp_path, codec="raw", flow_codec="png", params={"scale_step": 0.5})
    assert e.value.differ == ["codec"]
    assert create_store(tmp_path, params={"scale_step": 0.8}, overwrite=True).params == {"scale_step": 0.8}


def test_write_video_helper_and_ids(tmp_path):
    create_store(tmp_path)
    rgb, flow = arrays()
    for vid in ["B/v2", "A/v1", "top"]:
        write_video(tmp_path, vid, rgb, flow)
    assert open_store(tmp_path).video_ids() == ["A/v1", "B/v2", "top"]


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("codec", ["png", "raw"])
def test_a_flipped_byte_is_named_by_video_and_image(tmp_path, codec):
    store = create_store(tmp_path, codec=codec)
    rgb, flow = arrays()
    store.write_video("A/v", rgb, flow)
    with store.open("A/v") as v:
        v.verify()  # intact
        frame2, flow1 = v._rgb_index[2], v._flow_index[1]
    _flip(store.path("A/v"), int(frame2[0] + frame2[1] // 2))
    with store.open("A/v") as v:  # the index is intact: it opens, other images read
        assert np.array_equal(v.rgb([0, 1, 3]), rgb[[0, 1, 3]])
        assert np.array_equal(v.flow(range(4)), flow)
        # What repairs it: a plain `flow` re-run does not see bit rot (size and mtime unchanged), so
        # "re-run the flow stage", as it said, failed the same way for ever; `verify` marks it first.
        with pytest.raises(FlowError, match=r"video A/v: frame 2 in .*v\.pack is corrupt \(CRC32 mismatch\): run "
                                            r"`python -m pipeline verify --config \.\.\.` \(it marks the damaged "
                                            r"videos\), then `make flow` \(it redoes them\)$"):
            v.rgb([1, 2])
        with pytest.raises(FlowError, match="video A/v: frame 2 .* corrupt"):
            v.verify()
    store.write_video("A/v", rgb, flow)
    _flip(store.path("A/v"), int(flow1[0] + 3))
    with store.open("A/v") as v:
        with pytest.raises(FlowError, match="video A/v: flow image 1 .* corrupt"):
            v.flow([1])
        with pytest.raises(FlowError, match="flow image 1"):
            v.verify()


def test_a_pack_without_checksums_still_opens(tmp_path):
    """Packs written before the CRC32 column existed: the same file minus the checksums and the
    `crc32_offset` meta key. They read as before; verify() has nothing to check."""
    store = create_store(tmp_path)
    rgb, flow = arrays()
    store.write_video("v", rgb, flow)
    path = store.path("v")
    data = path.read_bytes()
    meta_len = int.from_bytes(data[-16:-8], "little")
    meta = json.loads(data[-16 - meta_len:-16])
    old = dict(meta)
    del old["crc32_offset"]
    body = json.dumps(old, sort_keys=True).encode()
    path.write_bytes(data[:meta["crc32_offset"]] + body + len(body).to_bytes(8, "little") + data[-8:])
    with store.open("v") as v:
        assert not v.has_checksums
        assert np.array_equal(v.rgb(range(5)), rgb) and np.array_equal(v.flow(range(4)), flow)
        v.verify()


def test_video_lock_excludes_others_and_leaves_no_file(tmp_path):
    store = create_store(tmp_path)
    with store.lock("A/v") as held:
        assert held and store.lock_path("A/v").exists()
        with store.lock("A/v", wait=False) as other:  # another open file: flock excludes it
            assert other is False
    assert not store.lock_path("A/v").exists()
    with store.lock("A/v", wait=False) as held:
        assert held


def test_clean_stale_leaves_a_locked_video_alone(tmp_path):
    store = create_store(tmp_path)
    live = store.path("A/live").with_name(".live.pack.tmp-otherhost-1")
    dead = store.path("A/dead").with_name(".dead.pack.tmp-otherhost-2")
    live.parent.mkdir(parents=True)
    live.write_bytes(b"being written")
    dead.write_bytes(b"left by a killed run")
    with store.lock("A/live"):  # as a writer in another run holds it
        assert store.clean_stale(["A/live", "A/dead"]) == 1
        assert live.exists() and not dead.exists()
    assert store.clean_stale(["A/live"]) == 1 and not live.exists()


def test_mmaction_store_under_a_non_utf8_folder(tmp_path):
    """OpenCV's imread crashes the process on such a path; the reader goes through Python's bytes.
    In a subprocess, so that a crash fails this test instead of ending the test run."""
    script = f"""
import os, numpy as np
from flow.store import create_store
root = os.fsdecode({os.fsencode(tmp_path)!r} + b"/st\\xe9re")
rng = np.random.default_rng(0)
rgb, flow = rng.integers(0, 256, (3, 8, 8, 3), np.uint8), np.full((2, 8, 8, 2), 128, np.uint8)
store = create_store(root, "mmaction", jpeg_quality=100)
store.write_video("A/v", rgb, flow)
with store.open("A/v") as v:
    print(v.num_frames, v.rgb([0]).shape, int(v.flow([1]).max()))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "(1,", "8,", "8,", "3)", "128"]


@pytest.mark.parametrize("layout, codec", [("packed", "jpeg"), ("packed", "png"), ("packed", "raw"),
                                           ("mmaction", "jpeg")])
def test_flow_planes_are_the_flow_images_channel_first(tmp_path, layout, codec):
    """flow_planes (a training loader's read: x and y never interleaved) gives flow()'s images as
    [2, T, H, W], pixel for pixel, in every layout and codec, into a given array too."""
    store = create_store(tmp_path, layout, codec=codec)
    rgb, flow = arrays(n=6, h=24, w=32)
    store.write_video("Cls/v_1", rgb, flow)
    with open_store(tmp_path).open("Cls/v_1") as v:
        expected = v.flow([4, 0, 2]).transpose(3, 0, 1, 2)
        assert np.array_equal(v.flow_planes([4, 0, 2]), expected)
        out = np.zeros((2, 3, 24, 32), np.uint8)
        assert v.flow_planes([4, 0, 2], out) is out and np.array_equal(out, expected)
        with pytest.raises(FlowError, match="video Cls/v_1: decoding"):
            v.flow_planes([1], np.zeros((1, 2, 24, 32), np.uint8))
        with pytest.raises(FlowError, match="video Cls/v_1: flow index 5 out of range"):
            v.flow_planes([5])


@pytest.mark.parametrize("layout, codec", [("packed", "jpeg"), ("packed", "png"), ("mmaction", "jpeg")])
def test_images_one_at_a_time_are_the_window(tmp_path, layout, codec):
    """images() (a training loader's read: one image at a time into one array) yields each position
    once its image is there: rgb()'s frames and flow_planes()'s x and y, pixel for pixel."""
    store = create_store(tmp_path, layout, codec=codec)
    rgb, flow = arrays(n=6, h=24, w=32)
    store.write_video("Cls/v_1", rgb, flow)
    with open_store(tmp_path).open("Cls/v_1") as v:
        frame, planes = np.empty((24, 32, 3), np.uint8), np.empty((2, 24, 32), np.uint8)
        frames, flows = v.rgb([5, 1, 1]), v.flow_planes([4, 0])
        seen = []
        for k in v.images("rgb", [5, 1, 1], frame):
            assert np.array_equal(frame, frames[k])
            seen.append(k)
        assert seen == [0, 1, 2]
        for k in v.images("flow", [4, 0], planes):
            assert np.array_equal(planes, flows[:, k])
        with pytest.raises(FlowError, match="video Cls/v_1: decoding"):
            next(v.images("flow", [0], frame))
        with pytest.raises(FlowError, match="video Cls/v_1: frame index 6 out of range"):
            list(v.images("rgb", [0, 6], frame))


def test_flow_planes_name_a_corrupt_image(tmp_path):
    store = create_store(tmp_path, codec="jpeg")
    rgb, flow = arrays()
    store.write_video("A/v", rgb, flow)
    with store.open("A/v") as v:
        flow1 = v._flow_index[1]
    _flip(store.path("A/v"), int(flow1[0] + 3))
    with store.open("A/v") as v:
        assert np.array_equal(v.flow_planes([0, 2]), v.flow([0, 2]).transpose(3, 0, 1, 2))
        with pytest.raises(FlowError, match="video A/v: flow image 1 .* corrupt"):
            v.flow_planes([1])
        with pytest.raises(FlowError, match="video A/v: flow image 1 .* corrupt"):
            list(v.images("flow", [0, 1], np.empty((2, 12, 16), np.uint8)))


def test_video_ids_are_checked_as_their_parts_are():
    """Every string of up to 6 characters over the ones that matter: accepted exactly when each
    '/'-separated part is non-empty and not hidden (which also refuses '.' and '..') and there is no
    backslash, the definition the substring test replaces."""
    def by_parts(video_id: str) -> bool:
        return bool(video_id) and "\\" not in video_id and all(p and not p.startswith(".") for p in video_id.split("/"))

    for n in range(7):
        for chars in itertools.product("a./\\", repeat=n):
            video_id = "".join(chars)
            try:
                accepted = check_video_id(video_id) == video_id
            except FlowError:
                accepted = False
            assert accepted == by_parts(video_id), video_id
