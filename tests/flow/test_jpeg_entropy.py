"""flow.jpeg_entropy: JPEGs into their quantised DCT coefficients (the CPU's part of train.decode = "hybrid").

Oracles that do not go through the decoder under test: a flat image's coefficients follow from the
DCT by hand; a grey image's follow from its forward DCT and the quantisation table within libjpeg's
integer rounding; and re-encoding the same image with restart markers or optimised Huffman tables
changes the entropy coding and nothing else, so the coefficients must be identical.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from flow.codec import CodecError
from flow.jpeg_entropy import ZIGZAG, EntropyDecoder, Layout


def jpeg(img: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95, *params])
    assert ok
    return buf.tobytes()


def textured(height: int, width: int, channels: int = 0, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: every coefficient band used, as in a real frame."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    base = 128 + 60 * np.sin(x / 7.0) * np.cos(y / 5.0)
    shape = (height, width, channels) if channels else (height, width)
    noise = rng.normal(0, 25, shape)
    img = (base[..., None] if channels else base) + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def test_a_flat_image_is_its_dc_terms_alone():
    """A flat grey 200: every block's DC is 8 * (200 - 128) / q, no AC term; the DC differences chain
    across all 20 blocks of a 40x32 image."""
    blob = jpeg(np.full((32, 40), 200, np.uint8))
    coefs, quant, layout = EntropyDecoder()(blob)
    assert layout == Layout(32, 40, ((1, 1),), ((4, 5),)) and coefs.shape == (20, 64)
    assert (coefs[:, 0] == round(8 * 72 / quant[0, 0])).all() and not coefs[:, 1:].any()


def test_a_grey_image_is_its_quantised_dct():
    """Each 8x8 block's coefficients are its orthonormal DCT over the quantisation table, rounded:
    exact but for libjpeg's integer forward DCT rounding a value on the other side of .5."""
    img = textured(48, 64)
    coefs, quant, layout = EntropyDecoder()(jpeg(img))
    u = np.arange(8)
    basis = np.cos((2 * u[None, :] + 1) * u[:, None] * np.pi / 16) * 0.5
    basis[0] /= np.sqrt(2)
    blocks = (img.astype(np.float64) - 128).reshape(6, 8, 8, 8).transpose(0, 2, 1, 3)  # [rows, cols, 8, 8]
    expected = np.rint(basis @ blocks @ basis.T / quant[0].reshape(8, 8)).reshape(-1, 64)
    got = coefs.astype(np.float64)
    assert layout.grids == ((6, 8),)
    assert np.abs(got - expected).max() <= 1 and (got == expected).mean() > 0.97


@pytest.mark.parametrize("sampling", [0x221111, 0x211111, 0x111111])  # 4:2:0 (cv2's), 4:2:2, 4:4:4
@pytest.mark.parametrize("params", [(cv2.IMWRITE_JPEG_RST_INTERVAL, 1), (cv2.IMWRITE_JPEG_RST_INTERVAL, 3),
                                    (cv2.IMWRITE_JPEG_OPTIMIZE, 1)], ids=["restart-1", "restart-3", "optimized"])
