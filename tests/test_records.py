"""Records carry their metadata from the source (patient, subtype, series); splits are summarized by counts."""

import math
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from conftest import quiet, write_image
from pneumoscan.data.loading import load_split
from pneumoscan.data.patients import file_metadata
from pneumoscan.data.records import Record, SkippedFiles, SplitCounts, SplitSummary
from pneumoscan.data.sources import FolderSource
from pneumoscan.data.synthetic import SyntheticSource, SyntheticSpec
from pneumoscan.errors import LayoutError

KERMANY = {"NORMAL": ["IM-0001-0001.jpeg", "IM-0001-0002.jpeg", "NORMAL2-IM-0372-0001.jpeg", "scan.png"],
           "PNEUMONIA": ["person1_bacteria_1.jpeg", "person1_bacteria_2.jpeg", "person2_virus_3.jpeg", "odd.png"]}


def _kermany(root: Path) -> Path:
    for class_name, names in KERMANY.items():
        for name in names:
            write_image(root / class_name / name)
    return root


def test_a_record_without_metadata() -> None:
    record = Record("a.png", 1, "a.png")
    assert (record.subgroup, record.series) == (None, None)
    with pytest.raises(FrozenInstanceError):
        record.label = 0  # type: ignore[misc]


def test_a_folder_source_fills_patient_subtype_and_series_from_file_names(tmp_path: Path) -> None:
    records = FolderSource(_kermany(tmp_path)).splits["all"]
    found = {Path(r.source).name: (r.label, r.patient, r.subgroup, r.series) for r in records}
    assert found == {
        "IM-0001-0001.jpeg": (0, "IM-0001", "normal", "IM"),
        "IM-0001-0002.jpeg": (0, "IM-0001", "normal", "IM"),
        "NORMAL2-IM-0372-0001.jpeg": (0, "NORMAL2-IM-0372", "normal", "NORMAL2"),
        "scan.png": (0, "scan.png", "normal", None),
        "person1_bacteria_1.jpeg": (1, "person1", "bacteria", "person"),
        "person1_bacteria_2.jpeg": (1, "person1", "bacteria", "person"),
        "person2_virus_3.jpeg": (1, "person2", "virus", "person"),
        "odd.png": (1, "odd.png", None, None),
    }


def test_synthetic_records_carry_kermany_style_metadata() -> None:
    source = SyntheticSource(SyntheticSpec(n_per_class=12, size=32, seed=2))
    for split, records in source.splits.items():
        for record in records:
            name = record.source.rsplit("/", 1)[1]
            assert record == Record(record.source, record.label, *file_metadata(name, record.label)), (split, name)
            assert record.series == ("IM" if record.label == 0 else "person")
            assert record.subgroup in (("normal",) if record.label == 0 else ("bacteria", "virus"))
    subtypes = {r.subgroup for r in source.splits["train"] if r.label == 1}
    assert subtypes == {"bacteria", "virus"}


def test_a_written_synthetic_dataset_reads_back_with_the_same_metadata(tiny_synthetic: Path) -> None:
    in_memory = SyntheticSource(SyntheticSpec(n_per_class=24, size=96, seed=3, difficulty=0.0))
    on_disk = FolderSource(tiny_synthetic)
    for split in ("train", "val", "test"):
        written = {Path(r.source).name: (r.label, r.patient, r.subgroup, r.series) for r in on_disk.splits[split]}
        rendered = {r.source.rsplit("/", 1)[1]: (r.label, r.patient, r.subgroup, r.series)
                    for r in in_memory.splits[split]}
        assert written == rendered, split


def test_split_counts() -> None:
    records = [Record("a", 0, "p1"), Record("b", 1, "p1"), Record("c", 1, "p2"), Record("d", 1, "p3")]
    counts = SplitCounts.of(records)
    assert counts == SplitCounts(images=4, normal=1, pneumonia=3, patients=3)
    assert counts.prevalence == 0.75
    assert str(counts) == "4 images (1 normal / 3 pneumonia, 3 patients)"
    assert SplitCounts.of([]) == SplitCounts(0, 0, 0, 0) and math.isnan(SplitCounts.of([]).prevalence)


def test_load_split_decodes_a_split_and_summarizes_it(tiny_synthetic: Path, tmp_path: Path) -> None:
    image_set, summary = load_split(str(tiny_synthetic), "val", 24, console=quiet())
    assert image_set.images.shape == (16, 1, 24, 24) and image_set.labels.tolist() == [0.0] * 8 + [1.0] * 8
    assert summary == SplitSummary(source=str(tiny_synthetic), split="val", counts=image_set.counts(),
                                   skipped=SkippedFiles())  # recorded, and none skipped
    assert image_set.counts() == SplitCounts.of(image_set.records) and summary.counts.images == 16
    bare, bare_summary = load_split(str(_kermany(tmp_path / "bare")), "test", 16, cache=False, console=quiet())
    assert bare_summary.split == "all" and len(bare) == 8  # a bare folder serves any split
    _kermany(tmp_path / "only" / "train")
    with pytest.raises(LayoutError, match="no 'test' split"):
        load_split(str(tmp_path / "only"), "test", 16, console=quiet())
