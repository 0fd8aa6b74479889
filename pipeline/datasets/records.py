"""What every reader returns: one VideoRecord per video, and the Dataset holding them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SUBSETS = ("train", "val", "test", "unused")


@dataclass(frozen=True, slots=True)  # 650,000 of them for Kinetics-700: no __dict__ each
class VideoRecord:
    video_id: str  # path relative to the video root, no extension, '/'-separated: the key downstream
    path: Path
    label: int  # 0-based index into Dataset.classes; the first of `labels`
    labels: tuple[int, ...]  # every label of a multi-label video (ActivityNet, mmaction multi-label)
    class_name: str  # classes[label]
    split: str  # "train" | "val" | "test" | "unused" (HMDB51's 0)
    group: str | None = None  # UCF101 / SynthActions "g08": clips of one group share actor and scene


@dataclass
class Dataset:
    format: str
    root: Path
    classes: list[str]
    videos: list[VideoRecord]
    split: str  # the split these roles belong to: "1", "2", "3", or "all"
    # Listed in the annotations but skipped: absent under root, or without a label (Kinetics test).
    missing: list[str] = field(default_factory=list)
    # split name -> Dataset, when read with split="all" from a three-split format.
    per_split: dict[str, Dataset] = field(default_factory=dict, repr=False)
    # Videos found but refused, with the reason: a link out of the root, a FIFO, a name that is not
    # UTF-8 or holds a backslash. (path under root, reason); the flow stage records them as failed.
    refused: list[tuple[str, str]] = field(default_factory=list)
    # The videos of `missing` that the annotations list with a label and a role, as records (their path
    # where they should be): eval and transfer count the ones they score as excluded misses, as they do
    # scored videos without flow: a test set smaller than listed shows.
    absent: list[VideoRecord] = field(default_factory=list)

    def absent_scored(self) -> list[VideoRecord]:
        """The absent videos of the test and val subsets."""
        return [v for v in self.absent if v.split in ("test", "val")]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, name: str) -> list[VideoRecord]:
        if name not in SUBSETS:
            raise ValueError(f"subset must be one of {SUBSETS}, got {name!r}")
        return [v for v in self.videos if v.split == name]

    def train(self) -> list[VideoRecord]:
        return self.subset("train")

    def val(self) -> list[VideoRecord]:
        return self.subset("val")

    def test(self) -> list[VideoRecord]:
        return self.subset("test")

    def splits(self) -> dict[str, Dataset]:
        """Each split as its own Dataset: "1", "2", "3" after split="all", else {split: self}."""
        return dict(self.per_split) or {self.split: self}


def training_item(record: VideoRecord) -> tuple[str, int | tuple[int, ...]]:
    """(video_id, label), the form streams.clips and the training stage take; a multi-label video
    gives all its labels (streams.losses spreads the training target over them)."""
    return record.video_id, (record.label if len(record.labels) == 1 else record.labels)


def items(records: list[VideoRecord]) -> list[tuple[str, int | tuple[int, ...]]]:
    return [training_item(r) for r in records]
