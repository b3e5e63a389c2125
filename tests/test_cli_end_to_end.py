"""The whole pipeline through the CLI on a tiny synthetic dataset (seconds, not minutes)."""

import csv
import json
from pathlib import Path

import pytest

from conftest import write_image
from pneumoscan.cli.main import main

TINY = ["--image-size", "32", "--batch-size", "16", "--epochs", "2", "--val-fraction", "0.25"]
FIGURES = ["confusion_matrix.png", "roc_curve.png", "sample_predictions.png", "temporal_performance.png",
           "architecture.png"]


@pytest.fixture(scope="module")
def trained_run(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run") / "adam"
    assert main(["train", "--data", str(tiny_synthetic), "--optimizer", "adam", *TINY, "--out", str(run)]) == 0
    return run


def test_train_writes_a_complete_run_folder(trained_run: Path) -> None:
    for name in ("model.safetensors", "model.json", "metrics.csv", "config.json", "split.csv",
                 "training_curves.png", "architecture.png"):
        assert (trained_run / name).is_file(), name
    history = list(csv.DictReader((trained_run / "metrics.csv").open()))
    assert [row["epoch"] for row in history] == ["1", "2"]
    assert set(history[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr", "seconds"}
    split = list(csv.DictReader((trained_run / "split.csv").open()))
    train_patients = {r["patient"] for r in split if r["split"] == "train"}
    val_patients = {r["patient"] for r in split if r["split"] == "val"}
    assert val_patients and not train_patients & val_patients
    manifest = json.loads((trained_run / "model.json").read_text())
    assert manifest["input_size"] == 32 and manifest["training"]["data"]["val"]["patients"] == len(val_patients)
    assert manifest["training"]["command"].startswith("pneumoscan train")


def test_training_is_deterministic_for_a_seed(tiny_synthetic: Path, trained_run: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert main(["train", "--data", str(tiny_synthetic), "--optimizer", "adam", *TINY, "--out", str(again)]) == 0

    def losses(run: Path) -> list[tuple[str, str]]:
        return [(r["train_loss"], r["val_loss"]) for r in csv.DictReader((run / "metrics.csv").open())]

    assert losses(again) == losses(trained_run)


def test_evaluate_writes_metrics_and_every_figure(trained_run: Path, tiny_synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(trained_run), "--data", str(tiny_synthetic), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "threshold", "n_images"):
        assert key in metrics
    assert metrics["n_images"] == 16 and metrics["data"]["split"] == "test"
    assert len(metrics["weeks"]) == 4
    report = json.loads((out / "classification_report.json").read_text())
    assert {"NORMAL", "PNEUMONIA", "accuracy"} <= set(report)
    assert "precision" in (out / "classification_report.txt").read_text()
    for name in FIGURES:
        assert (out / name).stat().st_size > 5_000, name


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_predict_on_files_and_folders(trained_run: Path, tiny_synthetic: Path, fmt: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    folder = tiny_synthetic / "test" / "PNEUMONIA"
    one_file = next((tiny_synthetic / "test" / "NORMAL").iterdir())
    assert main(["predict", "--model", str(trained_run), str(one_file), str(folder), "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        rows = json.loads(out)
        assert len(rows) == 9 and all(0.0 <= r["probability"] <= 1.0 for r in rows)
        assert {r["label"] for r in rows} <= {"NORMAL", "PNEUMONIA"}
    elif fmt == "csv":
        rows = list(csv.DictReader(out.splitlines()))
        assert len(rows) == 9 and rows[0]["file"] == str(one_file)
    else:
        assert "P(pneumonia)" in out


def test_predict_skips_a_corrupt_file_or_fails_in_strict_mode(trained_run: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    good = write_image(tmp_path / "good.png", size=(64, 64))
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    assert main(["predict", "--model", str(trained_run), str(good), str(bad), "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 1 and "bad.jpeg" in captured.err
    assert main(["predict", "--model", str(trained_run), str(good), str(bad), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "bad.jpeg" in err and "Traceback" not in err


def test_user_mistakes_exit_2_without_traceback(trained_run: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--model", str(tmp_path), str(tmp_path)]) == 2
    assert main(["predict", "--model", str(trained_run), str(tmp_path / "missing.png")]) == 2
    assert main(["evaluate", "--model", str(trained_run), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not a model bundle" in err and "missing.png: no such file" in err and "Traceback" not in err


def test_compare_reports_mean_and_spread_per_optimizer(tiny_synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    args = ["compare", "--data", str(tiny_synthetic), "--optimizers", "adam", "sgd", "--seeds", "2",
            *TINY, "--epochs", "1", "--out", str(out)]
    assert main(args) == 0
    study = json.loads((out / "compare.json").read_text())
    assert set(study["summary"]) == {"adam", "sgd"}
    assert set(study["summary"]["adam"]["accuracy"]) == {"mean", "sd"}
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs == ["adam-seed0", "adam-seed1", "sgd-seed0", "sgd-seed1"]
    split_files = {(out / r / "split.csv").read_text() for r in runs}
    assert len(split_files) == 1  # every run saw the identical split
    assert (out / "training_curves.png").stat().st_size > 10_000


def test_synth_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", "--out", str(tmp_path), "--n-per-class", "4", "--size", "32"]) == 0
    assert main(["synth", "--out", str(tmp_path), "--n-per-class", "4", "--size", "32"]) == 2
    assert "already holds a dataset" in capsys.readouterr().err


def test_a_runs_validation_split_can_be_rescored_from_its_csv(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "val"
    assert main(["evaluate", "--model", str(trained_run), "--data", str(trained_run / "split.csv"),
                 "--split", "val", "--out", str(out)]) == 0
    rescored = json.loads((out / "metrics.json").read_text())
    recorded = json.loads((trained_run / "model.json").read_text())["validation_metrics"]
    assert rescored["n_images"] == recorded["n_images"]
    assert rescored["accuracy"] == pytest.approx(recorded["accuracy"])
    assert rescored["roc_auc"] == pytest.approx(recorded["roc_auc"])


def test_demo_runs_the_whole_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-per-class", "24", "--epochs", "1", "--seeds", "1"]) == 0
    assert (out / "data" / "synthetic.json").is_file()
    assert (out / "compare" / "compare.json").is_file() and (out / "compare" / "training_curves.png").is_file()
    for run in ("adam-seed0", "sgd-seed0"):
        assert (out / "evaluation" / run / "metrics.json").is_file()
        for name in FIGURES:
            assert (out / "evaluation" / run / name).is_file(), name
    assert (out / "temporal_performance.png").is_file()
    assert "best model (lowest validation loss)" in capsys.readouterr().err
    # a second run reuses the data; a different size is refused rather than mixed in
    assert main(["demo", "--out", str(out), "--n-per-class", "30", "--epochs", "1", "--seeds", "1"]) == 2


@pytest.mark.parametrize("mode", ["shift", "none"])
def test_augmentation_modes_train_and_are_recorded(mode: str, tiny_synthetic: Path, tmp_path: Path) -> None:
    run = tmp_path / mode
    assert main(["train", "--data", str(tiny_synthetic), *TINY, "--epochs", "1", "--augment", mode,
                 "--out", str(run)]) == 0
    augment_config = json.loads((run / "config.json").read_text())["augment"]
    assert augment_config["enabled"] is (mode != "none")
    assert (augment_config["gamma"] > 0) is (mode == "shift")
