"""Smoke test on a small subset of the real Kermany training split, when ../shared is present."""

from pathlib import Path

import pytest

from conftest import SHARED_DATA
from pneumoscan.cli.main import main
from pneumoscan.data.sources import FolderSource

pytestmark = pytest.mark.skipif(
    not (SHARED_DATA / "train").is_dir(),
    reason=f"real chest X-ray data not found at {SHARED_DATA} (CI provides it; see README for the download)",
)


def test_real_train_split_layout_and_patients() -> None:
    records = FolderSource(SHARED_DATA).splits["train"]
    assert len(records) == 5216
    assert sum(r.label for r in records) == 3875
    patients = {r.patient for r in records}
    assert 1500 < len(patients) < len(records)  # several films per patient: image-level splits would leak


def test_train_and_evaluate_on_a_real_subset(tmp_path: Path) -> None:
    subset = tmp_path / "subset"
    for class_name in ("NORMAL", "PNEUMONIA"):
        files = sorted((SHARED_DATA / "train" / class_name).iterdir())[:60]
        target = subset / "train" / class_name
        target.mkdir(parents=True)
        for file in files:
            (target / file.name).symlink_to(file)
    run = tmp_path / "run"
    assert main(["train", "--data", str(subset), "--image-size", "48", "--epochs", "1", "--batch-size", "16",
                 "--val-fraction", "0.25", "--out", str(run)]) == 0
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(run), "--data", str(subset / "train"), "--out", str(out)]) == 0
    assert (out / "metrics.json").is_file()
