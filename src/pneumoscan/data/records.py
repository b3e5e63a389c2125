"""The unit every data source yields (one image with its label and metadata), and split summaries."""

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    """One image. `source` is a file path or a synthetic id; `patient` groups images for splitting.

    The source fills the metadata once, so no later step re-parses file names: `subgroup` is the
    pneumonia subtype where known ('bacteria', 'virus'), 'normal' for NORMAL images, else None;
    `series` names the acquisition batch a file comes from (Kermany: 'IM', 'NORMAL2' or 'person').
    """

    source: str
    label: int
    patient: str
    subgroup: str | None = None
    series: str | None = None


@dataclass(frozen=True)
class SplitCounts:
    images: int
    normal: int
    pneumonia: int
    patients: int

    @classmethod
    def of(cls, records: Sequence[Record]) -> "SplitCounts":
        pneumonia = sum(r.label for r in records)
        return cls(images=len(records), normal=len(records) - pneumonia, pneumonia=pneumonia,
                   patients=len({r.patient for r in records}))

    def __str__(self) -> str:
        return f"{self.images} images ({self.normal} normal / {self.pneumonia} pneumonia, {self.patients} patients)"

    @property
    def prevalence(self) -> float:
        return self.pneumonia / self.images if self.images else float("nan")


@dataclass(frozen=True)
class SplitSummary:
    """Which images a job used: the source, the split's name and its counts."""

    source: str
    split: str
    counts: SplitCounts


@dataclass(frozen=True)
class DataSummary:
    """The data a model was trained on: the source, its split, how validation was obtained, and the counts."""

    source: str
    split: str
    validation: str
    train: SplitCounts
    val: SplitCounts
    held_out: SplitCounts | None = None  # normals of one acquisition series kept out (TrainConfig.hold_out_series)
