"""Settings of SynthActions: the `[synth]` section of a config file (see docs/synth.md)."""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.synth.design import APPEARANCES, MOTIONS
from streams.config import check_seed

# Bounds far beyond any sensible synthetic set, so that a typo is one line and not a hang or a
# MemoryError: 10**20 groups hung before any output, 10**20 frames failed deep in numpy.
MAX_GROUPS, MAX_CLIPS_PER_GROUP, MAX_FRAMES, MAX_SIZE, MAX_FPS = 10_000, 1000, 10_000, 4096, 1000.0
MIN_FPS = 1.0
MAX_VIDEOS = 1_000_000  # classes x groups x clips_per_group (UCF101: 13,320; Kinetics-400: 306,245)
# A clip is rendered whole in memory, about 120 bytes per pixel of every frame: at most 2**25 pixels
# (4 GB), e.g. 512 frames of 256x256 (the default is 32 frames of 64x64, 2**17).
MAX_CLIP_PIXELS = 2 ** 25


@dataclass
class SynthConfig:
    seed: int = 0  # the benchmark is a function of these settings: same seed, same videos

    # Design: one class per appearance x motion, named e.g. "RedUp".
    appearances: list[str] = field(default_factory=lambda: ["red", "green", "blue"])  # any of APPEARANCES
    motions: list[str] = field(default_factory=lambda: ["up", "down", "rotate", "oscillate"])  # any of MOTIONS
    groups: int = 7  # per class; the three splits test disjoint groups, like UCF101's 25
    clips_per_group: int = 4  # a group's clips share the object (shape, texture) and the scene

    # Video.
    frames: int = 32  # per clip
    size: int = 64  # square frames, px
    fps: float = 25.0  # written in the container; the motion is set per frame
    codec: str = "FFV1"  # FFV1 in .avi is lossless (OpenCV's FFmpeg); "MJPG" is lossy but plays anywhere
    write_flow: bool = True  # the exact flow of every frame pair as Middlebury .flo (32 KB a pair at 64 px)

    # Per-clip variation, drawn uniformly from [low, high].
    object_size: list[float] = field(default_factory=lambda: [0.3, 0.45])  # diameter / frame side
    speed: list[float] = field(default_factory=lambda: [0.5, 1.1])  # px/frame (at the rim for rotations)

    # Nuisances; 0 switches each off.
    camera_pan: float = 0.6  # largest camera speed, px/frame, in a random direction
    noise: float = 3.0  # std of Gaussian pixel noise, grey levels
    illumination: float = 0.15  # brightness ramps linearly over a clip, at most from -15% to +15%
    occluder: float = 0.5  # probability that a clip has a bar in front of the object

    @classmethod
    def tiny(cls, **overrides) -> SynthConfig:
        """4 classes x 6 videos of 20 frames at 32x32: generates in about a second, for tests."""
        values = dict(appearances=["red", "blue"], motions=["up", "rotate"], groups=3, clips_per_group=2,
                      frames=20, size=32)
        return cls(**{**values, **overrides})

    def class_names(self) -> list[str]:
        """Appearance-major, the classInd.txt order: RedUp, RedDown, ..., GreenUp, ..."""
        return [a.capitalize() + "".join(w.capitalize() for w in m.split("_"))
                for a in self.appearances for m in self.motions]

    def test_groups(self, split: int) -> list[int]:
        """1-based groups held out by split 1, 2 or 3: disjoint blocks of ~28% (UCF101: 7 of 25)."""
        n = max(1, min(round(0.28 * self.groups), self.groups // 3))
        return list(range((split - 1) * n + 1, split * n + 1))

    def validate(self) -> None:
        for name, known, values in (("appearances", APPEARANCES, self.appearances),
                                    ("motions", MOTIONS, self.motions)):
            unknown = [v for v in values if v not in known]
            if not values or unknown or len(set(values)) != len(values):
                raise ValueError(f"{name}: must be distinct names from {', '.join(known)}, got {values}")
        if len(self.appearances) * len(self.motions) < 2:
            raise ValueError("motions: appearances x motions must give at least 2 classes")
        check_seed(self.seed)
        for name, low, top in (("groups", 3, MAX_GROUPS), ("clips_per_group", 1, MAX_CLIPS_PER_GROUP),
                               ("frames", 2, MAX_FRAMES), ("size", 16, MAX_SIZE)):
            if not low <= getattr(self, name) <= top:
                raise ValueError(f"{name}: must be {low} to {top}, got {getattr(self, name)}")
        # A product too large names the factor furthest above its default (the loader blames its origin).
        classes, default = len(self.appearances) * len(self.motions), SynthConfig
        videos = classes * self.groups * self.clips_per_group
        if videos > MAX_VIDEOS:
            key = "groups" if self.groups / default.groups >= self.clips_per_group / default.clips_per_group \
                else "clips_per_group"
            raise ValueError(f"{key}: {classes} classes x {self.groups} groups x {self.clips_per_group} "
                             f"clips_per_group is {videos} videos, more than {MAX_VIDEOS}")
        if self.frames * self.size ** 2 > MAX_CLIP_PIXELS:
            key = "size" if (self.size / default.size) ** 2 >= self.frames / default.frames else "frames"
            raise ValueError(f"{key}: {self.frames} frames of {self.size}x{self.size} px is more than a clip may "
                             f"hold ({MAX_CLIP_PIXELS} pixels, about 4 GB while it is rendered): fewer frames or a "
                             f"smaller size")
        for name, top in (("object_size", 1.0), ("speed", 5.0)):
            value = getattr(self, name)
            if len(value) != 2 or not 0 < value[0] <= value[1] <= top:
                raise ValueError(f"{name}: must be [low, high] with 0 < low <= high <= {top}, got {value}")
        for name, top in (("camera_pan", 5.0), ("noise", 255.0)):  # px/frame as speed; grey levels
            if not 0 <= getattr(self, name) <= top:
                raise ValueError(f"{name}: must be 0 to {top:g}, got {getattr(self, name)}")
        for name in ("illumination", "occluder"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if not MIN_FPS <= self.fps <= MAX_FPS:  # OpenCV's writers fail below ~0.0011 (blamed on the codec)
            raise ValueError(f"fps: must be {MIN_FPS:g} to {MAX_FPS:g} (what the container records; the motion "
                             f"is set per frame), got {self.fps}")
        if len(self.codec) != 4:
            raise ValueError(f"codec: must be a four-character code such as FFV1 or MJPG, got {self.codec!r}")
