"""Reading the pictures the tests check: a PNG as BGR pixels, and the regions of one colour in it."""
from __future__ import annotations

import cv2
import numpy as np


def read_png(path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"{path} is not a readable PNG"
    return image


def blobs(image: np.ndarray, bgr, tolerance: int = 12) -> list[tuple[int, int, int, int, int]]:
    """Connected regions of one colour: (x, y, width, height, pixel count), largest first."""
    mask = (np.abs(image.astype(int) - np.array(bgr)) <= tolerance).all(axis=2).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)  # cells meeting at a corner stay apart
    return sorted((tuple(int(v) for v in s) for s in stats[1:]), key=lambda s: -s[4])
