"""The `[benchmark.NAME]` tables of the transfer stage: where each benchmark's videos lie and its protocol.

```toml
[transfer]
rgb = "weights/p3d199_sports1m_rgb.pt"
benchmarks = ["ucf101", "aslan"]

[benchmark.aslan]
format = "aslan"
root = "data/ASLAN/ASLAN_AVI"
annotations = "data/ASLAN/Views/View2.mat"
```

The `[transfer]` section itself belongs to the stage (fusion.transfer_config.TransferConfig).
"""
from __future__ import annotations

from dataclasses import dataclass

from fusion.transfer_config import PROTOCOLS
from pipeline.datasets.config import THREE_SPLIT_FORMATS, DatasetConfig

# Each format's protocol when `protocol` is left empty.
DEFAULT_PROTOCOL = {"ucf101": "three_split", "hmdb51": "three_split", "synth": "three_split",
                    "activitynet": "train_val", "kinetics": "train_val", "mmaction": "train_val",
                    "sports1m": "train_val", "aslan": "aslan_view2", "folder": "loo"}
# The paper's benchmarks (their published figures are printed beside ours; pipeline.transfer.report).
PAPER_BENCHMARKS = ("ucf101", "activitynet", "aslan", "yupenn", "dynamic_scene")


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
        if protocol == "train_val":  # refused here, not after hours of flow and features
            if self.format == "folder":
                raise ValueError("protocol: train_val trains on a training subset and scores a validation (or test) "
                                 "one; format folder has neither (class folders only): use protocol loo")
            if self.format in THREE_SPLIT_FORMATS and self.split == "all":
                raise ValueError(f"protocol: train_val on format {self.format} trains and scores one split: set "
                                 f"split = \"1\", \"2\" or \"3\" (split \"all\" is the three_split protocol's)")
            if self.format == "mmaction" and not (self.train_list and (self.val_list or self.test_list)):
                raise ValueError("protocol: train_val needs a train_list and a val_list or test_list "
                                 "(format mmaction)")
        if self.paper and self.paper not in PAPER_BENCHMARKS:
            raise ValueError(f"paper: must be one of {', '.join(PAPER_BENCHMARKS)} or \"\", got {self.paper!r}")