def test_only_the_entropy_coding_changes_nothing(sampling, params):
    """Restart markers (every MCU, every third) and optimised Huffman tables (long codes through the slow
    path) re-code the same quantised coefficients: the decoder must give identical arrays. Odd sizes:
    the edge MCUs are partly padding."""
    img = textured(37, 53, 3, seed=1)
    decoder = EntropyDecoder()
    base = jpeg(img, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling)
    plain, quant, layout = decoder(base)
    plain, quant = plain.copy(), quant.copy()
    h, v = sampling >> 20 & 15, sampling >> 16 & 15
    assert layout.sampling == ((h, v), (1, 1), (1, 1))
    assert layout.grids[0] == (-(-37 // (8 * v)) * v, -(-53 // (8 * h)) * h) and layout.grids[1] == layout.grids[2]
    recoded, quant2, layout2 = decoder(jpeg(img, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling, *params))
    assert layout2 == layout and np.array_equal(quant2, quant) and np.array_equal(recoded, plain)
    assert plain[:, 1:].any()  # the image has AC terms to get wrong


def test_output_into_a_given_array_and_layout_from_the_header():
    img = textured(256, 340, 3)
    blob = jpeg(img)
    decoder = EntropyDecoder()
    layout = decoder.layout(blob)
    assert layout.grids == ((32, 44), (16, 22), (16, 22)) and layout.blocks == 2112
    out = np.full((2, layout.blocks, 64), 7, np.int16)
    target = out[1]
    got, _, _ = decoder(blob, target)
    assert got is target and np.array_equal(out[1], decoder(blob)[0]) and (out[0] == 7).all()
    with pytest.raises(CodecError, match="2112 blocks of coefficients, the array is int16 \\[10, 64\\]"):
        decoder(blob, np.empty((10, 64), np.int16))


def test_zigzag_is_a_permutation_into_natural_order():
    assert sorted(ZIGZAG.tolist()) == list(range(64))
    assert ZIGZAG[:6].tolist() == [0, 1, 8, 16, 9, 2]  # (0,0) (0,1) (1,0) (2,0) (1,1) (0,2)


@pytest.mark.parametrize("blob, problem", [
    (b"", "no SOI marker"), (b"\xff\xd8", "no scan"), (b"GIF89a", "no SOI"),
    (None, "progressive"),
])
def test_what_it_does_not_read_is_one_line(blob, problem):
    if blob is None:
        blob = jpeg(textured(32, 32, 3), cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
    with pytest.raises(CodecError, match=problem):
        EntropyDecoder()(blob)


def segment(blob: bytes, marker: int) -> int:
    """Offset of the first segment `FF marker` (its FF) before the scan."""
    pos = 2
    while blob[pos + 1] != marker:
        pos += 2 + int.from_bytes(blob[pos + 2:pos + 4], "big")
    return pos


def scan_start(blob: bytes) -> int:
    sos = segment(blob, 0xDA)
    return sos + 2 + int.from_bytes(blob[sos + 2:sos + 4], "big")


def test_a_scan_that_ends_early_or_holds_a_marker_is_refused():
    """Zero bytes are fed past the scan's data (as libjpeg does) but none may be decoded: a cut scan,
    a marker inside it and restart markers the header does not announce are errors, not zero blocks."""
    good = jpeg(textured(64, 96, 3, seed=4))
    start = scan_start(good)
    cut = good[:start + (len(good) - start) // 2]
    inner = good[:start + 200] + b"\xff\xd9" + good[start + 202:]
    restarts = bytearray(jpeg(textured(64, 96, 3, seed=4), cv2.IMWRITE_JPEG_RST_INTERVAL, 1))
    dri = segment(bytes(restarts), 0xDD)
    restarts[dri + 4:dri + 6] = b"\0\0"  # interval 0: the RST markers come unannounced
    for blob in (good[:start], cut, inner, bytes(restarts)):
        with pytest.raises(CodecError, match="ends before its last block|bytes of scan at least"):
            EntropyDecoder().sparse(blob)


def test_a_header_larger_than_its_scan_allocates_nothing():
    """65535x65535 in the header of a tiny file: refused before any array is sized by it."""
    blob = bytearray(jpeg(textured(16, 16, 3)))
    sof = segment(bytes(blob), 0xC0)
    blob[sof + 5:sof + 9] = (65535).to_bytes(2, "big") * 2
    with pytest.raises(CodecError, match="a 65535x65535 image needs 25165824 bytes of scan at least, this one has"):
        EntropyDecoder().sparse(bytes(blob))


def test_colour_it_cannot_convert_is_refused():
    """Chroma sampled more finely than luma (the device upsamples to the first component's grid), and
    RGB colour (no JFIF marker, component ids R, G, B: libjpeg's rule), which it would turn to BGR as
    if it were YCbCr."""
    blob = bytearray(jpeg(textured(16, 16, 3), cv2.IMWRITE_JPEG_SAMPLING_FACTOR, 0x111111))
    sof = segment(bytes(blob), 0xC0)
    finer = bytearray(blob)
    finer[sof + 10 + 3 + 1] = 0x22  # Cb 2x2 under a 1x1 Y
    with pytest.raises(CodecError, match="sampled more finely than the first"):
        EntropyDecoder().sparse(bytes(finer))
    app0 = segment(bytes(blob), 0xE0)
    rgb = bytearray(blob[:app0] + blob[app0 + 2 + int.from_bytes(blob[app0 + 2:app0 + 4], "big"):])
    sof = segment(bytes(rgb), 0xC0)
    for i, name in enumerate(b"RGB"):
        rgb[sof + 10 + 3 * i] = name
    sos = segment(bytes(rgb), 0xDA)
    for i, name in enumerate(b"RGB"):
        rgb[sos + 5 + 2 * i] = name
    with pytest.raises(CodecError, match="RGB colour"):
        EntropyDecoder().sparse(bytes(rgb))


def test_zero_runs_write_nothing():
    """Blocks whose one AC term lies past 16 zeros (a ZRL code; short with optimised tables): the
    sparse output holds only nonzero AC terms, and they scatter to the dense coefficients."""
    u = np.arange(8)
    pattern = np.cos((2 * u[:, None] + 1) * 5 * np.pi / 16) * np.cos((2 * u[None, :] + 1) * 6 * np.pi / 16)
    img = np.clip(128 + 60 * np.tile(pattern, (8, 8)), 0, 255).astype(np.uint8)
    decoder = EntropyDecoder()
    for blob in (jpeg(img), jpeg(img, cv2.IMWRITE_JPEG_OPTIMIZE, 1)):
        got = decoder.sparse(blob)
        ac = got.positions != 0
        assert ac.sum() >= 64 and (got.values[ac] != 0).all() and got.positions.max() > 40
        dense = decoder(blob)[0]
        assert (dense[:, 1:] != 0).sum() == ac.sum()


def test_damaged_jpegs_are_errors_or_garbage_never_a_crash():
    """Truncations and random byte changes anywhere (headers, tables, scan): a CodecError or some
    coefficients, and the next good JPEG still decodes to the same arrays (no state left behind)."""
    good = jpeg(textured(40, 56, 3, seed=3))
    decoder = EntropyDecoder()
    expected = decoder(good)[0].copy()
    rng = np.random.default_rng(0)
    errors = 0
    for trial in range(400):
        data = bytearray(good)
        if trial % 4 == 0:
            data = data[:rng.integers(0, len(data))]
        else:
            for _ in range(rng.integers(1, 6)):
                data[rng.integers(0, len(data))] = rng.integers(0, 256)
        try:
            coefs, quant, layout = decoder(bytes(data))
        except CodecError:
            errors += 1
            continue
        assert coefs.shape == (layout.blocks, 64) and quant.shape == (len(layout.grids), 64)
        assert np.array_equal(decoder(good)[0], expected)
    assert 0 < errors < 400
