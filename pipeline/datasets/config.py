"""Where a dataset lives and how to read it: the `[dataset]` section of a config file."""
from __future__ import annotations

from dataclasses import dataclass

# Formats with the three official train/test splits of UCF101 and HMDB51.
THREE_SPLIT_FORMATS = ("ucf101", "hmdb51", "synth")
# Formats with one official split (subsets train/val/test); "1" and "all" both name it.
ONE_SPLIT_FORMATS = ("kinetics", "activitynet", "mmaction", "folder", "aslan")
# Sports-1M: the original partitions ("1" or "all") or one of its ten cross-validation folds.
SPORTS1M_SPLITS = ("1", "all") + tuple(f"fold{x}" for x in range(10))
FORMATS = THREE_SPLIT_FORMATS + ONE_SPLIT_FORMATS + ("sports1m",)


@dataclass
class DatasetConfig:
    format: str = "synth"  # one of FORMATS; see docs/datasets.md for each layout
    root: str = ""  # the folder the videos lie under; for synth the SynthActions output folder
    annotations: str = ""  # annotation folder or file (per format); synth: "" = <root>/annotations
    split: str = "1"  # "1", "2", "3" or "all" (three-split formats); sports1m also "fold0".."fold9"; else "1"/"all"

    # format = "mmaction": list files as in mmaction2 configs (ann_file_train/val/test).
    train_list: str = ""  # training videos
    val_list: str = ""  # held-out validation videos
    test_list: str = ""  # test videos
    list_type: str = "video"  # "video" (`path label ...`) or "rawframes" (`dir total_frames label ...`)
    label_map: str = ""  # class names, one a line in label order; "" = names "0", "1", ...

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format: must be one of {', '.join(FORMATS)}, got {self.format!r}")
        splits = (("1", "2", "3", "all") if self.format in THREE_SPLIT_FORMATS else
                  SPORTS1M_SPLITS if self.format == "sports1m" else ("1", "all"))
        if self.split not in splits:
            raise ValueError(f"split: must be one of {', '.join(splits)} for format {self.format}, "
                             f"got {self.split!r}")
        if self.format in ("ucf101", "hmdb51", "kinetics", "activitynet", "aslan", "sports1m") and not self.annotations:
            raise ValueError(f"annotations: required for format {self.format} (see docs/datasets.md)")
        if self.list_type not in ("video", "rawframes"):
            raise ValueError(f"list_type: must be 'video' or 'rawframes', got {self.list_type!r}")
        if self.format == "mmaction" and not (self.train_list or self.val_list or self.test_list):
            raise ValueError("train_list: format mmaction needs at least one of train_list, val_list, "
                             "test_list")
