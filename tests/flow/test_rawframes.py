"""Existing rawframes into the store (`[flow] source = "rawframes"`): names detected, counts checked,
flow decoded at the given bound, bad folders failed with the reason, and the mmaction2 lists."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from flow import codec
from flow.config import FlowConfig
from flow.encoding import decode, encode, step
from flow.errors import FlowError
from flow.manifest import read_manifest
from flow.rawframes import check, scan, survey
from flow.stage import FlowJob, run_flow
from flow.store import open_store
from tests.builders import RAWFRAME_SIZE
from tests.builders import write_rawframes as write_tree

RAW = FlowConfig(source="rawframes", size="", jobs=1)
H, W = RAWFRAME_SIZE


def jpeg(path: Path, gray: bool = False) -> np.ndarray:
    """The known answer: the image as OpenCV decodes the file."""
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)


def import_one(tmp_path: Path, folder: Path, cfg: FlowConfig = RAW, bound: float | None = None):
    if bound is not None:
        cfg = FlowConfig(**{**cfg.__dict__, "bound": bound})
    summary = run_flow([FlowJob("v", folder)], tmp_path / "store", cfg)
    return summary, open_store(tmp_path / "store")


@pytest.mark.parametrize("start", [1, 0], ids=["1-based mmaction2", "0-based denseflow"])
def test_frames_and_flow_are_copied_exactly(tmp_path, start):
    folder = write_tree(tmp_path / "raw", frames=7, flows=6, start=start)
    summary, store = import_one(tmp_path, folder)
    assert (summary.computed, summary.failed) == (1, 0)
    with store.open("v") as video:
        assert (video.num_frames, video.num_flows, video.height, video.width) == (7, 6, H, W)
        for i in range(7):
            np.testing.assert_array_equal(video.rgb([i])[0], jpeg(folder / f"img_{start + i:05d}.jpg"))
        for i in range(6):
            stored = video.flow([i])[0]
            np.testing.assert_array_equal(stored[..., 0], jpeg(folder / f"flow_x_{start + i:05d}.jpg", True))
            np.testing.assert_array_equal(stored[..., 1], jpeg(folder / f"flow_y_{start + i:05d}.jpg", True))
    assert store.params == {"source": "rawframes", "size": "", "rawframes_bound": 20.0}


@pytest.mark.parametrize("layout, kind", [
    (dict(flow=("x_", "y_")), "img_* + x_*, 5 digits, 1-based"),
    (dict(digits=10, rgb="frame_", rgb_dir="rgb", flow_dir="flow"), "rgb/frame_* + flow/flow_x_*, 10 digits, 1-based"),
    (dict(start=0, rgb="frame_", flow=("u/frame_", "v/frame_"), flow_dir="flow"),
     "frame_* + flow/u/*, 5 digits, 0-based"),
])
def test_name_variants_are_detected(tmp_path, layout, kind):
    folder = write_tree(tmp_path / "raw", frames=5, flows=4, **layout)
    checked = check(scan(folder))
    assert checked.kind == kind
    assert [p.name for p in checked.frames][0].endswith(("00001.jpg", "00000.jpg"))
    assert len(checked.frames) == 5 and len(checked.flows) == 4 and not checked.dropped_last_flow
    x0, y0 = checked.flows[0]
    assert ("x" in x0.name or x0.parent.name == "u") and ("y" in y0.name or y0.parent.name == "v")


def test_n_flows_for_n_frames_drop_the_last(tmp_path):
    folder = write_tree(tmp_path / "raw", frames=6, flows=6)
    summary, store = import_one(tmp_path, folder)
    assert summary.computed == 1
    with store.open("v") as video:
        assert (video.num_frames, video.num_flows) == (6, 5)
        np.testing.assert_array_equal(video.flow([4])[0][..., 0], jpeg(folder / "flow_x_00005.jpg", True))
    assert "1 with N flows for N frames (last flow dropped)" in survey([folder])


@pytest.mark.parametrize("start", [1, 0])
def test_missing_frame_and_extra_flow_fail_with_the_reason(tmp_path, start, capsys):
    good = write_tree(tmp_path / "good", frames=5, flows=4, start=start)
    gap = write_tree(tmp_path / "gap", frames=6, flows=5, start=start)
    (gap / f"img_{start + 3:05d}.jpg").unlink()
    extra = write_tree(tmp_path / "extra", frames=5, flows=6, start=start)
    short = write_tree(tmp_path / "short", frames=6, flows=3, start=start)
    unpaired = write_tree(tmp_path / "unpaired", frames=5, flows=4, start=start)
    (unpaired / f"flow_y_{start + 2:05d}.jpg").unlink()
    jobs = [FlowJob(p.name, p) for p in (good, gap, extra, short, unpaired)]
    summary = run_flow(jobs, tmp_path / "store", RAW)
    out = capsys.readouterr().out
    assert out.startswith(f"rawframes: 5 video folders: 1 as img_* + flow_x_*, 5 digits, {start}-based; 4 failing")
    assert (summary.computed, summary.failed) == (1, 4)
    rows = read_manifest(tmp_path / "store" / "manifest.csv")
    assert rows["good"].status == "done" and (rows["good"].frames, rows["good"].flow_pairs) == (5, 4)
    assert "1 frame(s) missing" in rows["gap"].error and f"image {start + 3}" in rows["gap"].error
    assert "extra flow: 5 frames but 6 flow images" in rows["extra"].error
    assert "flow missing: 6 frames need 5 flow images, found 3" in rows["short"].error
    assert f"flow image {start + 2} has x" in rows["unpaired"].error and "but no y" in rows["unpaired"].error
    assert all(rows[v].status == "failed" for v in ("gap", "extra", "short", "unpaired"))
    assert open_store(tmp_path / "store").video_ids() == ["good"]
    again = run_flow(jobs, tmp_path / "store", RAW)  # resumes: the good one is done, the others fail again
    assert (again.computed, again.skipped, again.failed) == (0, 1, 4)


def test_a_stray_huge_number_fails_its_folder_in_one_line(tmp_path, capsys):
    """One `img_99999999999999.jpg` (or flow image) among a folder's: that folder fails naming the jump,
    the others import. Was: a list over the whole number range, all memory taken before any video."""
    good = write_tree(tmp_path / "good", frames=5, flows=4)
    frame = write_tree(tmp_path / "frame", frames=5, flows=4)
    (frame / "img_99999999999999.jpg").write_bytes((frame / "img_00002.jpg").read_bytes())
    flow = write_tree(tmp_path / "flow", frames=5, flows=4)
    for axis in "xy":
        (flow / f"flow_{axis}_99999999999999.jpg").write_bytes((flow / f"flow_{axis}_00001.jpg").read_bytes())
    summary = run_flow([FlowJob(p.name, p) for p in (good, frame, flow)], tmp_path / "store", RAW)
    assert "; 2 failing (listed in the manifest)" in capsys.readouterr().out
    assert (summary.computed, summary.failed) == (1, 2)
    rows = read_manifest(tmp_path / "store" / "manifest.csv")
    assert rows["frame"].error.endswith("99999999999993 frame(s) missing in 1..99999999999999, e.g. image 6 (the "
                                        "numbering jumps from img_00005.jpg to img_99999999999999.jpg)")
    assert "99999999999994 flow image(s) missing in 1..99999999999999, e.g. image 5 (the numbering jumps from " \
           "flow_x_00004.jpg to flow_x_99999999999999.jpg)" in rows["flow"].error


def test_other_numbering_and_no_folder_fail(tmp_path):
    late = write_tree(tmp_path / "late", frames=4, flows=3, start=2)
    with pytest.raises(FlowError, match="frame numbering starts at 2"):
        check(scan(late))
    mixed = write_tree(tmp_path / "mixed", frames=4, flows=0, start=0)
    write_tree(mixed, frames=0, flows=3, start=1)
    with pytest.raises(FlowError, match="frames are numbered from 0 but flow from 1"):
        check(scan(mixed))
    with pytest.raises(FlowError, match="not a folder of frames.*rawframes_root"):
        scan(tmp_path / "clip.avi")
    with pytest.raises(FlowError, match="no frame images"):
        scan(tmp_path)


@pytest.mark.parametrize("name", ["img_00002.jpg", "flow_y_00002.jpg"])
@pytest.mark.parametrize("kind", ["fifo", "folder", "dangling link"])
def test_an_image_name_that_is_no_file_is_named_with_what_it_is(tmp_path, kind, name):
    """A FIFO, folder or dangling link in an image's place: its video fails naming that entry and what
    it is. Was: read as a gap in the numbering ("the numbering jumps") or an x image without its y."""
    bad = write_tree(tmp_path / "bad", frames=4, flows=3)
    entry = bad / name
    entry.unlink()
    make = {"fifo": os.mkfifo, "folder": os.mkdir, "dangling link": lambda p: os.symlink(tmp_path / "gone.jpg", p)}
    make[kind](entry)
    error = import_beside_a_good_one(tmp_path, bad)
    what = {"fifo": "not a regular file (a FIFO", "folder": "a folder, not a JPEG or PNG file",
            "dangling link": "a symbolic link that leads to no JPEG or PNG file"}[kind]
    assert error.startswith(f"{entry}: {what}"), error
    assert "missing" not in error and "but no" not in error


def test_two_files_of_one_number_are_named_with_their_folders(tmp_path):
    """`img_00001.jpg` beside `rgb/img_00001.jpg`: the message tells them apart (it named the same
    name twice)."""
    tree = write_tree(tmp_path / "both", frames=3, flows=2)
    (tree / "rgb").mkdir()
    (tree / "rgb" / "img_00001.jpg").write_bytes((tree / "img_00001.jpg").read_bytes())
    with pytest.raises(FlowError, match=r"both: img_00001\.jpg and rgb/img_00001\.jpg are both image 1$"):
        scan(tree)


def uniform_tree(folder: Path, u8: tuple[int, int], frames: int = 3) -> Path:
    """Frames of noise and flow JPEGs of one uniform value per axis (a constant image decodes exactly)."""
    write_tree(folder, frames=frames, flows=0)
    for i in range(1, frames):
        for axis, value in zip("xy", u8, strict=True):
            cv2.imwrite(str(folder / f"flow_{axis}_{i:05d}.jpg"), np.full((H, W), value, np.uint8))
    return folder


def test_flow_is_decoded_at_the_given_bound_and_re_encoded(tmp_path):
    # +4 px right, -3 px up, encoded at bound 10 by the other tool; the store keeps bound 20.
    values = tuple(int(v) for v in encode(np.array([4.0, -3.0]), 10.0))
    folder = uniform_tree(tmp_path / "raw", values)
    assert jpeg(folder / "flow_x_00001.jpg", True).min() == values[0]  # the file holds exactly that
    cfg = FlowConfig(source="rawframes", size="", jobs=1, rawframes_bound=10.0)
    _, store = import_one(tmp_path, folder, cfg, bound=20.0)
    with store.open("v") as video:
        flow = decode(video.flow([0, 1]), 20.0)
    # within half a level at bound 10 (the file) plus half a level at bound 20 (the store)
    tolerance = step(10.0) / 2 + step(20.0) / 2
    np.testing.assert_allclose(flow[..., 0], 4.0, atol=tolerance)
    np.testing.assert_allclose(flow[..., 1], -3.0, atol=tolerance)
    assert store.bound == 20.0 and store.params["rawframes_bound"] == 10.0


def test_resizing_scales_the_flow_vectors(tmp_path):
    values = tuple(int(v) for v in encode(np.array([6.0, -4.0]), 20.0))
    folder = uniform_tree(tmp_path / "raw", values)
    cfg = FlowConfig(source="rawframes", size="16x12", jobs=1, codec="png", flow_codec="png")  # half of 32x24; lossless
    _, store = import_one(tmp_path, folder, cfg)
    with store.open("v") as video:
        assert (video.width, video.height) == (16, 12)
        flow = decode(video.flow([0]), 20.0)
        np.testing.assert_array_equal(video.rgb([0])[0], cv2.resize(jpeg(folder / "img_00001.jpg"), (16, 12),
                                                                    interpolation=cv2.INTER_AREA))
    decoded = decode(np.array(values, np.uint8), 20.0)  # what the file holds, in px
    tolerance = step(20.0) / 2
    np.testing.assert_allclose(flow[..., 0], decoded[0] / 2, atol=tolerance)
    np.testing.assert_allclose(flow[..., 1], decoded[1] / 2, atol=tolerance)


def import_beside_a_good_one(tmp_path: Path, bad: Path, cfg: FlowConfig = RAW) -> str:
    """The error the manifest records for `bad`, imported with a good folder (which must import)."""
    good = write_tree(tmp_path / "good", frames=4, flows=3, seed=1)
    summary = run_flow([FlowJob("good", good), FlowJob("bad", bad)], tmp_path / "store", cfg)
    assert (summary.computed, summary.failed) == (1, 1)
    rows = read_manifest(tmp_path / "store" / "manifest.csv")
    assert rows["bad"].status == "failed" and open_store(tmp_path / "store").video_ids() == ["good"]
    return rows["bad"].error


def cut_scan(data: bytes) -> bytes:
    """The JPEG `data` with the second half of its entropy-coded data cut out, its end marker kept:
    libjpeg decodes it with a warning ("premature end of data segment") into a half-grey image."""
    sos = data.index(b"\xff\xda")
    scan_start = sos + 2 + int.from_bytes(data[sos + 2: sos + 4], "big")
    return data[: scan_start + (len(data) - scan_start) // 2] + b"\xff\xd9"


def reencoded(path: Path, quality: int, gray: bool = False) -> bytes:
    return cv2.imencode(".jpg", jpeg(path, gray), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


@pytest.mark.parametrize("change", [
    dict(),  # kept byte for byte (the path that always refused it)
    dict(quality=50),  # below rawframes_min_quality: re-encoded
    dict(size="16x12"),  # resized
    dict(codec="png", flow_codec="png"),  # stored as decoded pixels
], ids=["kept", "low quality", "resized", "png"])
@pytest.mark.parametrize("name", ["img_00002.jpg", "flow_x_00002.jpg"])
def test_a_corrupt_jpeg_fails_its_video_by_name_on_every_path(tmp_path, change, name):
    """A JPEG libjpeg decodes only with its "Corrupt JPEG data" warning fails its video naming the file,
    whichever way it is stored. Without it, only the files kept byte for byte were decoded strictly:
    one re-encoded (lower quality, resized, png codec) went through cv2.imdecode, which stored the
    garbled image and printed libjpeg's warning, naming no file, on stderr."""
    pytest.importorskip("simplejpeg")  # the strict decoder (cv2.imdecode, without it, reports no warning)
    bad = write_tree(tmp_path / "bad", frames=4, flows=3)
    quality = change.pop("quality", 95)
    corrupt = cut_scan(reencoded(bad / name, quality, gray=name.startswith("flow")))
    assert cv2.imdecode(np.frombuffer(corrupt, np.uint8), cv2.IMREAD_UNCHANGED) is not None  # what cv2 accepts
    (bad / name).write_bytes(corrupt)
    cfg = FlowConfig(**{**RAW.__dict__, **change})
    assert import_beside_a_good_one(tmp_path, bad, cfg) == \
        f"{bad / name}: a JPEG that does not decode (Corrupt JPEG data: premature end of data segment)"


