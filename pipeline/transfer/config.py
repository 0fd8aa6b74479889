"""Settings of the transfer stage: `[transfer]` and one `[benchmark.NAME]` table per benchmark.

```toml
[transfer]
rgb = "weights/p3d199_sports1m_rgb.pt"
benchmarks = ["ucf101", "aslan"]

[benchmark.aslan]
format = "aslan"
root = "data/ASLAN/ASLAN_AVI"
annotations = "data/ASLAN/Views/View2.mat"
```
"""
from __future__ import annotations

from dataclasses import dataclass, field

from p3dbase.device import check_device_setting
from pipeline.datasets.config import THREE_SPLIT_FORMATS, DatasetConfig

# Protocols (fusion.transfer): the paper's per-benchmark evaluation.
PROTOCOLS = ("three_split", "train_val", "aslan_view2", "loo")
# Each format's protocol when `protocol` is left empty.
DEFAULT_PROTOCOL = {"ucf101": "three_split", "hmdb51": "three_split", "synth": "three_split",
                    "activitynet": "train_val", "kinetics": "train_val", "mmaction": "train_val",
                    "aslan": "aslan_view2", "folder": "loo"}
# The paper's benchmarks (their published figures are printed beside ours; see pipeline.transfer.paper).
PAPER_BENCHMARKS = ("ucf101", "activitynet", "aslan", "yupenn", "dynamic_scene")
NORMALISATIONS = ("l2", "zscore")


@dataclass
class TransferConfig:
    # Feature extractors: a stream checkpoint, a training folder (its last.pt), or imported weights
    # (`python -m pipeline import-weights`). flow = "": RGB rows only; both: rgb, flow and two_stream.
    rgb: str = ""
    flow: str = ""  # the flow stream's extractor, as rgb
    benchmarks: list[str] = field(default_factory=list)  # names of [benchmark.NAME] tables, in report order

    # The feature recipe (REFERENCE.md): `clips` uniformly spaced 16-frame clips per video, short side
    # resized to the stream's crop size, centre crop, each clip averaged with its mirror, mean over clips.
    clips: int = 20
    batch_views: int = 16  # clips through the network at once: bounds memory on long videos
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N"
    jobs: int = 0  # CPU: parallel processes of one thread each; 0 = one per core (GPU: always 1)

    # Linear SVMs: C chosen among `cs` by `folds`-fold cross-validation on each protocol's training data.
    cs: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0])
    folds: int = 5  # of that cross-validation
    seed: int = 0  # cross-validation folds
    aslan_normalisation: str = "l2"  # of the 48 pair values: "l2" (P3D, the paper) or "zscore" (C3D)

    # A folder where the stage first writes the built-in generated benchmarks (pipeline.synth.companions:
    # ASLAN, ActivityNet and class-folder layouts); "" = none, the benchmarks are your own data.
    companions: str = ""

    def validate(self) -> None:
        # rgb/flow and benchmarks may be empty here (every stage's resolved config holds [transfer]);
        # the transfer stage itself requires them (pipeline.transfer.stage).
        if len(set(self.benchmarks)) != len(self.benchmarks):
            raise ValueError(f"benchmarks: a name is listed twice: {self.benchmarks}")
        if self.clips < 1:
            raise ValueError(f"clips: must be >= 1, got {self.clips}")
        if self.batch_views < 1:
            raise ValueError(f"batch_views: must be >= 1, got {self.batch_views}")
        check_device_setting(self.device)
        if self.jobs < 0:
            raise ValueError(f"jobs: must be >= 0 (0 = one per core), got {self.jobs}")
        if not self.cs or min(self.cs) <= 0:
            raise ValueError(f"cs: must be a non-empty list of C values > 0, got {self.cs}")
        if self.folds < 2:
            raise ValueError(f"folds: must be >= 2, got {self.folds}")
        if self.aslan_normalisation not in NORMALISATIONS:
            raise ValueError(f"aslan_normalisation: must be 'l2' or 'zscore', got {self.aslan_normalisation!r}")


@dataclass
class BenchmarkConfig(DatasetConfig):
    """One benchmark: the `[dataset]` keys (where the videos lie and how to read them) plus its protocol."""
    split: str = "all"  # three-split formats: "all" = the three-split protocol, "1"/"2"/"3" one split
    protocol: str = ""  # one of PROTOCOLS; "" = the format's default (DEFAULT_PROTOCOL)
    # An existing frame + flow store that holds these videos (e.g. `make flow`'s work/flow), read
    # instead of computing flow again; "" = the stage computes one under work_dir/transfer/flow/NAME.
    flow_store: str = ""
    # Which of the paper's benchmarks this one stands for in the report (its published numbers are
    # shown beside ours): one of PAPER_BENCHMARKS, or "" = the benchmark's own name if it is one.
    paper: str = ""

    def resolved_protocol(self) -> str:
        return self.protocol or DEFAULT_PROTOCOL[self.format]

    def validate(self) -> None:
        super().validate()
        if self.protocol and self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol: must be one of {', '.join(PROTOCOLS)} (or \"\" for the format's "
                             f"default), got {self.protocol!r}")
        protocol = self.resolved_protocol()
        if (protocol == "aslan_view2") != (self.format == "aslan"):
            raise ValueError(f"protocol: aslan_view2 is the protocol of format aslan (and the only one it "
                             f"has); got protocol {protocol!r} for format {self.format!r}")
        if protocol == "three_split" and self.format not in THREE_SPLIT_FORMATS:
            raise ValueError(f"protocol: three_split needs a format with three splits "
                             f"({', '.join(THREE_SPLIT_FORMATS)}), got format {self.format!r}")
        if self.paper and self.paper not in PAPER_BENCHMARKS:
            raise ValueError(f"paper: must be one of {', '.join(PAPER_BENCHMARKS)} or \"\", got {self.paper!r}")
