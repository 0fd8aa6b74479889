"""Settings of the evaluation stage: the `[eval]` section of a config file."""
from __future__ import annotations

from dataclasses import dataclass, field

from p3dbase.device import check_device_setting
from streams.config import MAX_CLIPS, check_seed

CROPS = ("center", "three")
CLIP_SAMPLING = ("uniform", "random")
FUSION_SCORES = ("softmax", "raw")
# A fusion weight, at most (fusion_weights, fusion_cv_grid; the grid's are flow weights per RGB weight 1):
# TSN uses 1:1.5. [1e308, 1e308] summed to inf and scored every video 0, and a grid value of 1e308 broke
# the report's weight curve.
MAX_FUSION_WEIGHT = 1000.0
# 4,096 clips of 16x160x160x3 are 20 GB of float32 input, more than a batch of any GPU: a larger value
# is a typo (1e11 read a whole video ahead and ran for minutes before it ran out of memory).
MAX_BATCH_VIEWS = 4096
# An SVM's C, (least, most) (eval.svm_cs; transfer.svm_cs the same). The features are L2-normalised, so
# beyond ~1e4 every C is the hard-margin SVM (the same weights, measured up to 1e60) and below ~1e-4
# every C the same ranking. Outside, LinearSVC's primal solver broke: C = 1e100 and 1e-300 ran for
# minutes, 1e308 and 1e-20 returned all-zero weights (the report's SVM rows 0.00, below chance).
SVM_C_RANGE = (1e-6, 1e6)


def check_svm_cs(cs: list[float]) -> None:
    """ValueError naming `svm_cs` ([eval] and [transfer]) unless every C is within SVM_C_RANGE."""
    low, high = SVM_C_RANGE
    if not cs or not low <= min(cs) <= max(cs) <= high:
        raise ValueError(f"svm_cs: must be a non-empty list of C values, each {low:g} to {high:g} (on "
                         f"L2-normalised features C beyond 1e4 is the hard margin; 1e308 gave all-zero weights), "
                         f"got {cs}")


@dataclass
class EvalConfig:
    # Video-level testing: `clips` clips per video x `crops`, scores averaged.
    clips: int = 10  # per test video, 1-1000 (the report's clip hit@1 counts each)
    # "uniform": evenly spaced; "random": drawn uniformly per video, seeded by `seed` and the video id
    # (the paper's Sports-1M testing: 20 random clips, the same ones on every re-run; fusion.views).
    clip_sampling: str = "uniform"
    crops: str = "center"  # "center" (one crop) or "three" (left/centre/right along the long side)
    batch_views: int = 16  # clips through the network at once (1-4096): bounds memory on long videos

    # Late fusion of the two streams' video scores.
    # "raw": average the views' logits, as TSN fuses (1:1.5 on raw class scores; 81.3 against 56.2
    # for "softmax", which averages probabilities, on `make all` scores). Held-out groups
    # (train.val_groups / val_fraction), when given, choose between the two and the flow weight.
    fusion_scores: str = "raw"
    fusion_weights: list[float] = field(default_factory=lambda: [1.0, 1.5])  # RGB, flow; each 0-1000
    # Without held-out groups: choose the flow weight on the training videos, which the streams were
    # trained on (flagged as not honest in the report); with them the choice is made there anyway.
    fusion_cv: bool = False
    # The flow weights (RGB weight 1, each 0-1000) that fusion_cv, or held-out validation videos,
    # choose among.
    fusion_cv_grid: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0])

    # Features + linear SVM (the paper's protocol): centre crop, each clip averaged with its mirror.
    svm: bool = True  # also train the SVM rows of the report (svm_rgb, svm_flow, svm_two_stream)
    svm_clips: int = 20  # clips per video whose features are averaged, 1-1000 (the paper: 20)
    # C, chosen by CV; each 1e-6 to 1e6 (on L2-normalised features C beyond 1e4 is the hard margin)
    svm_cs: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0])
    svm_folds: int = 5  # cross-validation folds over the training videos
    seed: int = 0  # cross-validation folds, and the clips of clip_sampling = "random"

    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N"
    jobs: int = 0  # CPU: parallel processes of one thread each; 0 = one per core, at most 4 per core (GPU: always 1)

    def validate(self) -> None:
        if not 1 <= self.clips <= MAX_CLIPS:
            raise ValueError(f"clips: must be 1 to {MAX_CLIPS}, got {self.clips}")
        if self.clip_sampling not in CLIP_SAMPLING:
            raise ValueError(f"clip_sampling: must be 'uniform' or 'random', got {self.clip_sampling!r}")
        if self.crops not in CROPS:
            raise ValueError(f"crops: must be 'center' or 'three', got {self.crops!r}")
        if not 1 <= self.batch_views <= MAX_BATCH_VIEWS:
            raise ValueError(f"batch_views: must be 1 to {MAX_BATCH_VIEWS}, got {self.batch_views}")
        if self.fusion_scores not in FUSION_SCORES:
            raise ValueError(f"fusion_scores: must be 'softmax' or 'raw', got {self.fusion_scores!r}")
        top = MAX_FUSION_WEIGHT
        weights = self.fusion_weights
        if len(weights) != 2 or not 0 <= min(weights) <= max(weights) <= top or sum(weights) <= 0:
            raise ValueError(f"fusion_weights: must be [rgb, flow], each 0 to {top:g} (TSN: 1:1.5), not both 0, "
                             f"got {weights}")
        if weights[1] > top * weights[0] > 0:  # the report places rgb:flow on the grid's axis, flow per rgb 1
            raise ValueError(f"fusion_weights: flow is {weights[1] / weights[0]:g} times rgb, at most {top:g} "
                             f"([0, 1] for flow alone), got {weights}")
        if not self.fusion_cv_grid or not 0 <= min(self.fusion_cv_grid) <= max(self.fusion_cv_grid) <= top:
            raise ValueError(f"fusion_cv_grid: must be a non-empty list of flow weights, each 0 to {top:g}, "
                             f"got {self.fusion_cv_grid}")
        if not 1 <= self.svm_clips <= MAX_CLIPS:
            raise ValueError(f"svm_clips: must be 1 to {MAX_CLIPS}, got {self.svm_clips}")
        check_svm_cs(self.svm_cs)
        if self.svm_folds < 2:
            raise ValueError(f"svm_folds: must be >= 2, got {self.svm_folds}")
        check_seed(self.seed)
        if self.jobs < 0:
            raise ValueError(f"jobs: must be >= 0 (0 = one per core), got {self.jobs}")
        check_device_setting(self.device)