def test_padding_before_the_end_marker_is_decoded_and_not_kept_byte_for_byte(tmp_path):
    """libjpeg's "N extraneous bytes before marker 0xd9" (an encoder's padding after the last scan) loses
    no pixel, but the strict rule failed the whole video; kept as it is, the store's strict reader
    would refuse it later, so it is re-encoded, and its neighbours stay byte for byte."""
    pytest.importorskip("simplejpeg")
    folder = write_tree(tmp_path / "raw", frames=4, flows=3)
    data = (folder / "img_00002.jpg").read_bytes()
    (folder / "img_00002.jpg").write_bytes(data[:-2] + b"\0" * 8 + data[-2:])
    summary, store = import_one(tmp_path, folder)
    assert (summary.computed, summary.failed) == (1, 0)
    with store.open("v") as video:
        kept = [bytes(b) for b in video.jpeg_blobs("rgb", range(4))]
        stored = video.rgb([1])[0].astype(int)
    # its pixels, through one more q95 encoding: within JPEG's loss of the padded file's decode
    assert np.abs(stored - jpeg(folder / "img_00002.jpg").astype(int)).mean() < 2.0
    assert kept[0] == (folder / "img_00001.jpg").read_bytes() and kept[2] == (folder / "img_00003.jpg").read_bytes()
    assert kept[1] != (folder / "img_00002.jpg").read_bytes()  # decoded and encoded again, without the padding
    assert codec.strict_jpeg(kept[1], grey=False)[1] == ""  # the store's strict reader takes it


