"""SynthActions: a small two-stream action benchmark with exact optical flow (see docs/synth.md)."""
from pipeline.synth.config import SynthConfig
from pipeline.synth.generate import SynthSummary, generate, video_name
from pipeline.synth.render import Clip, render_clip

__all__ = ["Clip", "SynthConfig", "SynthSummary", "generate", "render_clip", "video_name"]
