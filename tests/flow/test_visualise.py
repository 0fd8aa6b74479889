import cv2
import numpy as np

from flow.visualise import colour_wheel, contact_sheet, flow_to_colour, wheel_legend, write_flow_png
from tests.pictures import blobs, read_png


def test_wheel_has_55_hues_starting_at_red():
    wheel = colour_wheel()
    assert wheel.shape == (55, 3)
    assert wheel[0].tolist() == [255, 0, 0]


def test_directions_and_zero():
    f = np.array([[[1, 0], [-1, 0], [0, 1], [0, -1], [0, 0]]], np.float32)
    rgb = flow_to_colour(f)[0, :, ::-1].astype(int)
    assert rgb[4].tolist() == [255, 255, 255]  # no motion: white
    assert rgb[0].tolist() == [255, 0, 0]  # right: red
    assert rgb[1][0] == 0 and rgb[1][2] == 255  # left: cyan-blue
    assert rgb[2][0] == 255 and rgb[2][1] > 200 and rgb[2][2] == 0  # down: yellow
    assert rgb[3][2] == 255 and rgb[3][1] == 0  # up: violet
    half = flow_to_colour(f * 0.5, max_flow=1.0)[0, 0, ::-1].astype(int)
    assert half.tolist() == [255, 128, 128]  # half the magnitude: half saturated


def test_png_written(tmp_path):
    yy, xx = np.mgrid[-20:21, -30:31].astype(np.float32)
    write_flow_png(tmp_path / "wheel.png", np.stack([xx, yy], -1))
    img = cv2.imread(str(tmp_path / "wheel.png"))
    assert img.shape == (41, 61, 3)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 100


def test_a_picture_must_be_named_png_and_its_scale_positive(tmp_path):
    import pytest

    from flow.errors import FlowError
    from flow.visualise import check_max_flow

    flow = np.zeros((4, 4, 2), np.float32)
    with pytest.raises(FlowError, match=r"x.txt: writes a PNG picture, so the name must end in .png"):
        write_flow_png(tmp_path / "x.txt", flow)
    with pytest.raises(FlowError, match=r"the folder .*nowhere does not exist"):
        write_flow_png(tmp_path / "nowhere/x.png", flow)
    for bad in (0.0, -3.0, float("nan"), float("inf")):
        with pytest.raises(FlowError, match=r"max_flow must be a number of px per frame > 0"):
            check_max_flow(bad)
    check_max_flow(None)
    assert not list(tmp_path.iterdir())


def test_contact_sheet_and_wheel_legend(tmp_path):
    legend = wheel_legend(33)
    assert legend.shape == (33, 33, 3) and legend.dtype == np.uint8
    assert (legend[16, 16] == 255).all()  # no motion at the centre: white
    assert (legend[0, 0] == 255).all()  # outside the disc: white background
    # Rightward motion at the rim is red in the Middlebury wheel (BGR: red is the last channel).
    assert legend[16, 32, 2] == 255 and legend[16, 32, 0] < 40
    rgb = np.zeros((3, 24, 32, 3), np.uint8)
    flows = np.zeros((3, 24, 32, 2), np.float32)
    flows[..., 0] = 1.0  # 1 px right at a 2 px scale: half-saturated red, BGR (128, 128, 255)
    # The title is the video id, a file name: "$" in it is drawn, not parsed as TeX.
    image = read_png(contact_sheet(tmp_path / "sheet.png", rgb, flows, [0, 4, 8], 2.0, "v: a$^$b"))
    assert image.shape[1] > image.shape[0] > 100
    # Three black frames over three half-red flow fields, each a panel of the same size.
    frames = [b for b in blobs(image, (0, 0, 0), 3) if b[4] > 2000]
    fields = [b for b in blobs(image, (128, 128, 255), 3) if b[4] > 2000]
    assert len(frames) == 3 and len(fields) == 3, (frames, fields)
    assert all(f[1] > max(b[1] + b[3] for b in frames) for f in fields)  # the flow row under the frames
    assert max(b[4] for b in fields) < 1.1 * min(b[4] for b in frames)