def with_orientation(data: bytes, orientation: int) -> bytes:
    """The JPEG `data` with an EXIF segment (big-endian TIFF, one IFD entry) holding `orientation`
    (3: turned by 180 degrees), as a camera or Pillow writes it, right after the start marker."""
    tiff = b"MM\0\x2a" + struct.pack(">IHHHIHHI", 8, 1, 0x0112, 3, 1, orientation, 0, 0)
    return data[:2] + b"\xff\xe1" + struct.pack(">H", 8 + len(tiff)) + b"Exif\0\0" + tiff + data[2:]


@pytest.mark.parametrize("layout", [dict(codec="png"), dict(), dict(store="mmaction")],
                         ids=["packed png", "packed jpeg", "mmaction"])
@pytest.mark.parametrize("simplejpeg", [True, False], ids=["simplejpeg", "cv2 only"])
def test_an_exif_orientation_is_ignored_on_every_path(tmp_path, monkeypatch, layout, simplejpeg):
    """Frames tagged "turned by 180 degrees" are stored as their pixels lie in the file, like untagged
    ones, whether kept or re-encoded, and every reader of the store reads them so, with simplejpeg or
    without it (cv2 then imports and reads). Without it, re-encoded ones (below rawframes_min_quality,
    png codec) were turned by cv2.imdecode's default and kept ones were not (simplejpeg) or were on
    reading (cv2: the mmaction layout's reader): one video held frames of two orientations."""
    if not simplejpeg:
        monkeypatch.setattr(codec, "_import_simplejpeg", lambda: None)
    folder = write_tree(tmp_path / "raw", frames=4, flows=3)
    upright = [jpeg(folder / f"img_{i:05d}.jpg") for i in (1, 2, 3, 4)]  # untagged: the pixels as they lie
    for i, quality in ((1, 95), (2, 95), (3, 50)):  # 1, 2: keepable but for the tag; 3: re-encoded anyway
        path = folder / f"img_{i:05d}.jpg"
        path.write_bytes(with_orientation(reencoded(path, quality), 3))
        upright[i - 1] = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        assert np.array_equal(jpeg(path), upright[i - 1][::-1, ::-1])  # cv2's default turns it
    _, store = import_one(tmp_path, folder, FlowConfig(**{**RAW.__dict__, **layout}))
    jpeg_files = layout.get("codec") != "png"
    with store.open("v") as video:
        stored = video.rgb(range(4)).astype(int)
        if jpeg_files:  # kept only when untagged: no reader can turn them
            blobs = [b.tobytes() for b in video.jpeg_blobs("rgb", range(4))]
            assert blobs[3] == (folder / "img_00004.jpg").read_bytes()
            assert all(blob != (folder / f"img_{i + 1:05d}.jpg").read_bytes() for i, blob in enumerate(blobs[:3]))
    if jpeg_files:  # a q95 re-encode moves these frames by ~1.3 levels on average, a turn by ~18
        assert [np.abs(stored[i] - upright[i]).mean() < 3 for i in range(4)] == [True] * 4
        assert np.array_equal(stored[3], upright[3])
    else:  # lossless: exactly the pixels of the file
        assert [np.abs(stored[i] - upright[i]).max() for i in range(4)] == [0] * 4


