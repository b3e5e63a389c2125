"""`--data labels.csv`: a table of path and label for datasets not in the folder layout (NIH, RSNA exports)."""

import csv
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import TINY, TinyRun, quiet, write_image
from pneumoscan.config import TrainConfig
from pneumoscan.data.records import Record
from pneumoscan.data.registry import open_source
from pneumoscan.data.sources import CsvSource, FolderSource
from pneumoscan.errors import LayoutError
from pneumoscan.training.prepare import prepare_data


def _write_csv(path: Path, header: list[str], rows: list[list[str]], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_paths_resolve_beside_the_csv_and_metadata_is_derived(tmp_path: Path) -> None:
    table = _write_csv(tmp_path / "export" / "labels.csv", ["path", "label"], [
        ["images/person7_virus_1.png", "PNEUMONIA"], ["images/IM-0003-0001.png", "normal"],
        ["images/00000001_000.png", "1"], [str(tmp_path / "elsewhere" / "scan.png"), "0"]])
    source = open_source(str(table))
    assert isinstance(source, CsvSource) and list(source.splits) == ["all"]
    folder = tmp_path / "export" / "images"
    assert source.splits["all"] == [
        Record(str(folder / "person7_virus_1.png"), 1, "person7", "virus", "person"),
        Record(str(folder / "IM-0003-0001.png"), 0, "IM-0003", "normal", "IM"),
        Record(str(folder / "00000001_000.png"), 1, "images/00000001_000.png", None, None),  # its own patient
        Record(str(tmp_path / "elsewhere" / "scan.png"), 0, str(tmp_path / "elsewhere" / "scan.png"), "normal", None),
    ]
    assert source.split("train")[0] == "all"  # no split column: one split, validation carved by patient


def test_column_aliases_case_and_optional_columns(tmp_path: Path) -> None:
    """RSNA-style names (patientId, Target), any case, a BOM from a spreadsheet, and the optional columns."""
    table = _write_csv(tmp_path / "rsna.csv", ["Image Path", "patientId", "Target", "Group", "Series", "Split"], [
        ["a.dcm", "p1", "0", "adult", "site A", "Train"], ["b.dcm", "p1", "1", "", "", "validation"],
        ["c.dcm", "", "1", "", "", "test"]], encoding="utf-8-sig")
    splits = CsvSource(table).splits
    assert splits == {"train": [Record(str(tmp_path / "a.dcm"), 0, "p1", "adult", "site A")],
                      "val": [Record(str(tmp_path / "b.dcm"), 1, "p1", None, None)],
                      "test": [Record(str(tmp_path / "c.dcm"), 1, "c.dcm", None, None)]}


def test_a_runs_split_csv_with_working_directory_paths_still_reads(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A run given a relative --data stores paths relative to the working directory, not to its split.csv."""
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "data" / "NORMAL" / "x.png")
    table = _write_csv(tmp_path / "runs" / "r1" / "split.csv", ["file", "patient", "label", "split"],
                       [["data/NORMAL/x.png", "x", "NORMAL", "val"]])
    assert CsvSource(table).splits["val"][0].source == "data/NORMAL/x.png"


def test_a_split_csv_derives_metadata_unless_its_columns_give_it(tmp_path: Path) -> None:
    plain = _write_csv(tmp_path / "plain.csv", ["file", "patient", "label", "split"], [
        ["/x/person3_virus_1.jpeg", "p3", "PNEUMONIA", "train"], ["/x/IM-0005-0001.jpeg", "p5", "normal", "val"]])
    source = CsvSource(plain)
    assert source.splits == {"train": [Record("/x/person3_virus_1.jpeg", 1, "p3", "virus", "person")],
                             "val": [Record("/x/IM-0005-0001.jpeg", 0, "p5", "normal", "IM")]}
    given = _write_csv(tmp_path / "given.csv", ["file", "patient", "label", "subgroup", "series", "split"], [
        ["/x/person3_virus_1.jpeg", "p3", "PNEUMONIA", "bacteria", "scanner B", "train"],
        ["/x/scan.png", "p9", "PNEUMONIA", "", "", "train"]])
    assert CsvSource(given).splits["train"] == [Record("/x/person3_virus_1.jpeg", 1, "p3", "bacteria",
                                                            "scanner B"), Record("/x/scan.png", 1, "p9", None, None)]


def test_bad_split_csvs_are_refused_naming_the_line(tmp_path: Path) -> None:
    bad_label = _write_csv(tmp_path / "bad.csv", ["file", "patient", "label", "split"],
                           [["a.png", "p", "NORMAL", "train"], ["b.png", "q", "covid", "train"]])
    with pytest.raises(LayoutError, match=r"bad.csv:3: label 'covid' is not one of NORMAL, PNEUMONIA"):
        CsvSource(bad_label)
    no_label = _write_csv(tmp_path / "cols.csv", ["file", "patient", "split"], [["a.png", "p", "train"]])
    with pytest.raises(LayoutError, match="cols.csv: no label column"):
        CsvSource(no_label)
    with pytest.raises(LayoutError, match="cannot read"):
        CsvSource(tmp_path / "missing.csv")


def test_a_runs_split_csv_reads_back_as_its_records(tiny_run: TinyRun) -> None:
    source = open_source(str(tiny_run.out_dir / "split.csv"))
    assert source.splits["train"] == tiny_run.data.train.records
    assert source.splits["val"] == tiny_run.data.val.records
    assert all(r.subgroup is not None and r.series is not None for r in source.splits["train"])


def test_a_repeated_row_is_one_record_and_a_conflicting_one_an_error(tmp_path: Path) -> None:
    boxes = _write_csv(tmp_path / "boxes.csv", ["path", "label"], [["a.png", "1"], ["a.png", "1"], ["b.png", "0"]])
    assert [r.source for r in CsvSource(boxes).splits["all"]] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    clash = _write_csv(tmp_path / "clash.csv", ["path", "label"], [["a.png", "1"], ["b.png", "0"], ["a.png", "0"]])
    with pytest.raises(LayoutError, match=r"clash.csv:4: a.png is already on line 2 with another label or split"):
        CsvSource(clash)


@pytest.mark.parametrize(("header", "rows", "message"), [
    (["path", "label"], [["a.png", "1"], ["b.png", "covid"]],
     r"bad.csv:3: label 'covid' is not one of NORMAL, PNEUMONIA \(or 0/1, any case\)"),
    (["path", "label"], [["a.png", "1"], ["", "0"]], r"bad.csv:3: empty path"),
    (["path", "label", "split"], [["a.png", "1", "dev"]], r"bad.csv:2: split 'dev' is not one of train, val, test"),
    (["image", "diagnosis"], [["a.png", "1"]], r"bad.csv: no label column \(accepted names: label, class, target; "
                                               r"found: image, diagnosis\)"),
    (["path", "file", "label"], [["a.png", "a.png", "1"]], r"bad.csv: columns 'path' and 'file' both give the path"),
    (["path", "label"], [], r"bad.csv: no rows under the header"),
])
def test_bad_csvs_are_refused_naming_the_file_and_line(tmp_path: Path, header: list[str], rows: list[list[str]],
                                                       message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        CsvSource(_write_csv(tmp_path / "bad.csv", header, rows))


def test_unreadable_csvs_are_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(LayoutError, match="empty.csv: empty file; expected a CSV with a header row"):
        CsvSource(tmp_path / "empty.csv")
    (tmp_path / "latin.csv").write_bytes("path,label\nr\xe9sum\xe9.png,1\n".encode("latin-1"))
    with pytest.raises(LayoutError, match="latin.csv: not UTF-8 text"):
        CsvSource(tmp_path / "latin.csv")
    with pytest.raises(LayoutError, match="missing.csv: cannot read"):
        open_source(str(tmp_path / "missing.csv"))


def test_training_from_a_labels_csv_matches_the_same_images_in_a_folder(tiny_synthetic: Path, tmp_path: Path) -> None:
    """The same files listed in a CSV give the same patient-grouped split and the same pixels."""
    folder = FolderSource(tiny_synthetic / "train")
    rows = [[r.source, "PNEUMONIA" if r.label else "NORMAL", r.patient] for r in folder.splits["all"]]
    table = _write_csv(tmp_path / "labels.csv", ["path", "label", "patient"], rows)
    config = TrainConfig(data=str(tiny_synthetic / "train"), **TINY)
    from_folder = prepare_data(config, quiet())
    from_csv = prepare_data(replace(config, data=str(table)), quiet())
    assert [r.source for r in from_csv.val.records] == [r.source for r in from_folder.val.records]
    assert from_csv.summary.train == from_folder.summary.train
    assert bool((from_csv.train.images == from_folder.train.images).all())
