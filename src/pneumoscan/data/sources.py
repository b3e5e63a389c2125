"""Where images come from: a folder in the Kaggle layout (found case-insensitively) or a split CSV."""

import csv
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from pneumoscan import CLASS_NAMES
from pneumoscan.data.cache import ImageCache
from pneumoscan.data.decode import IMAGE_SUFFIXES, decode_grayscale
from pneumoscan.data.patients import file_metadata
from pneumoscan.data.records import Record
from pneumoscan.errors import LayoutError

SPLIT_NAMES = ("train", "val", "test")
EXPECTED_LAYOUT = (
    "expected NORMAL/ and PNEUMONIA/ folders, or train/, val/, test/ folders that contain them "
    "(the Kaggle 'Chest X-Ray Images (Pneumonia)' layout)"
)


class DataSource(ABC):
    """A set of named splits of labelled images that can be read at any size."""

    name: str
    splits: dict[str, list[Record]]
    cache: ImageCache | None = None  # file-backed sources decode through it when set

    @abstractmethod
    def read(self, record: Record, size: int) -> np.ndarray:
        """The image as a (size, size) uint8 array."""

    def split(self, preferred: str) -> tuple[str, list[Record]]:
        """The split to use for a job: `preferred` if present, else a bare folder's only split."""
        if preferred in self.splits:
            return preferred, self.splits[preferred]
        if list(self.splits) == ["all"]:
            return "all", self.splits["all"]
        raise LayoutError(f"{self.name}: no '{preferred}' split (found: {', '.join(self.splits)})")


def _child_dirs(folder: Path) -> dict[str, Path]:
    return {
        child.name.lower(): child
        for child in sorted(folder.iterdir())
        if child.is_dir() and not child.name.startswith((".", "__"))
    }


def _class_dirs(folder: Path) -> dict[str, Path] | None:
    children = _child_dirs(folder)
    found = {name: children.get(name.lower()) for name in CLASS_NAMES}
    if all(path is None for path in found.values()):
        return None
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise LayoutError(f"{folder}: missing class folder {', '.join(missing)}/; {EXPECTED_LAYOUT}")
    return {name: path for name, path in found.items() if path is not None}


def _list_records(class_dirs: dict[str, Path]) -> list[Record]:
    records: list[Record] = []
    for label, class_name in enumerate(CLASS_NAMES):
        folder = class_dirs[class_name]
        files = sorted(
            p for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            raise LayoutError(f"{folder}: no images (.jpeg, .jpg or .png) in this class folder")
        records.extend(Record(str(p), label, *file_metadata(p.name, label)) for p in files)
    return records


class _FileSource(DataSource):
    """A source whose records are image files, decoded through the cache when one is set."""

    def read(self, record: Record, size: int) -> np.ndarray:
        return self.cache.decode(record.source, size) if self.cache else decode_grayscale(record.source, size)


class FolderSource(_FileSource):
    """`ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/` or a bare `ROOT/{NORMAL,PNEUMONIA}/`.

    The Kaggle zip unpacks to `chest_xray/chest_xray/...`; a root whose only folder holds the
    layout is followed into it, so either level can be given.
    """

    def __init__(self, root: Path | str) -> None:
        root = Path(root)
        if not root.is_dir():
            raise LayoutError(f"{root}: no such folder; {EXPECTED_LAYOUT}")
        self.root = root
        self.name = str(root)
        self.splits = self._find_splits(root)

    @classmethod
    def _find_splits(cls, root: Path) -> dict[str, list[Record]]:
        bare = _class_dirs(root)
        if bare is not None:
            return {"all": _list_records(bare)}
        children = _child_dirs(root)
        split_dirs = {name: children[name] for name in SPLIT_NAMES if name in children}
        if not split_dirs and len(children) == 1:
            return cls._find_splits(next(iter(children.values())))
        splits: dict[str, list[Record]] = {}
        for split_name, folder in split_dirs.items():
            class_dirs = _class_dirs(folder)
            if class_dirs is None:
                raise LayoutError(f"{folder}: no NORMAL/ or PNEUMONIA/ folder; {EXPECTED_LAYOUT}")
            splits[split_name] = _list_records(class_dirs)
        if not splits:
            raise LayoutError(f"{root}: {EXPECTED_LAYOUT}")
        return splits



class SplitCsvSource(_FileSource):
    """The `split.csv` a training run writes, read back as splits: the run's metadata table, one row per
    image (file, patient, label, subgroup, series, split; the last two metadata columns are optional).

    Lets a run's own patient-grouped validation split be re-scored, e.g. `--data RUN/split.csv --split val`.
    """

    COLUMNS = ("file", "patient", "label", "split")

    def __init__(self, path: Path | str) -> None:
        path = Path(path)
        self.name = str(path)
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        except OSError as error:
            raise LayoutError(f"{path}: cannot read ({error.strerror})") from None
        if not rows or not set(self.COLUMNS) <= set(rows[0]):
            raise LayoutError(f"{path}: expected a CSV with columns {', '.join(self.COLUMNS)}")
        labels = {name.lower(): index for index, name in enumerate(CLASS_NAMES)}
        self.splits: dict[str, list[Record]] = {}
        for line, row in enumerate(rows, start=2):
            label = labels.get(row["label"].strip().lower())
            if label is None:
                raise LayoutError(f"{path}:{line}: label '{row['label']}' is not one of {', '.join(CLASS_NAMES)}")
            _, subgroup, series = file_metadata(Path(row["file"]).name, label)
            record = Record(row["file"], label, row["patient"], row.get("subgroup") or subgroup,
                            row.get("series") or series)
            self.splits.setdefault(row["split"], []).append(record)

