"""Smoke test on a small subset of the real Kermany training split, when ../shared is present."""

from collections import Counter
from pathlib import Path

import pytest

from conftest import SHARED_DATA, quiet
from pneumoscan.config import EvalConfig, TrainConfig
from pneumoscan.data.sources import FolderSource
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.models.bundle import load_bundle
from pneumoscan.pipeline.train import run_training

pytestmark = pytest.mark.skipif(
    not (SHARED_DATA / "train").is_dir(),
    reason=f"real chest X-ray data not found at {SHARED_DATA} (CI provides it; see docs/data.md for the download)",
)


def test_real_train_split_layout_patients_and_metadata() -> None:
    records = FolderSource(SHARED_DATA).splits["train"]
    assert len(records) == 5216
    assert sum(r.label for r in records) == 3875
    patients = {r.patient for r in records}
    assert 1500 < len(patients) < len(records)  # several films per patient: image-level splits would leak
    assert Counter((r.label, r.subgroup, r.series) for r in records) == {
        (1, "bacteria", "person"): 2530, (1, "virus", "person"): 1345,
        (0, "normal", "NORMAL2"): 744, (0, "normal", "IM"): 597}


def test_train_and_evaluate_on_a_real_subset(tmp_path: Path) -> None:
    subset = tmp_path / "subset"
    for class_name in ("NORMAL", "PNEUMONIA"):
        files = sorted((SHARED_DATA / "train" / class_name).iterdir())[:60]
        target = subset / "train" / class_name
        target.mkdir(parents=True)
        for file in files:
            (target / file.name).symlink_to(file)
    config = TrainConfig(data=str(subset), image_size=48, epochs=1, batch_size=16, val_fraction=0.25,
                         precision="fp32")
    result = run_training(config, tmp_path / "run", quiet())
    assert result.validation.metrics.n_images == load_bundle(tmp_path / "run").manifest.training.data.val.images  # type: ignore[union-attr]
    evaluation = evaluate(load_bundle(tmp_path / "run"), str(subset / "train"), tmp_path / "eval",
                          EvalConfig(bootstrap=100, weeks=2), quiet())
    assert evaluation.data.counts.images == 120 and evaluation.data.split == "all"
    assert {row.group for row in evaluation.subgroups or []} >= {"normal", "bacteria"}
    assert (tmp_path / "eval" / "metrics.json").is_file()
