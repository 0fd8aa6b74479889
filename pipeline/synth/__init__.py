"""SynthActions: a small two-stream action benchmark with exact optical flow (see docs/synth.md)."""
from pipeline.synth.config import SynthConfig
from pipeline.synth.flo import read_flo, write_flo
from pipeline.synth.generate import SynthSummary, generate, video_name
from pipeline.synth.render import Clip, render_clip

__all__ = ["Clip", "SynthConfig", "SynthSummary", "generate", "read_flo", "render_clip", "video_name",
           "write_flo"]
