"""What SynthActions is made of: appearances, motions, shapes and textures (the why is in docs/synth.md).

Textures are functions of continuous coordinates, so every frame samples them exactly where the
inverse transform lands and the ground-truth flow is exact.
"""
from __future__ import annotations

import colorsys
import math
from collections.abc import Callable

import numpy as np

# An appearance is a hue. Its dark and light colours have the same luminance for every hue, so the grey
# frames TV-L1 sees are alike across appearances and the flow stream cannot tell them apart.
APPEARANCES = {"red": 0.0, "yellow": 60.0, "green": 120.0, "cyan": 180.0, "blue": 240.0, "magenta": 300.0}
# No left/right translation and no clockwise/anticlockwise pair: training flips clips horizontally, which
# would turn one class into the other. Rotations turn either way at random; oscillation is horizontal.
MOTIONS = ("up", "down", "zoom_in", "zoom_out", "rotate", "oscillate")
# Shape and texture belong to a group (like an actor in UCF101), never to a class.
SHAPES = ("disc", "square", "diamond", "ellipse")
TEXTURES = ("waves", "blobs", "checks")

GREY = np.array([0.299, 0.587, 0.114])  # OpenCV's RGB -> grey weights
OBJECT_GREY = (55.0, 180.0)  # dark and light grey levels of every object palette
BACKGROUND_GREY = (90.0, 165.0)  # lower contrast than objects, overlapping their range
# Channels stay inside this range so that noise and a brighter frame rarely clip them: clipping would
# change the grey level by an amount that depends on the hue, and so leak the appearance into grey.
GAMUT = (16.0, 225.0)
LARGEST_ZOOM = 2.0  # zoom motions change the size at most this much over a clip

Texture = Callable[[np.ndarray, np.ndarray], np.ndarray]


def palette(hue: float, greys: tuple[float, float], saturation: float) -> np.ndarray:
    """[2, 3] RGB colours of one hue at the given grey levels; saturation in [0, 1] of what fits."""
    pure = np.array(colorsys.hsv_to_rgb(hue / 360.0, 1.0, 1.0)) * 255.0
    chroma = pure - GREY @ pure  # zero grey: adding it to a grey colour keeps its luminance
    colours = []
    for grey in greys:
        room = np.where(chroma > 0, (GAMUT[1] - grey) / np.maximum(chroma, 1e-9),
                        np.where(chroma < 0, (grey - GAMUT[0]) / np.maximum(-chroma, 1e-9), np.inf))
        colours.append(grey + saturation * room.min() * chroma)
    return np.array(colours)


def poses(motion: str, frames: int, speed: float, radius: float, rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object motion in the world: offset [T, 2] px from the start, zoom [T], angle [T] radians.

    `speed` is px/frame of the fastest point (the rim for rotation and zoom), so that classes are
    equally hard to see at a given speed."""
    t = np.arange(frames, dtype=np.float64)
    offset, zoom, angle = np.zeros((frames, 2)), np.ones(frames), np.zeros(frames)
    if motion in ("up", "down"):
        offset[:, 1] = (-1.0 if motion == "up" else 1.0) * speed * t  # image y grows downwards
    elif motion in ("zoom_in", "zoom_out"):
        rate = min(speed / radius, np.log(LARGEST_ZOOM) / max(frames - 1, 1))
        zoom = np.exp((rate if motion == "zoom_in" else -rate) * t)
    elif motion == "rotate":
        angle = rng.choice([-1.0, 1.0]) * speed / radius * t
    elif motion == "oscillate":
        period = rng.uniform(10.0, 20.0)
        amplitude = speed * period / 4.0  # mean speed of a sine = 4 * amplitude / period
        phase = rng.uniform(0.0, 2.0 * np.pi)
        offset[:, 0] = amplitude * (np.sin(2.0 * np.pi * t / period + phase) - np.sin(phase))
    else:
        raise ValueError(f"unknown motion {motion!r}")
    return offset, zoom, angle


def shape_distance(shape: str, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance (px, negative inside) to the outline; exact enough for a 1 px soft edge."""
    if shape == "disc":
        return np.hypot(x, y) - radius
    if shape == "square":
        return np.maximum(np.abs(x), np.abs(y)) - 0.85 * radius
    if shape == "diamond":
        return (np.abs(x) + np.abs(y) - 1.2 * radius) / math.sqrt(2.0)
    if shape == "ellipse":
        return (np.hypot(x, y / 0.65) - radius) * 0.65
    raise ValueError(f"unknown shape {shape!r}")


def waves(rng: np.random.Generator, count: int, wavelengths: tuple[float, float]) -> Texture:
    """Plane waves in several directions: texture everywhere, no aperture problem."""
    direction = rng.uniform(0.0, np.pi, count)
    k = 2.0 * np.pi / rng.uniform(*wavelengths, count)
    kx, ky, phase = (a.astype(np.float32) for a in (k * np.cos(direction), k * np.sin(direction),
                                                    rng.uniform(0.0, 2.0 * np.pi, count)))

    def texture(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        total = sum(np.cos(kx[i] * x + ky[i] * y + phase[i]) for i in range(count))
        return 0.5 + 0.5 * np.tanh(total * math.sqrt(2.0 / count))  # about unit variance into tanh

    return texture


def blobs(rng: np.random.Generator, extent: float) -> Texture:
    """Light and dark Gaussian spots scattered over the object."""
    count = 16
    centres = rng.uniform(-extent, extent, (count, 2)).astype(np.float32)
    scale = (-0.5 / rng.uniform(2.0, 3.5, count) ** 2).astype(np.float32)
    sign = rng.choice([-1.0, 1.0], count).astype(np.float32)

    def texture(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        total = sum(sign[i] * np.exp(((x - centres[i, 0]) ** 2 + (y - centres[i, 1]) ** 2) * scale[i])
                    for i in range(count))
        return 0.5 + 0.5 * np.tanh(2.0 * total)

    return texture


def checks(rng: np.random.Generator) -> Texture:
    """A soft-edged checkerboard at a random angle."""
    direction, wavelength = float(rng.uniform(0.0, np.pi)), float(rng.uniform(10.0, 14.0))
    c, s, k = math.cos(direction), math.sin(direction), 2.0 * math.pi / wavelength

    def texture(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return 0.5 + 0.5 * np.tanh(1.5 * np.sin(k * (c * x + s * y)) * np.sin(k * (c * y - s * x)))

    return texture


def object_texture(kind: str, rng: np.random.Generator, extent: float) -> Texture:
    if kind == "waves":
        return waves(rng, 3, (7.0, 14.0))
    if kind == "blobs":
        return blobs(rng, extent)
    if kind == "checks":
        return checks(rng)
    raise ValueError(f"unknown texture {kind!r}")


def background_texture(rng: np.random.Generator) -> Texture:
    return waves(rng, 4, (8.0, 20.0))
