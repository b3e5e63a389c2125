"""Where images come from: a folder in the Kaggle layout (found case-insensitively) or a labels CSV (any table
of path and label, including a run's own split.csv)."""

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

    def read_cached(self, record: Record, size: int) -> tuple[np.ndarray, Path | None]:
        """read, plus the decoded-image cache entry that now holds the result (None: not cached), which a
        streamed set reads later instead of the original file."""
        return self.read(record, size), None

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
        # anything named like an image but a folder: a FIFO, device or broken link is kept, so the decoder reports
        # it (skipped, with its reason) instead of it vanishing from the counts
        files = sorted(
            p for p in folder.iterdir()
            if not p.is_dir() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            raise LayoutError(f"{folder}: no images (.jpeg, .jpg, .png, .dcm or .dicom) in this class folder")
        records.extend(Record(str(p), label, *file_metadata(p.name, label)) for p in files)
    return records


class _FileSource(DataSource):
    """A source whose records are image files, decoded through the cache when one is set."""

    def read(self, record: Record, size: int) -> np.ndarray:
        if self.cache is not None:
            return self.cache.decode(record.source, size)
        return decode_grayscale(record.source, size)

    def read_cached(self, record: Record, size: int) -> tuple[np.ndarray, Path | None]:
        if self.cache is not None:
            return self.cache.decode_with_entry(record.source, size)
        return decode_grayscale(record.source, size), None


class UnlabelledFiles(_FileSource):
    """Image files with no labels (a site's films for `adapt`): one split, `all`, whose records' label is 0 and is
    never read. What lets an unlabelled folder be cached and streamed like a labelled split."""

    def __init__(self, files: list[Path], name: str, cache: ImageCache | None = None) -> None:
        self.name, self.cache = name, cache
        self.splits = {"all": [Record(str(file), 0, patient=Path(file).stem) for file in files]}


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


# Header names (compared lower-case, spaces and hyphens read as underscores) each column may go by, so an export
# from another tool (NIH ChestX-ray14's "Image Index", RSNA's "patientId"/"Target") or a run's own split.csv
# reads without renaming.
CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    "path": ("path", "file", "filename", "file_name", "filepath", "file_path", "image", "image_path",
             "image_index"),
    "label": ("label", "class", "target"),
    "patient": ("patient", "patient_id", "patientid"),
    "subgroup": ("subgroup", "group"),
    "series": ("series",),
    "split": ("split",),
}
CSV_REQUIRED = ("path", "label")
LABEL_VALUES = {"normal": 0, "0": 0, "pneumonia": 1, "1": 1}  # compared lower-case, stripped
SPLIT_VALUES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "test": "test", "testing": "test", "held_out": "held_out"}  # held_out: a run's held-out series
CSV_HELP = ("a CSV with a header row and columns path (relative to the CSV's folder, or absolute) and label "
            "(NORMAL/PNEUMONIA or 0/1); optional: patient, subgroup (or group), series, split (train/val/test)")


def _column_map(path: Path, header: list[str]) -> dict[str, str]:
    """Each known column to the header cell that names it; a required one missing, or two cells naming one
    column, is an error naming the file."""
    alias_of = {alias: column for column, aliases in CSV_COLUMNS.items() for alias in aliases}
    found: dict[str, str] = {}
    for cell in header:
        column = alias_of.get((cell or "").strip().lower().replace(" ", "_").replace("-", "_"))
        if column is None:
            continue
        if column in found:
            raise LayoutError(f"{path}: columns '{found[column]}' and '{cell}' both give the {column}; keep one")
        found[column] = cell
    for column in CSV_REQUIRED:
        if column not in found:
            raise LayoutError(f"{path}: no {column} column (accepted names: {', '.join(CSV_COLUMNS[column])}; "
                              f"found: {', '.join(h for h in header if h) or 'none'}); expected {CSV_HELP}")
    return found


class CsvSource(_FileSource):
    """A labels table: one row per image, for datasets not in the folder layout (NIH ChestX-ray14 or RSNA exports
    reduced to NORMAL/PNEUMONIA) and for a run's own `split.csv` read back, e.g. `--data RUN/split.csv --split val`
    re-scores its patient-grouped validation split.

    Every record carries the metadata table's columns: patient (else derived from the file name as the folder
    source does, else the path as written, so unrelated images are never grouped), subgroup and series (else
    derived from the file name). Without a split column every row is in one split "all", and training carves
    validation from it by patient. A relative path is looked up beside the CSV first, then from the working
    directory (a run's split.csv stores paths as the run was given them).
    """

    def __init__(self, path: Path | str) -> None:
        path = Path(path)
        self.name = str(path)
        self.folder = path.parent
        self.splits: dict[str, list[Record]] = {}
        try:
            with path.open(newline="", encoding="utf-8-sig") as handle:
                self._read(path, csv.DictReader(handle))
        except OSError as error:
            raise LayoutError(f"{path}: cannot read ({error.strerror or error})") from None
        except UnicodeDecodeError:
            raise LayoutError(f"{path}: not UTF-8 text; expected {CSV_HELP}") from None

    def _read(self, path: Path, reader: "csv.DictReader[str]") -> None:
        try:
            header = reader.fieldnames
            if not header:
                raise LayoutError(f"{path}: empty file; expected {CSV_HELP}")
            columns = _column_map(path, list(header))
            seen: dict[str, tuple[int, int, str]] = {}  # resolved path -> (line, label, split)
            for row in reader:
                line = reader.line_num
                cell = {column: (row.get(name) or "").strip() for column, name in columns.items()}
                self._add(path, line, cell, seen)
        except csv.Error as error:
            raise LayoutError(f"{path}:{reader.line_num}: not a valid CSV row ({error})") from None
        if not self.splits:
            raise LayoutError(f"{path}: no rows under the header; expected {CSV_HELP}")

    def _resolve(self, text: str) -> str:
        given = Path(text)
        if given.is_absolute():
            return text
        beside = self.folder / given
        return str(beside) if beside.exists() or not given.exists() else text

    def _add(self, path: Path, line: int, cell: dict[str, str], seen: dict[str, tuple[int, int, str]]) -> None:
        if not cell["path"]:
            raise LayoutError(f"{path}:{line}: empty path")
        label = LABEL_VALUES.get(cell["label"].lower())
        if label is None:
            raise LayoutError(f"{path}:{line}: label '{cell['label']}' is not one of {', '.join(CLASS_NAMES)} "
                              "(or 0/1, any case)")
        split = "all"
        if "split" in cell:
            found = SPLIT_VALUES.get(cell["split"].lower())
            if found is None:
                raise LayoutError(f"{path}:{line}: split '{cell['split']}' is not one of train, val, test")
            split = found
        source = self._resolve(cell["path"])
        if source in seen:
            first_line, first_label, first_split = seen[source]
            if (first_label, first_split) != (label, split):
                raise LayoutError(f"{path}:{line}: {cell['path']} is already on line {first_line} with another "
                                  "label or split")
            return  # the same image listed again (e.g. one row per box in an RSNA export) is one record
        seen[source] = (line, label, split)
        patient, subgroup, series = file_metadata(Path(cell["path"]).name, label)
        if patient == Path(cell["path"]).name:
            patient = cell["path"]  # no patient in the name: the image is its own patient
        record = Record(source, label, cell.get("patient") or patient, cell.get("subgroup") or subgroup,
                        cell.get("series") or series)
        self.splits.setdefault(split, []).append(record)

