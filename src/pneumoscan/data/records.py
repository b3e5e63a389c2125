"""The unit every data source yields (one image with its label and metadata), and split summaries."""

import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def printable(path: object) -> str:
    """A file name as text any output can carry: bytes that are not UTF-8 (kept by the OS as surrogates) become
    backslash escapes instead of making the output (JSON, CSV, a report) invalid."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


SKIPPED_LISTED = 100  # files named in a skipped-files record; the count and the count per kind cover them all


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
class SkippedFile:
    """One file a job could not read and left out. `kind` is ImageDecodeError.kind (unsupported, too_large,
    unreadable), so outputs can count skips by cause; `source` is printable (undecodable bytes escaped)."""

    source: str
    reason: str
    kind: str


@dataclass(frozen=True)
class SkippedFiles:
    """What a job left out, as its outputs record it: the total, a count per kind, and the first
    SKIPPED_LISTED files with their reasons. Skipped files change the data a result rests on, so every
    output that reports counts says how many were dropped and why, not only the console."""

    count: int = 0
    by_kind: Mapping[str, int] = field(default_factory=dict)
    files: tuple[SkippedFile, ...] = ()  # the first SKIPPED_LISTED; `count` is the total

    @classmethod
    def of(cls, skipped: Sequence[SkippedFile], limit: int = SKIPPED_LISTED) -> "SkippedFiles":
        return cls(count=len(skipped), by_kind=dict(sorted(Counter(s.kind for s in skipped).items())),
                   files=tuple(skipped[:limit]))

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "SkippedFiles":
        return cls(count=int(payload["count"]), by_kind={str(k): int(v) for k, v in payload["by_kind"].items()},
                   files=tuple(SkippedFile(source=str(f["source"]), reason=str(f["reason"]), kind=str(f["kind"]))
                               for f in payload["files"]))

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "by_kind": dict(self.by_kind), "listed": len(self.files),
                "files": [{"source": f.source, "reason": f.reason, "kind": f.kind} for f in self.files]}

    def __add__(self, other: "SkippedFiles") -> "SkippedFiles":
        kinds = Counter(self.by_kind) + Counter(other.by_kind)
        return SkippedFiles(count=self.count + other.count, by_kind=dict(sorted(kinds.items())),
                            files=(self.files + other.files)[:SKIPPED_LISTED])

    def __str__(self) -> str:
        if not self.count:
            return "no file skipped"
        kinds = ", ".join(f"{kind} {n}" for kind, n in self.by_kind.items())
        return f"{self.count} file(s) skipped ({kinds})"


@dataclass(frozen=True)
class SplitSummary:
    """Which images a job used: the source, the split's name, its counts, and the files left out
    (None: not recorded, e.g. a summary made before pneumoscan recorded them)."""

    source: str
    split: str
    counts: SplitCounts
    skipped: SkippedFiles | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "split": self.split, "counts": asdict(self.counts),
                "skipped": None if self.skipped is None else self.skipped.to_dict()}


def data_fingerprint(splits: Iterable[tuple[str, Sequence[Record]]]) -> str:
    """SHA-256 over the sorted (file, label, patient, split, file size) rows of a run's split, i.e. split.csv's
    identity columns plus each file's size in bytes (-1 where the source is not a file, e.g. synthetic ids).

    Cheap by design (one stat per file, no re-reading): it changes when a file is added, removed, relabelled,
    moved to another patient or split, or changes size; an edit that keeps a file's size is not seen."""
    rows = []
    for split, records in splits:
        for r in records:
            try:
                size = os.stat(r.source).st_size
            except (OSError, ValueError):
                size = -1
            rows.append("\t".join([r.source, str(r.label), r.patient, split, str(size)]))
    digest = hashlib.sha256()
    for row in sorted(rows):
        digest.update(row.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class DataSummary:
    """The data a model was trained on: the source, its split, how validation was obtained, and the counts."""

    source: str
    split: str
    validation: str
    train: SplitCounts
    val: SplitCounts
    held_out: SplitCounts | None = None  # normals of one acquisition series kept out (TrainConfig.hold_out_series)
    # files left out per split ("train", "val", "held_out"); None: not recorded (a bundle older than the record)
    skipped: Mapping[str, SkippedFiles] | None = None
    data_sha256: str | None = None  # data_fingerprint of the split; None: not recorded

    @property
    def skipped_total(self) -> SkippedFiles | None:
        """Every split's skipped files together (None when not recorded)."""
        if self.skipped is None:
            return None
        total = SkippedFiles()
        for part in self.skipped.values():
            total = total + part
        return total
