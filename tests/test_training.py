"""One training run through the Python API: the loop (deterministic in float32), the run folder, the bundle."""

import csv
import json
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TinyRun, quiet
from pneumoscan.data.augment import AUGMENT_PRESETS
from pneumoscan.data.statistics import image_statistics
from pneumoscan.errors import PneumoscanError
from pneumoscan.evaluation.framing import score_framing
from pneumoscan.metrics import ThresholdPolicy, log_loss, screening_metrics
from pneumoscan.models.bundle import load_bundle, runtime_versions
from pneumoscan.models.inference import predict_with
from pneumoscan.pipeline.packaging import package, write_history
from pneumoscan.training.loop import EpochRecord, TrainedModel, train

RUN_FILES = ("model.safetensors", "model.json", "metrics.csv", "config.json", "split.csv", "training_curves.png",
             "architecture.png")
HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr", "seconds",
                   "train_clean_loss", "train_clean_acc"]


@pytest.fixture(scope="module")
def retrained(tiny_run: TinyRun) -> TrainedModel:
    """The tiny run's config trained again on the same data, by the loop alone."""
    return train(tiny_run.data, tiny_run.config, quiet())


def _without_timing(history: list[EpochRecord]) -> list[dict]:
    return [{k: v for k, v in asdict(r).items() if k != "seconds"} for r in history]


def _csv_without_timing(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(path.open())]


def test_the_run_folder_is_complete(tiny_run: TinyRun) -> None:
    for name in RUN_FILES:
        assert (tiny_run.out_dir / name).is_file(), name
    assert [f.name for f in fields(EpochRecord)] == HISTORY_COLUMNS
    rows = list(csv.DictReader((tiny_run.out_dir / "metrics.csv").open()))
    assert list(rows[0]) == HISTORY_COLUMNS and [row["epoch"] for row in rows] == ["1", "2"]
    for row, record in zip(rows, tiny_run.result.history, strict=True):
        assert float(row["val_loss"]) == record.val_loss and float(row["train_acc"]) == record.train_acc
        assert row["train_clean_loss"] == row["train_clean_acc"] == ""  # not measured in this run


def test_the_split_never_shares_a_patient_and_matches_the_recorded_counts(tiny_run: TinyRun) -> None:
    rows = list(csv.DictReader((tiny_run.out_dir / "split.csv").open()))
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "val"]
    assert not {r["patient"] for r in train_rows} & {r["patient"] for r in val_rows}
    assert [r["file"] for r in train_rows] == [r.source for r in tiny_run.data.train.records]
    assert [r["file"] for r in val_rows] == [r.source for r in tiny_run.data.val.records]
    data = load_bundle(tiny_run.out_dir).manifest.training.data  # type: ignore[union-attr]
    assert (data.train.images, data.val.images) == (len(train_rows), len(val_rows)) == (36, 12)
    assert data.val.patients == len({r["patient"] for r in val_rows})
    assert data.train.pneumonia == sum(r["label"] == "PNEUMONIA" for r in train_rows)
    assert data.validation == "25% carved from train by patient (seed 0)"


def test_the_bundle_stores_the_resolved_config_with_the_preset_name_and_versions(tiny_run: TinyRun) -> None:
    manifest = load_bundle(tiny_run.out_dir).manifest
    assert manifest.training is not None and manifest.training.config == tiny_run.config
    assert manifest.training.command == "pytest tiny run"
    assert manifest.versions == runtime_versions()
    assert {"torch", "monai", "pneumoscan"} <= set(manifest.versions)
    stored = json.loads((tiny_run.out_dir / "model.json").read_text())["training"]["config"]
    assert stored["augment"] == "none" and stored["precision"] == "fp32"
    assert stored["resolved"] == {"learning_rate": 1e-3, "bf16": False, "autocast": "none", "device": "cpu",
                                  "augmentation": asdict(AUGMENT_PRESETS["none"])}
    written = json.loads((tiny_run.out_dir / "config.json").read_text())
    assert written == {"command": "pytest tiny run", **json.loads(json.dumps(tiny_run.config.to_dict()))}
    assert (manifest.arch, manifest.preprocess.image_size) == ("baseline", 32)
    assert (manifest.training.best_epoch, manifest.training.epochs_run) == (tiny_run.result.best_epoch, 2)


def test_the_bundle_keeps_the_best_epoch_and_its_validation_record(tiny_run: TinyRun) -> None:
    bundle = load_bundle(tiny_run.out_dir)
    history = tiny_run.result.history
    best = min(history, key=lambda r: r.val_loss)
    assert tiny_run.result.best_epoch == best.epoch == bundle.manifest.training.best_epoch  # type: ignore[union-attr]
    val = tiny_run.data.val
    probabilities = predict_with(bundle.model, bundle.preprocess.normalize, val.images)
    labels = val.labels.numpy()
    # the restored weights are the best epoch's: they score validation exactly as that epoch did
    assert log_loss(labels, probabilities) == pytest.approx(best.val_loss, abs=2e-6)
    assert screening_metrics(labels, probabilities, 0.5).accuracy == pytest.approx(best.val_acc, abs=1e-6)
    validation = bundle.manifest.validation
    assert validation is not None and validation.threshold_policy == "youden"
    assert bundle.manifest.threshold == ThresholdPolicy.parse("youden").choose(labels, probabilities, 0.5)
    assert validation.metrics == screening_metrics(labels, probabilities, bundle.manifest.threshold)
    assert validation.loss == pytest.approx(best.val_loss, abs=2e-6)
    assert tiny_run.result.validation == validation
    # the framing-swap proxy of the validation films, at the stored threshold (augmentation none: nothing seen)
    assert validation.framing == score_framing(bundle.model, bundle.preprocess.normalize, val.images, labels,
                                               probabilities, bundle.manifest.threshold)
    assert validation.framing is not None and validation.framing.seen_families == []
    # the drift reference is the validation split: its image statistics and the model's scores
    assert bundle.reference is not None
    assert np.allclose(bundle.reference["scores"], probabilities, atol=1e-6)
    for name, values in image_statistics(val.images).items():
        assert np.allclose(bundle.reference[name], values, atol=1e-6), name


