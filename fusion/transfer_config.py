"""Settings of the transfer stage: the `[transfer]` section of a config file (docs/transfer.md).

The benchmarks themselves are `[benchmark.NAME]` tables of dataset settings, which only the pipeline
can read (pipeline.transfer.config.BenchmarkConfig); this section holds what the transfer stage does
with any of them. The SVM keys share their names with `[eval]`'s (`svm_clips`, `svm_cs`, `svm_folds`,
`seed`): the same setting has one name in every section.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fusion.config import check_svm_cs
from p3dbase.device import check_device_setting
from streams.config import MAX_CLIPS, check_seed

# Protocols (fusion.transfer): the paper's per-benchmark evaluation.
PROTOCOLS = ("three_split", "train_val", "aslan_view2", "loo")
# How the 48 ASLAN pair values are normalised: "l2" (P3D, the paper) or "zscore" (C3D).
NORMALISATIONS = ("l2", "zscore")


@dataclass
class TransferConfig:
    # Feature extractors: a stream checkpoint, a training folder (its last.pt), or imported weights
    # (`python -m pipeline import-weights`). flow = "": RGB rows only; both: rgb, flow and two_stream.
    rgb: str = ""
    flow: str = ""  # the flow stream's extractor, as rgb
    benchmarks: list[str] = field(default_factory=list)  # names of [benchmark.NAME] tables, in report order

    # The feature recipe (REFERENCE.md): `svm_clips` uniformly spaced clips per video, short side
    # resized to the stream's crop size, centre crop, each clip averaged with its mirror, mean over clips.
    svm_clips: int = 20
    batch_views: int = 16  # clips through the network at once: bounds memory on long videos
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N"
    jobs: int = 0  # CPU: parallel processes of one thread each; 0 = one per core, at most 4 per core (GPU: always 1)

    # Linear SVMs: C chosen among `svm_cs` by `svm_folds`-fold cross-validation on each protocol's
    # training data.
    svm_cs: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0])
    svm_folds: int = 5  # of that cross-validation
    seed: int = 0  # cross-validation folds
    aslan_normalisation: str = "l2"  # of the 48 pair values: "l2" (P3D, the paper) or "zscore" (C3D)

    # A folder where the stage first writes the built-in generated benchmarks (pipeline.synth.companions:
    # ASLAN, ActivityNet and class-folder layouts); "" = none, the benchmarks are your own data.
    companions: str = ""

    def validate(self) -> None:
        # rgb/flow and benchmarks may be empty here (every stage's resolved config holds [transfer]);
        # the transfer stage itself requires them.
        if len(set(self.benchmarks)) != len(self.benchmarks):
            raise ValueError(f"benchmarks: a name is listed twice: {self.benchmarks}")
        if not 1 <= self.svm_clips <= MAX_CLIPS:
            raise ValueError(f"svm_clips: must be 1 to {MAX_CLIPS}, got {self.svm_clips}")
        if self.batch_views < 1:
            raise ValueError(f"batch_views: must be >= 1, got {self.batch_views}")
        check_device_setting(self.device)
        if self.jobs < 0:
            raise ValueError(f"jobs: must be >= 0 (0 = one per core), got {self.jobs}")
        check_svm_cs(self.svm_cs)
        if self.svm_folds < 2:
            raise ValueError(f"svm_folds: must be >= 2, got {self.svm_folds}")
        check_seed(self.seed)
        if self.aslan_normalisation not in NORMALISATIONS:
            raise ValueError(f"aslan_normalisation: must be 'l2' or 'zscore', got {self.aslan_normalisation!r}")
