"""Render one SynthActions clip and its exact optical flow.

Frames are made by inverse mapping: pixel x of frame t shows the object texture at T_t^-1(x) or the
background at x + camera_t. The flow of x from t to t+1 is then exact: T_{t+1}(T_t^-1(x)) - x on the
object, camera_t - camera_{t+1} on the background and on the occluder (both fixed in the world).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.synth.config import SynthConfig
from pipeline.synth.design import (
    APPEARANCES,
    BACKGROUND_GREY,
    OBJECT_GREY,
    SHAPES,
    TEXTURES,
    background_texture,
    object_texture,
    palette,
    poses,
    shape_distance,
)

BACKGROUND, OBJECT, OCCLUDER, MIXED = 0, 1, 2, 255  # MIXED: an anti-aliased edge pixel


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # uint8 [T, H, W, 3], BGR like OpenCV
    flow: np.ndarray  # float32 [T-1, H, W, 2]: x then y, frame t -> t+1
    layers: np.ndarray  # uint8 [T, H, W]: BACKGROUND, OBJECT, OCCLUDER or MIXED


def class_design(cfg: SynthConfig, class_index: int) -> tuple[str, str]:
    """(appearance, motion) of a class, in SynthConfig.class_names() order."""
    return cfg.appearances[class_index // len(cfg.motions)], cfg.motions[class_index % len(cfg.motions)]


def _place(path: np.ndarray, reach: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """A start position that keeps the object's image path in the frame where it fits."""
    low, high = path.min(0), path.max(0)
    slack = (size - 1) - (high - low) - 2.0 * reach
    offset = np.where(slack > 0, reach + rng.uniform(0.0, 1.0, 2) * np.maximum(slack, 0.0),
                      ((size - 1) - (high - low)) / 2.0)
    return offset - low


def render_clip(cfg: SynthConfig, class_index: int, group: int, clip: int) -> Clip:
    """Clip `clip` of group `group` (both 1-based) of a class; the same arguments give the same clip.

    Every random draw happens whatever the nuisance switches say, so switching noise or illumination off
    leaves the geometry, and so the flow, unchanged."""
    appearance, motion = class_design(cfg, class_index)
    frames, size = cfg.frames, cfg.size
    t = np.arange(frames, dtype=np.float64)

    # The group: the object (shape, texture) and the scene (background), like a UCF101 actor and place.
    scene = np.random.default_rng([cfg.seed, class_index, group])
    shape = SHAPES[scene.integers(len(SHAPES))]
    texture = object_texture(TEXTURES[scene.integers(len(TEXTURES))], scene, cfg.object_size[1] * size / 2)
    background = background_texture(scene)
    background_colours = palette(scene.uniform(0.0, 360.0), BACKGROUND_GREY, 0.25)
    object_colours = palette(APPEARANCES[appearance], OBJECT_GREY, 0.9)

    # The clip: size, speed, path, camera, occluder, lighting.
    rng = np.random.default_rng([cfg.seed, class_index, group, clip])
    radius = rng.uniform(*cfg.object_size) * size / 2.0
    offset, zoom, angle = poses(motion, frames, rng.uniform(*cfg.speed), radius, rng)
    radius /= np.sqrt(zoom[0] * zoom[-1])  # zoom in and out span the same sizes
    angle = angle + rng.uniform(0.0, 2.0 * np.pi)
    pan_direction, pan_speed = rng.uniform(0.0, 2.0 * np.pi), rng.uniform(0.0, cfg.camera_pan)
    camera = rng.uniform(-size, size, 2) + np.outer(t, pan_speed * np.array([np.cos(pan_direction),
                                                                               np.sin(pan_direction)]))
    image_path = offset - (camera - camera[0])
    centre = _place(image_path, radius * zoom.max(), size, rng) + image_path  # [T, 2] in the image
    occluded = rng.uniform() < cfg.occluder
    bar_axis, bar_width = rng.integers(2), rng.uniform(0.08, 0.14) * size
    bar_at = centre[:, bar_axis].mean() + rng.uniform(-radius, radius) + camera[frames // 2, bar_axis]
    bar_colour = palette(rng.uniform(0.0, 360.0), (45.0, 45.0), 0.3)[0]
    gain = 1.0 + rng.uniform(-cfg.illumination, cfg.illumination) * (2.0 * t / max(frames - 1, 1) - 1.0)

    # Inverse mapping: object coordinates (px at zoom 1) of every pixel of every frame.
    # In float32 (twice as fast): coordinates stay within a few hundred px, where it is exact to 1e-5 px.
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    cos, sin, z = (a.astype(np.float32)[:, None, None] for a in (np.cos(angle), np.sin(angle), zoom))
    centre, camera = centre.astype(np.float32), camera.astype(np.float32)
    radius, bar_at, bar_width = float(radius), float(bar_at), float(bar_width)  # weak scalars keep float32
    dx, dy = xs - centre[:, 0, None, None], ys - centre[:, 1, None, None]
    u, v = (cos * dx + sin * dy) / z, (cos * dy - sin * dx) / z
    world_x, world_y = xs + camera[:, 0, None, None], ys + camera[:, 1, None, None]

    object_alpha = np.clip(0.5 - shape_distance(shape, u, v, radius) * z, 0.0, 1.0)
    bar_alpha = np.clip(0.5 - (np.abs((world_x, world_y)[bar_axis] - bar_at) - bar_width / 2.0), 0.0, 1.0)
    bar_alpha *= occluded
    background_weight = (1 - object_alpha) * (1 - bar_alpha)
    object_weight = object_alpha * (1 - bar_alpha)

    on_object = object_alpha > 0  # the object texture only where it shows: a few times faster
    object_level = np.zeros_like(u)
    object_level[on_object] = texture(u[on_object], v[on_object])
    # Colours are linear in the texture levels, so all of compositing is one matrix product.
    parts = np.stack([background_weight, background_weight * background(world_x, world_y), object_weight,
                      object_weight * object_level, bar_alpha], -1)
    colours = np.array([background_colours[0], background_colours[1] - background_colours[0],
                        object_colours[0], object_colours[1] - object_colours[0], bar_colour], np.float32)
    noise = rng.standard_normal(parts.shape[:-1] + (3,), np.float32) * cfg.noise
    image = (parts @ colours) * gain.astype(np.float32)[:, None, None, None] + noise
    rgb = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    layers = np.full(u.shape, MIXED, np.uint8)
    for layer, weight in ((BACKGROUND, background_weight), (OBJECT, object_weight), (OCCLUDER, bar_alpha)):
        layers[weight >= 1.0] = layer
    # Where the object's points of frame t are at t+1; background and bar move with the camera.
    c1, s1, z1 = cos[1:], sin[1:], z[1:]
    object_flow = np.stack([centre[1:, 0, None, None] + z1 * (c1 * u[:-1] - s1 * v[:-1]) - xs,
                            centre[1:, 1, None, None] + z1 * (s1 * u[:-1] + c1 * v[:-1]) - ys], -1)
    camera_flow = (camera[:-1] - camera[1:])[:, None, None, :]
    flow = np.where((object_weight[:-1] > 0.5)[..., None], object_flow, camera_flow).astype(np.float32)
    return Clip(np.ascontiguousarray(rgb[..., ::-1]), flow, layers)
