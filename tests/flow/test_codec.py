"""The packed store's codecs: JPEG as mmaction2 writes it, both decoders alike, quality read from the
file, undecodable blobs named, mixed and older stores readable, rawframes JPEGs kept byte for byte."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from flow import codec
from flow.config import FlowConfig
from flow.errors import FlowError
from flow.rawframes import import_video
from flow.store import create_store, open_store

H, W = 24, 32


def smooth(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return cv2.GaussianBlur(rng.integers(0, 256, shape, np.uint8), (5, 5), 1.5)


def video(seed: int = 0, frames: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    flow = np.stack([np.stack([smooth(rng, (H, W)) for _ in "xy"], -1) for _ in range(frames - 1)])
    return np.stack([smooth(rng, (H, W, 3)) for _ in range(frames)]), flow


@pytest.fixture(params=["auto", "cv2"])
def decoder(request, monkeypatch):
    """Every read test runs with simplejpeg (where installed) and with the cv2 fallback."""
    monkeypatch.setattr(codec, "decoder", request.param)
    return request.param


def test_jpeg_store_holds_the_files_mmaction_writes(tmp_path, decoder):
    """A packed jpeg blob is byte for byte the mmaction layout's file (cv2.imwrite at q95), a flow
    blob is <x length> x y; both decoders read back exactly what OpenCV decodes from those files."""
    rgb, flow = video()
    packed = create_store(tmp_path / "packed", codec="jpeg")
    mm = create_store(tmp_path / "mm", "mmaction")
    packed.write_video("C/v", rgb, flow)
    mm.write_video("C/v", rgb, flow)
    folder = tmp_path / "mm" / "C" / "v"
    with packed.open("C/v") as v:
        assert (v.codec, v.flow_codec) == ("jpeg", "jpeg")
        for i in range(len(rgb)):
            jpeg = (folder / f"img_{i + 1:05d}.jpg").read_bytes()
            assert v._blobs(v._rgb_index[[i]])[0].tobytes() == jpeg
        for i in range(len(flow)):
            x, y = ((folder / f"flow_{c}_{i + 1:05d}.jpg").read_bytes() for c in "xy")
            assert v._blobs(v._flow_index[[i]])[0].tobytes() == len(x).to_bytes(4, "little") + x + y
        expected_rgb = np.stack([cv2.imread(str(folder / f"img_{i + 1:05d}.jpg")) for i in range(len(rgb))])
        expected_flow = np.stack([np.stack([cv2.imread(str(folder / f"flow_{c}_{i + 1:05d}.jpg"), 0) for c in "xy"],
                                           -1) for i in range(len(flow))])
        assert np.array_equal(v.rgb(range(len(rgb))), expected_rgb)
        assert np.array_equal(v.flow(range(len(flow))), expected_flow)
        # lossy, but close: q95 moves grey values by about a level; 4:2:0 halves the colour
        # resolution, a few levels on these colour-noise frames
        assert np.abs(expected_rgb.astype(int) - rgb).mean() < 6
        assert np.abs(expected_flow.astype(int) - flow).mean() < 1.5
        out = np.zeros((2, H, W, 3), np.uint8)
        assert v.rgb([2, 1], out=out) is out and np.array_equal(out, expected_rgb[[2, 1]])
        with pytest.raises(FlowError, match="C/v: decoding"):
            v.rgb([0], out=np.zeros((2, H, W, 3), np.uint8))


def test_jpeg_rgb_with_lossless_flow(tmp_path):
    rgb, flow = video(1)
    store = create_store(tmp_path, codec="jpeg", flow_codec="png")
    store.write_video("v", rgb, flow)
    again = open_store(tmp_path)
    assert (again.codec, again.flow_codec, again.info["flow_codec"], again.jpeg_quality) == ("jpeg", "png", "png", 95)
    with again.open("v") as v:
        assert np.array_equal(v.flow(range(3)), flow) and not np.array_equal(v.rgb(range(4)), rgb)


def test_older_and_mixed_stores_stay_readable(tmp_path):
    """A png store written before flow_codec existed keeps its store.json unchanged; a store whose
    description changed codec half way holds packs of both codecs, and each reads by its own."""
    rgb, flow = video(2)
    store = create_store(tmp_path, codec="png")
    assert "flow_codec" not in store.info and "jpeg_quality" not in store.info and store.flow_codec == "png"
    store.write_video("old", rgb, flow)
    create_store(tmp_path, codec="jpeg", overwrite=True).write_video("new", rgb, flow)
    store = open_store(tmp_path)
    with store.open("old") as old, store.open("new") as new:
        assert (old.codec, new.codec) == ("png", "jpeg")
        assert np.array_equal(old.rgb(range(4)), rgb) and np.array_equal(old.flow(range(3)), flow)
        assert 0 < np.abs(new.rgb(range(4)).astype(int) - rgb).mean() < 6


def test_a_jpeg_that_does_not_decode_names_the_video_and_image(tmp_path, decoder):
    """The checksum matches (the bytes were stored so), but the JPEG is cut short: one line naming both."""
    rgb, flow = video(3)
    store = create_store(tmp_path, codec="jpeg")
    good = codec.jpeg_bytes(rgb[0], 95)
    with store.writer("C/bad") as w:
        w.add_rgb_jpegs([good, good[: len(good) // 3]], (H, W))
        w.add_flow(flow[:1])
    with store.open("C/bad") as v:
        assert np.array_equal(v.rgb([0])[0], cv2.imdecode(np.frombuffer(good, np.uint8), cv2.IMREAD_COLOR))
        with pytest.raises(FlowError, match=r"video C/bad: frame 1 in .*C/bad\.pack does not decode as jpeg"):
            v.rgb([0, 1])


@pytest.mark.parametrize("quality", [30, 50, 75, 88, 95, 100])
def test_jpeg_quality_is_read_from_the_file(quality):
    img = smooth(np.random.default_rng(quality), (40, 56, 3))
    assert codec.jpeg_header(codec.jpeg_bytes(img, quality)) == (40, 56, 3, quality)
    assert codec.jpeg_header(codec.jpeg_bytes(np.ascontiguousarray(img[..., 0]), quality)) == (40, 56, 1, quality)


def test_what_is_not_a_baseline_jpeg_is_refused():
    with pytest.raises(codec.CodecError, match="not a JPEG"):
        codec.jpeg_header(cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes())
    with pytest.raises(codec.CodecError, match="no frame header"):
        codec.jpeg_header(b"\xff\xd8\xff\xd9")


def test_codec_settings_are_checked(tmp_path):
    for field in ("codec", "flow_codec"):
        with pytest.raises(ValueError, match=f"{field}: must be 'jpeg', 'png' or 'raw', got 'gif'"):
            FlowConfig(**{field: "gif"}).validate()
    with pytest.raises(FlowError, match="'webp' \\(flow\\)"):
        create_store(tmp_path, codec="jpeg", flow_codec="webp")


def write_tree(folder: Path, quality: int, frames: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(frames):
        (folder / f"img_{i + 1:05d}.jpg").write_bytes(codec.jpeg_bytes(smooth(rng, (H, W, 3)), quality))
    for i in range(frames - 1):
        for axis in "xy":
            (folder / f"flow_{axis}_{i + 1:05d}.jpg").write_bytes(codec.jpeg_bytes(smooth(rng, (H, W)), quality))
    return folder


def import_into(store_root: Path, folder: Path, cfg: FlowConfig, **store: object):
    store = create_store(store_root, bound=20.0, **store)
    with store.writer("v") as writer:
        checked = import_video(folder, writer, cfg)
    return checked, store


def stored_blobs(store, video_id: str = "v") -> tuple[list[bytes], list[bytes]]:
    with store.open(video_id) as v:
        return ([b.tobytes() for b in v._blobs(v._rgb_index)], [b.tobytes() for b in v._blobs(v._flow_index)])


@pytest.mark.parametrize("layout", ["packed", "mmaction"])
def test_rawframes_jpegs_are_kept_byte_for_byte(tmp_path, layout):
    folder = write_tree(tmp_path / "raw", 95)
    cfg = FlowConfig(source="rawframes", size="", jobs=1)
    checked, store = import_into(tmp_path / "store", folder, cfg, layout=layout, codec="jpeg")
    assert checked.copied == 3 + 2 * 2
    files = sorted(p.name for p in folder.iterdir())
    if layout == "mmaction":
        assert all((tmp_path / "store" / "v" / name).read_bytes() == (folder / name).read_bytes() for name in files)
        return
    rgb, flow = stored_blobs(store)
    assert rgb == [(folder / f"img_{i:05d}.jpg").read_bytes() for i in (1, 2, 3)]
    assert flow == [codec.flow_jpeg_blob((folder / f"flow_x_{i:05d}.jpg").read_bytes(),
                                         (folder / f"flow_y_{i:05d}.jpg").read_bytes()) for i in (1, 2)]


@pytest.mark.parametrize("change, rgb_kept, flow_kept", [
    (dict(quality=50), False, False),  # below rawframes_min_quality: decoded, re-encoded at the store's q95
    (dict(size="16x12"), False, False),  # resized
    (dict(rawframes_bound=10.0), True, False),  # flow re-bounded, frames kept
    (dict(codec="png"), False, True),  # the store keeps frames losslessly (as decoded), flow as JPEG files
])
def test_rawframes_jpegs_are_re_encoded_when_they_cannot_be_kept(tmp_path, change, rgb_kept, flow_kept):
    folder = write_tree(tmp_path / "raw", change.pop("quality", 95))
    codec_name = change.pop("codec", "jpeg")
    cfg = FlowConfig(source="rawframes", jobs=1, **{"size": "", **change})
    checked, store = import_into(tmp_path / "store", folder, cfg, codec=codec_name, flow_codec="jpeg")
    assert checked.copied == 3 * rgb_kept + 4 * flow_kept
    rgb, flow = stored_blobs(store)
    frames = [(folder / f"img_{i:05d}.jpg").read_bytes() for i in (1, 2, 3)]
    flows = [codec.flow_jpeg_blob(*((folder / f"flow_{c}_{i:05d}.jpg").read_bytes() for c in "xy")) for i in (1, 2)]
    assert (rgb == frames, flow == flows) == (rgb_kept, flow_kept)
    if codec_name == "jpeg":  # what was re-encoded is at the store's quality
        assert {codec.jpeg_header(b)[3] for b in rgb} == {95}


def test_a_rawframes_jpeg_that_does_not_decode_fails_its_video_by_name(tmp_path):
    folder = write_tree(tmp_path / "raw", 95)
    frame = folder / "img_00002.jpg"
    frame.write_bytes(frame.read_bytes()[:200])  # header intact, scan cut short
    with pytest.raises(FlowError, match=r"img_00002\.jpg: a JPEG that does not decode"):
        import_into(tmp_path / "store", folder, FlowConfig(source="rawframes", size="", jobs=1), codec="jpeg")
    assert not create_store(tmp_path / "store", codec="jpeg", bound=20.0).has("v")


def test_fast_decode_is_close_to_the_accurate_one(tmp_path, decoder):
    """`fast=True` (train.fast_decode) reaches libjpeg-turbo's fast IDCT and upsampling through the
    store's readers: other pixels than the accurate decode, but no further from the original image than
    JPEG q95 itself takes them (on these colour-noise frames ~4 levels, grey ~1; fast: 1.25x / 1.4x
    that); the cv2 fallback and the mmaction layout have no such switch and decode accurately."""
    rgb, flow = video(seed=5)
    packed = create_store(tmp_path / "packed", codec="jpeg")
    mm = create_store(tmp_path / "mm", "mmaction")
    for store in (packed, mm):
        store.write_video("C/v", rgb, flow)
    with packed.open("C/v") as v, mm.open("C/v") as m:
        for read, original in ((v.rgb, rgb), (v.flow, flow)):
            accurate, fast = read(range(len(original))), read(range(len(original)), fast=True)
            if codec.jpeg_decoder() == "simplejpeg":
                error = [np.abs(a.astype(int) - original).mean() for a in (accurate, fast)]
                assert not np.array_equal(fast, accurate) and error[1] < 1.6 * error[0]
            else:
                assert np.array_equal(fast, accurate)
        assert np.array_equal(m.rgb(range(len(rgb)), fast=True), m.rgb(range(len(rgb))))
        assert np.array_equal(m.flow(range(len(flow)), fast=True), m.flow(range(len(flow))))


def test_jpeg_blobs_are_the_files_as_stored(tmp_path):
    """jpeg_blobs (for GPU decoding): a packed jpeg store hands over the mmaction layout's files byte for
    byte, flow as x then y; a store that keeps a modality in another codec says so by name."""
    rgb, flow = video()
    packed = create_store(tmp_path / "packed", codec="jpeg", flow_codec="png")
    mm = create_store(tmp_path / "mm", "mmaction")
    for store in (packed, mm):
        store.write_video("C/v", rgb, flow)
    folder = tmp_path / "mm" / "C" / "v"
    with packed.open("C/v") as v, mm.open("C/v") as m:
        expected = [(folder / f"img_{i + 1:05d}.jpg").read_bytes() for i in (2, 0)]
        assert [b.tobytes() for b in v.jpeg_blobs("rgb", [2, 0])] == expected
        assert [b.tobytes() for b in m.jpeg_blobs("rgb", [2, 0])] == expected
        assert [b.tobytes() for b in m.jpeg_blobs("flow", [1])] == [
            (folder / f"flow_{c}_00002.jpg").read_bytes() for c in "xy"]
        with pytest.raises(FlowError, match="C/v.*stores flow as png, not JPEG"):
            v.jpeg_blobs("flow", [0])
    jpeg = create_store(tmp_path / "jpeg", codec="jpeg")
    jpeg.write_video("C/v", rgb, flow)
    with jpeg.open("C/v") as v:
        assert [b.tobytes() for b in v.jpeg_blobs("flow", [1])] == [
            (folder / f"flow_{c}_00002.jpg").read_bytes() for c in "xy"]


@pytest.mark.parametrize("flow_codec", codec.CODECS)
def test_flow_decodes_into_planes_as_into_pairs(flow_codec, decoder):
    """decode_flow_planes (x and y into separate arrays, a loader's read) gives decode_flow's image,
    with either JPEG decoder; a jpeg blob cut short is a CodecError."""
    _, flow = video(5)
    blob = np.frombuffer(codec.encode_flow(flow_codec, flow[0], 95), np.uint8)
    pair = np.empty((H, W, 2), np.uint8)
    codec.decode_flow(flow_codec, blob, pair, np.empty((2, H, W), np.uint8))
    planes = np.zeros((2, H, W), np.uint8)
    codec.decode_flow_planes(flow_codec, blob, planes[0], planes[1])
    assert np.array_equal(planes, pair.transpose(2, 0, 1))
    if flow_codec == "jpeg":
        with pytest.raises(codec.CodecError):
            codec.decode_flow_planes(flow_codec, blob[: len(blob) - 200], planes[0], planes[1])