@pytest.mark.parametrize("size, names", [
    ("", ["flow_x_00002.jpg", "flow_y_00002.jpg"]),  # was resized, its vectors scaled
    ("16x12", ["flow_x_00002.jpg", "flow_y_00002.jpg"]),  # the store's size, not the frames': was kept
    ("16x12", ["img_00002.jpg"]),  # likewise, a frame
])
def test_an_image_of_another_size_than_the_frames_fails_its_video(tmp_path, size, names):
    """A flow pair (or a frame) of another size than the first frame fails its video naming the file
    and both sizes, as a frame of another size already did. Without it a flow pair of another size was
    resized quietly (its flow scaled by a guess), and one of the store's size (flow.size) was kept."""
    bad = write_tree(tmp_path / "bad", frames=4, flows=3)
    for name in names:
        path = bad / name
        path.write_bytes(cv2.imencode(".jpg", cv2.resize(jpeg(path, name.startswith("flow")), (16, 12)))[1].tobytes())
    cfg = FlowConfig(**{**RAW.__dict__, "size": size})
    assert import_beside_a_good_one(tmp_path, bad, cfg) == (f"{bad / names[0]} is 16x12 px, but the video's first "
                                                            "frame is 32x24: every image of a video must have one size")


@pytest.mark.parametrize("odd", [
    "img_00003.jpg\n",  # `$` matches before a final newline
    "img_\u0660\u0660\u0660\u0660\u0663.jpg",  # Arabic-Indic digits: `\d` takes any Unicode digit
    "\u0131mg_00003.jpg",  # dotless i: IGNORECASE folds it to "i"
])
def test_only_exact_ascii_names_are_frames(tmp_path, odd):
    """A name is a frame's only as a whole and in ASCII: these look like frame 3 and are none, so the
    folder has a gap. Without it each was taken for img_00003.jpg."""
    folder = write_tree(tmp_path / "raw", frames=5, flows=4)
    (folder / "img_00003.jpg").rename(folder / odd)
    with pytest.raises(FlowError) as error:
        check(scan(folder))
    assert str(error.value) == (f"{folder}: 1 frame(s) missing in 1..5, e.g. image 3 (the numbering jumps from "
                                "img_00002.jpg to img_00004.jpg)")
    (folder / odd).rename(folder / "img_00003.jpg")
    (folder / "flow_x_00003.jpg").rename(folder / "flow_x_00003.jpg\n")  # flow names alike
    with pytest.raises(FlowError) as error:
        check(scan(folder))
    assert str(error.value) == f"{folder}: flow image 3 has y (flow_y_00003.jpg) but no x"


