"""The model shipped inside the package: `--model default` works with no training and no network."""

import json
from pathlib import Path

import pytest

from conftest import write_image
from pneumoscan.cli.main import main
from pneumoscan.models.bundle import load_bundle, resolve_bundle


def test_shipped_bundle_is_small_and_documents_itself() -> None:
    folder = resolve_bundle("default")
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 10 * 1024 * 1024
    bundle = load_bundle("default")
    manifest = bundle.manifest
    assert manifest.training["command"].startswith("pneumoscan train")
    assert manifest.training["data"]["val"]["patients"] > 100  # validated on a patient-grouped split
    assert manifest.validation_metrics["roc_auc"] >= 0.99
    assert manifest.threshold == manifest.validation_metrics["threshold"]


def test_predict_with_the_default_model_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    image = write_image(tmp_path / "xray.jpeg", value=120, size=(300, 260), mode="RGB")
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(image), "--format", "json"]) == 0  # --model defaults to the shipped one
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and 0.0 <= rows[0]["probability"] <= 1.0


def test_predict_with_test_time_augmentation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = write_image(tmp_path / "xray.png", value=100, size=(200, 200))
    assert main(["predict", str(image), "--tta", "--format", "json"]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)[0]["probability"] <= 1.0


def test_shipped_model_carries_its_guard_and_drift_reference_and_flags_a_blank_image(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = load_bundle("default")
    assert bundle.ood is not None and bundle.reference is not None
    assert len(bundle.reference["scores"]) == bundle.manifest.training["data"]["val"]["images"]
    blank = write_image(tmp_path / "blank.png", value=255, size=(400, 400))
    assert main(["predict", str(blank), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["in_distribution"] is False