def test_training_is_deterministic_in_float32(tiny_run: TinyRun, retrained: TrainedModel, tmp_path: Path) -> None:
    assert _without_timing(retrained.history) == _without_timing(tiny_run.result.history)
    write_history(tmp_path / "metrics.csv", retrained.history)
    assert _csv_without_timing(tmp_path / "metrics.csv") == _csv_without_timing(tiny_run.out_dir / "metrics.csv")
    saved = load_bundle(tiny_run.out_dir).model.state_dict()
    for key, value in retrained.model.state_dict().items():
        assert torch.equal(value, saved[key]), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")
def test_training_on_a_gpu_returns_a_cpu_model_that_scores_alike(tiny_run: TinyRun) -> None:
    """Training on cuda learns (loss falls), and the returned model lives on the CPU, where bundles are saved."""
    config = replace(tiny_run.config, device="cuda", epochs=3)
    trained = train(tiny_run.data, config, quiet())
    assert all(p.device.type == "cpu" for p in trained.model.parameters())
    assert trained.history[-1].train_loss < trained.history[0].train_loss
    on_cpu = predict_with(trained.model, trained.preprocess.normalize, tiny_run.data.val.images)
    on_gpu = predict_with(trained.model.cuda(), trained.preprocess.normalize, tiny_run.data.val.images)
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-3)


def test_a_diverging_run_stops_with_a_clear_error(tiny_run: TinyRun, monkeypatch: pytest.MonkeyPatch) -> None:
    import pneumoscan.training.loop as loop

    monkeypatch.setattr(loop, "predict_with", lambda model, normalize, images: np.full(len(images), np.nan))
    with pytest.raises(PneumoscanError, match="training diverged at epoch 1 .*lower the learning rate"):
        train(tiny_run.data, replace(tiny_run.config, epochs=1), quiet())


def test_label_smoothing_moves_the_calibrated_prior(tiny_run: TinyRun) -> None:
    record = load_bundle(tiny_run.out_dir).manifest.training
    smoothed = replace(record, config=replace(record.config, label_smoothing=0.1))
    assert smoothed.calibrated_prior == pytest.approx(0.05 + 0.9 * record.calibrated_prior)


def test_another_seed_trains_differently(tiny_run: TinyRun) -> None:
    other = train(tiny_run.data, replace(tiny_run.config, seed=1, epochs=1), quiet())
    assert other.history[0].train_loss != tiny_run.result.history[0].train_loss


def test_measuring_the_train_gap_does_not_change_the_training(tiny_run: TinyRun, retrained: TrainedModel) -> None:
    measured = train(tiny_run.data, replace(tiny_run.config, measure_train_gap=True), quiet())
    for with_gap, without in zip(measured.history, tiny_run.result.history, strict=True):
        assert {k: v for k, v in asdict(with_gap).items() if not k.startswith("train_clean") and k != "seconds"} == \
            {k: v for k, v in asdict(without).items() if not k.startswith("train_clean") and k != "seconds"}
        assert with_gap.train_clean_loss is not None and with_gap.train_clean_loss > 0
        assert with_gap.train_clean_acc is not None and 0.0 <= with_gap.train_clean_acc <= 1.0
    for key, value in measured.model.state_dict().items():
        assert torch.equal(value, retrained.model.state_dict()[key]), key
    # the final epoch's clean numbers are those of the final weights on every training image, unaugmented
    if measured.best_epoch == len(measured.history):
        train_set = tiny_run.data.train
        clean = predict_with(measured.model, measured.preprocess.normalize, train_set.images)
        assert measured.history[-1].train_clean_loss == pytest.approx(log_loss(train_set.labels.numpy(), clean),
                                                                       abs=2e-6)


@pytest.mark.parametrize("policy", ["sensitivity:0.9", "fixed:0.3", "balanced"])
def test_packaging_stores_the_threshold_its_policy_chose(policy: str, tiny_run: TinyRun, retrained: TrainedModel,
                                                         tmp_path: Path) -> None:
    config = replace(tiny_run.config, threshold_policy=policy)
    result = package(retrained, tiny_run.data, config, tmp_path / "run", command="pytest")
    manifest = load_bundle(tmp_path / "run").manifest
    val = tiny_run.data.val
    probabilities = predict_with(retrained.model, retrained.preprocess.normalize, val.images)
    prior = manifest.training.calibrated_prior  # type: ignore[union-attr]
    assert prior == pytest.approx(tiny_run.data.summary.train.prevalence)
    expected = ThresholdPolicy.parse(policy).choose(val.labels.numpy(), probabilities, prior)
    assert manifest.threshold == expected == result.validation.metrics.threshold
    assert manifest.validation is not None and manifest.validation.threshold_policy == policy
    assert manifest.validation.metrics == screening_metrics(val.labels.numpy(), probabilities, expected)
    if policy == "sensitivity:0.9":
        assert manifest.validation.metrics.sensitivity >= 0.9  # type: ignore[operator]
    if policy == "balanced":
        assert manifest.threshold == prior