def test_shared_rawframes(shared_data, tmp_path, capsys):
    """The two real trees: adl_P11 (rgb/ + flow/, 10 digits, 16 frames and 16 flows: the last flow is
    dropped) imports; mmaction2's test images (10 frames, 5 x_/y_ pairs) fail with the counts."""
    root = shared_data / "rawframes"
    if not (root / "adl_P11").is_dir() or not (root / "mmaction2_imgs").is_dir():
        pytest.skip("rawframes not in ../shared/data")
    jobs = [FlowJob("adl/P11", root / "adl_P11"), FlowJob("mmaction2/imgs", root / "mmaction2_imgs")]
    summary = run_flow(jobs, tmp_path / "store", RAW)
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("rawframes: 2 video folders: 1 as rgb/frame_* + flow/flow_x_*, 10 digits, 1-based; "
                           "1 with N flows for N frames (last flow dropped); 1 failing")
    assert (summary.computed, summary.failed) == (1, 1)
    rows = read_manifest(tmp_path / "store" / "manifest.csv")
    assert "flow missing: 10 frames need 9 flow images, found 5" in rows["mmaction2/imgs"].error
    with open_store(tmp_path / "store").open("adl/P11") as video:
        assert (video.num_frames, video.num_flows, video.width, video.height) == (16, 15, 342, 256)
        np.testing.assert_array_equal(video.rgb([15])[0], jpeg(root / "adl_P11/rgb/frame_0000000016.jpg"))
        np.testing.assert_array_equal(video.flow([14])[0][..., 1],
                                      jpeg(root / "adl_P11/flow/flow_y_0000000015.jpg", True))
    found = scan(root / "mmaction2_imgs")  # the x_/y_ names are found, the count is what fails
    assert (len(found.frames), len(found.flow_x), len(found.flow_y)) == (10, 5, 5)
    assert found.kind == "img_* + x_*, 5 digits, 1-based"


