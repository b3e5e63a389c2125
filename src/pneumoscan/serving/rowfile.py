"""The rows file of `predict --out FILE.csv|.jsonl`: one film per line, appended a batch at a time and fsynced, so
an interrupted run leaves whole rows behind and at worst one torn last line, which a reader ignores and a resumed
writer cuts off before it appends. Torch-free.

A row carries the fields of `predict --format json` (file, probability, label, in_distribution, ood_score, engine)
plus the SHA-256 of the film's bytes (how `--resume` knows a film is already scored, and that it did not change)
and `error`: the reason a film's bytes could not be decoded (its other fields empty), so a resume does not retry
the same bytes again and again.
"""

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumoscan.errors import PneumoscanError

FIELDS = ("file", "probability", "label", "in_distribution", "ood_score", "engine", "sha256", "error")
SUFFIXES = (".csv", ".jsonl")


@dataclass(frozen=True)
class Row:
    """One written row: the film it is about, the hash of the bytes it was scored from, and its line as written
    (kept verbatim, so merging and rewriting never re-format a number)."""

    file: str
    sha256: str
    line: str


@dataclass(frozen=True)
class RowFormat:
    """How rows are spelled: `csv` (a header line, then one line per film) or `jsonl` (one JSON object per line)."""

    name: str

    @property
    def header(self) -> str | None:
        return ",".join(FIELDS) + "\n" if self.name == "csv" else None

    def encode(self, fields: dict[str, Any]) -> Row:
        """A row from the named fields (missing ones are empty); non-finite numbers become empty/null."""
        values = {name: _finite(fields.get(name)) for name in FIELDS}
        if self.name == "jsonl":
            line = json.dumps(values, allow_nan=False) + "\n"
        else:
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerow([_csv_cell(values[name]) for name in FIELDS])
            line = buffer.getvalue()
        return Row(str(values["file"]), str(values["sha256"]), line)

    def decode(self, line: str) -> Row | None:
        """The row a complete line holds (None for the CSV header); a line that is not a row raises."""
        if self.name == "csv":
            if line == self.header:
                return None
            cells = next(csv.reader([line]), [])
            values = dict(zip(FIELDS, cells, strict=False)) if len(cells) == len(FIELDS) else None
        else:
            try:
                values = json.loads(line)
            except ValueError:
                values = None
        if not isinstance(values, dict) or not values.get("file") or not values.get("sha256"):
            raise ValueError("not a row written by `pneumoscan predict --out`")
        return Row(str(values["file"]), str(values["sha256"]), line)


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def row_format(path: Path) -> RowFormat:
    """The format a file's suffix names (.csv or .jsonl); anything else is one clear error."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise PneumoscanError(f"--out {path}: give a file ending in .csv or .jsonl (the rows' format)")
    return RowFormat(suffix.removeprefix("."))


def complete_text(path: Path) -> str:
    """The file's text up to its last newline: a torn last line (a write cut short) is left out."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return ""
    except OSError as error:
        raise PneumoscanError(f"{path}: cannot read it ({error.strerror or error})") from None
    return data[: data.rfind(b"\n") + 1].decode("utf-8", "replace")


def read_rows(path: Path, fmt: RowFormat) -> list[Row]:
    """The whole rows in a rows file (none when it does not exist), in file order."""
    rows = []
    for number, line in enumerate(complete_text(path).splitlines(keepends=True), start=1):
        try:
            row = fmt.decode(line)
        except ValueError as error:
            raise PneumoscanError(f"{path} line {number}: {error}; give another --out file") from None
        if row is not None:
            rows.append(row)
    return rows


def cut_torn_tail(path: Path) -> None:
    """Truncate a file after its last newline (a crash mid-write leaves at most one torn last line)."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    kept = data.rfind(b"\n") + 1
    if kept != len(data):
        with path.open("r+b") as handle:
            handle.truncate(kept)
            handle.flush()
            os.fsync(handle.fileno())


def append_lines(path: Path, text: str) -> None:
    """Append whole lines in one write and fsync them before returning: what is reported done is on disk."""
    if not text:
        return
    with Path(path).open("a", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
