from pathlib import Path

import pytest

from conftest import quiet, write_image
from pneumoscan.config import TrainConfig
from pneumoscan.data.registry import open_source
from pneumoscan.data.sources import FolderSource
from pneumoscan.errors import LayoutError, PneumoscanError
from pneumoscan.pipeline.train import run_training


def _make_split(root: Path, normal: str = "NORMAL", pneumonia: str = "PNEUMONIA") -> None:
    write_image(root / normal / "IM-0001-0001.jpeg")
    write_image(root / normal / "IM-0002-0001.png")
    write_image(root / pneumonia / "person1_bacteria_1.jpeg")
    write_image(root / pneumonia / "person1_virus_2.jpg")
    (root / normal / "notes.txt").write_text("not an image")
    (root / normal / ".DS_Store").write_bytes(b"\0")


def test_dataset_root_with_splits(tmp_path: Path) -> None:
    for split in ("train", "test"):
        _make_split(tmp_path / split)
    source = FolderSource(tmp_path)
    assert sorted(source.splits) == ["test", "train"]
    records = source.splits["train"]
    assert [r.label for r in records] == [0, 0, 1, 1]  # .txt and hidden files ignored
    assert {r.patient for r in records} == {"IM-0001", "IM-0002", "person1"}
    assert source.split("test")[0] == "test"


def test_bare_split_and_case_insensitive_names(tmp_path: Path) -> None:
    _make_split(tmp_path, normal="normal", pneumonia="Pneumonia")
    source = open_source(str(tmp_path))
    name, records = source.split("test")  # a bare folder serves whichever split is asked for
    assert name == "all" and len(records) == 4


def test_kaggle_zip_nesting_is_followed(tmp_path: Path) -> None:
    _make_split(tmp_path / "chest_xray" / "train")
    assert list(FolderSource(tmp_path).splits) == ["train"]


def test_missing_split_is_named(tmp_path: Path) -> None:
    _make_split(tmp_path / "train")
    with pytest.raises(LayoutError, match="no 'test' split"):
        FolderSource(tmp_path).split("test")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, "no such folder"),
        (lambda root: (root / "a").mkdir(parents=True) or (root / "b").mkdir(), "expected NORMAL/ and PNEUMONIA/"),
        (lambda root: write_image(root / "NORMAL" / "IM-0001-0001.jpeg"), "missing class folder PNEUMONIA/"),
        (lambda root: (write_image(root / "NORMAL" / "a.png"), (root / "PNEUMONIA").mkdir()), "no images"),
    ],
    ids=["missing", "not-layout", "missing-class", "empty-class"],
)
def test_layout_errors(tmp_path: Path, setup, message: str) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(LayoutError, match=message):
        FolderSource(root)


def test_a_layout_error_stops_training_before_anything_is_written(tmp_path: Path) -> None:
    write_image(tmp_path / "NORMAL" / "a.png")
    (tmp_path / "PNEUMONIA").mkdir()
    with pytest.raises(LayoutError, match="PNEUMONIA: no images"):
        run_training(TrainConfig(data=str(tmp_path)), tmp_path / "run", quiet())
    assert not (tmp_path / "run").exists()  # nothing written for a failed start


def test_training_needs_data(tmp_path: Path) -> None:
    with pytest.raises(PneumoscanError, match="no training data: give --data or set `data` in the recipe"):
        run_training(TrainConfig(), tmp_path / "run", quiet())