def test_pipeline_imports_a_rawframe_list_and_writes_mmaction_lists(tmp_path, capsys):
    """`python -m pipeline flow` on an mmaction2 rawframe dataset with store = "mmaction": the store
    feeds mmaction2 (its lists), and the project's own mmaction reader reads the lists back."""
    from pipeline.cli import main
    from pipeline.config import load_config
    from pipeline.datasets import read_dataset

    data = tmp_path / "rawframes"
    for k, name in enumerate(["Run/v_a", "Run/v_b", "Jump/v_c", "Jump/v_d"]):
        write_tree(data / name, frames=4 + k, flows=3 + k, start=k % 2, seed=k)
    (data / "Jump/v_d" / "img_00002.jpg").unlink()  # a gap: failed, left out of the lists
    (tmp_path / "train.txt").write_text("Run/v_a 4 0\nJump/v_c 6 1\n")
    (tmp_path / "test.txt").write_text("Run/v_b 5 0\nJump/v_d 7 1\n")
    (tmp_path / "labels.txt").write_text("Run\nJump\n")
    config = tmp_path / "raw.toml"
    config.write_text(f'work_dir = "{tmp_path / "work"}"\n'
                      f'[dataset]\nformat = "mmaction"\nroot = "{data}"\nlist_type = "rawframes"\n'
                      f'train_list = "{tmp_path / "train.txt"}"\ntest_list = "{tmp_path / "test.txt"}"\n'
                      f'label_map = "{tmp_path / "labels.txt"}"\n'
                      '[flow]\nsource = "rawframes"\nstore = "mmaction"\nsize = ""\njobs = 1\n')
    assert main(["flow", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "rawframes: 4 video folders: 2 as img_* + flow_x_*, 5 digits, 0-based; 1 as img_* + flow_x_*, 5 digits, " \
           "1-based; 1 failing" in out
    store_root = tmp_path / "work" / "flow"
    assert open_store(store_root).video_ids() == ["Jump/v_c", "Run/v_a", "Run/v_b"]
    lists = {p.name: p.read_text() for p in store_root.glob("*.txt")}
    assert lists == {"mmaction_train_split_1_rawframes.txt": "Run/v_a 4 0\nJump/v_c 6 1\n",  # the dataset's order
                     "mmaction_train_split_1_rawframes_flow.txt": "Run/v_a 3 0\nJump/v_c 5 1\n",
                     "mmaction_test_split_1_rawframes.txt": "Run/v_b 5 0\n",
                     "mmaction_test_split_1_rawframes_flow.txt": "Run/v_b 4 0\n",
                     "mmaction_label_map.txt": "Run\nJump\n"}  # the class names in label order
    # read back by the project's mmaction reader, with the store as the data root
    cfg = load_config(config, [f"dataset.root={store_root}",
                               f"dataset.label_map={store_root / 'mmaction_label_map.txt'}",
                               f"dataset.train_list={store_root / 'mmaction_train_split_1_rawframes.txt'}",
                               f"dataset.test_list={store_root / 'mmaction_test_split_1_rawframes.txt'}"])
    dataset = read_dataset(cfg.dataset)
    assert sorted((v.video_id, v.label, v.split, v.class_name) for v in dataset.videos) == [
        ("Jump/v_c", 1, "train", "Jump"), ("Run/v_a", 0, "train", "Run"), ("Run/v_b", 0, "test", "Run")]
    with open_store(store_root).open("Jump/v_c") as video:  # mmaction2's names: img_00001.jpg, 1-based
        assert (video.num_frames, video.num_flows) == (6, 5)
        assert (store_root / "Jump/v_c/img_00006.jpg").is_file()
        assert (store_root / "Jump/v_c/flow_y_00005.jpg").is_file()


def test_the_quality_a_rawframes_jpeg_is_kept_at_is_a_store_setting(tmp_path):
    """rawframes_min_quality decides which JPEGs are stored byte for byte and which re-encoded, but the
    store did not record it: a run at another value took the store for its own. Recorded when not the
    default 75 (the stores made before keep their record)."""
    from flow.stage import store_params

    assert "rawframes_min_quality" not in store_params(RAW)
    strict = FlowConfig(**{**RAW.__dict__, "rawframes_min_quality": 101})
    assert store_params(strict)["rawframes_min_quality"] == 101
    folder = write_tree(tmp_path / "v", frames=3, flows=2)
    run_flow([FlowJob("v", folder)], tmp_path / "store", RAW)
    with pytest.raises(FlowError, match=r"\(rawframes_min_quality: none in the store, 101 now\)"):
        run_flow([FlowJob("v", folder)], tmp_path / "store", strict)
