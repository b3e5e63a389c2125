"""The command line end to end on tiny synthetic data: train -> evaluate -> predict -> explain, a study and its
`compare` alias, the demo, and one-line errors with exit code 2. The library itself is tested through its
Python API in the other files; these check that the commands wire it up and report what it computed."""

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, quiet, write_image
from pneumoscan.cli.main import main
from pneumoscan.config import TrainConfig
from pneumoscan.metrics import METRIC_NAMES, screening_metrics
from pneumoscan.models.bundle import load_bundle
from pneumoscan.serving.predict import load_inputs, predict_images
from pneumoscan.serving.torch_engine import TorchEngine

FLAGS = ["--image-size", "32", "--batch-size", "8", "--val-fraction", "0.25", "--precision", "fp32",
         "--device", "cpu"]


def _table_value(text: str, name: str) -> str:
    """The value cell of `name`'s row in a rich table (│ name │ value │ ...)."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if cells and cells[0] == name:
            return cells[1]
    raise AssertionError(f"no row {name!r} in:\n{text}")


@pytest.fixture(scope="module")
def trained(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """(run folder, recipe, what `train` reported): trained from a recipe, flags and --set."""
    folder = tmp_path_factory.mktemp("cli")
    recipe = folder / "recipe.toml"
    recipe.write_text(f'data = "{tiny_synthetic}"\nepochs = 5\nthreshold_policy = "youden"\naugment = "shift"\n')
    run = folder / "run"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", "--config", str(recipe), *FLAGS, "--epochs", "3", "--set", "epochs=2", "--set",
                     "augment=none", "--out", str(run)])
    assert code == 0, err.getvalue()
    return run, str(recipe), err.getvalue()


def test_train_resolves_recipe_flags_and_set_and_reports_the_validation_metrics(
        trained: tuple[Path, str, str], tiny_synthetic: Path) -> None:
    run, recipe, train_output = trained
    manifest = load_bundle(run).manifest
    assert manifest.training is not None
    expected = TrainConfig(data=str(tiny_synthetic), threshold_policy="youden", augment="none", **TINY)
    assert manifest.training.config == expected  # recipe < flags < --set
    assert manifest.training.command == (f"pneumoscan train --config {recipe} {' '.join(FLAGS)} --epochs 3 "
                                         f"--set epochs=2 --set augment=none --out {run}")
    assert f"validation metrics (best epoch {manifest.training.best_epoch})" in train_output
    assert "train: 36 images (" in train_output and "validation: 12 images (" in train_output
    for name in METRIC_NAMES:
        value = manifest.validation.metrics.value(name)  # type: ignore[union-attr]
        assert _table_value(train_output, name) == ("n/a" if value is None else f"{value:.4f}"), name
    assert _table_value(train_output, "threshold") == f"{manifest.threshold:.4f}"


def test_evaluate_writes_metrics_that_recompute_from_its_predictions(
        trained: tuple[Path, str, str], tiny_synthetic: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    run, _, _ = trained
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(run), "--data", str(tiny_synthetic), "--bootstrap", "200",
                 "--weeks", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluation"]["bootstrap"] == 200 and metrics["evaluation"]["weeks"] == 2
    assert len(metrics["temporal"]["weeks"]) == 2 and metrics["data"]["split"] == "test"
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    labels = np.array([r["label"] == "PNEUMONIA" for r in rows], dtype=int)
    probabilities = np.array([float(r["probability"]) for r in rows])
    recomputed = screening_metrics(labels, probabilities, metrics["threshold"])
    assert metrics["confusion"] == {"tn": recomputed.confusion.tn, "fp": recomputed.confusion.fp,
                                    "fn": recomputed.confusion.fn, "tp": recomputed.confusion.tp}
    for name in METRIC_NAMES:
        assert metrics[name] == pytest.approx(recomputed.value(name), abs=1e-5), name
        value = metrics[name]
        assert _table_value(printed, name) == ("n/a" if value is None else f"{value:.4f}"), name
    assert metrics["threshold"] == load_bundle(run).manifest.threshold  # the stored one, not re-chosen
    for name in ("report.html", "MODEL_CARD.md", "classification_report.txt", "confusion_matrix.png"):
        assert (out / name).is_file(), name


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_predict_on_files_and_folders(trained: tuple[Path, str, str], tiny_synthetic: Path, fmt: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    run, _, _ = trained
    folder = tiny_synthetic / "test" / "PNEUMONIA"
    one_file = next((tiny_synthetic / "test" / "NORMAL").iterdir())
    assert main(["predict", "--model", str(run), str(one_file), str(folder), "--format", fmt]) == 0
    out = capsys.readouterr().out
    bundle = load_bundle(run)
    files, images = load_inputs(bundle.preprocess.image_size, [one_file, folder], strict=False, console=quiet())
    expected = predict_images(TorchEngine(bundle), files, images)
    if fmt == "json":
        rows = json.loads(out)
        assert [r["file"] for r in rows] == [p.file for p in expected]
        assert [r["probability"] for r in rows] == pytest.approx([p.probability for p in expected], abs=1e-6)
        assert [r["label"] for r in rows] == [p.label for p in expected]
        assert [r["in_distribution"] for r in rows] == [p.in_distribution for p in expected]
    elif fmt == "csv":
        rows = list(csv.DictReader(out.splitlines()))
        assert list(rows[0]) == ["file", "probability", "label", "in_distribution", "ood_score"]
        assert len(rows) == 9 and rows[0]["file"] == str(one_file)
        assert [float(r["probability"]) for r in rows] == pytest.approx([p.probability for p in expected], abs=1e-6)
    else:
        assert "P(pneumonia)" in out and f"{expected[0].probability:.4f}" in out


def test_predict_skips_a_corrupt_file_or_fails_in_strict_mode(trained: tuple[Path, str, str],
                                                              tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    run, _, _ = trained
    good = write_image(tmp_path / "good.png", size=(64, 64))
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    assert main(["predict", "--model", str(run), str(good), str(bad), "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 1 and "bad.jpeg" in captured.err
    assert main(["predict", "--model", str(run), str(good), str(bad), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "bad.jpeg" in err and "Traceback" not in err


def test_explain_and_predict_explain_write_one_figure_per_image(trained: tuple[Path, str, str],
                                                                tiny_synthetic: Path, tmp_path: Path) -> None:
    run, _, _ = trained
    png = next((tiny_synthetic / "test" / "PNEUMONIA").glob("*.png"))
    jpeg = tmp_path / "xray.jpeg"
    from PIL import Image

    Image.open(png).convert("RGB").save(jpeg)
    assert main(["explain", "--model", str(run), str(png), str(jpeg), "--out", str(tmp_path / "cam")]) == 0
    assert sorted(p.name for p in (tmp_path / "cam").iterdir()) == [f"{png.stem}.gradcam.png", "xray.gradcam.png"]
    assert main(["predict", "--model", str(run), str(jpeg), "--explain", str(tmp_path / "cam2"),
                 "--target-layer", "features.1"]) == 0
    assert (tmp_path / "cam2" / "xray.gradcam.png").stat().st_size > 10_000
    assert main(["explain", "--model", str(run), str(jpeg), "--out", str(tmp_path / "x"),
                 "--target-layer", "nope"]) == 2


def test_study_and_its_compare_alias_list_every_cell(tiny_synthetic: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    common = ["--data", str(tiny_synthetic), *FLAGS, "--epochs", "1", "--seeds", "1", "--out", str(out)]
    assert main(["compare", "--optimizers", "adam", "sgd", *common]) == 0
    printed = capsys.readouterr().err
    study = json.loads((out / "study.json").read_text())
    assert study["vary"] == {"optimizer": ["adam", "sgd"]} and study["seeds"] == 1
    assert study["command"].startswith("pneumoscan compare --optimizers adam sgd")
    for cell in study["cells"]:
        accuracy = cell["summary"]["accuracy"]
        assert f"{accuracy['mean']:.3f}±{accuracy['sd']:.3f}" in _table_value(printed, cell["name"])
    assert f"lowest validation loss: {out / study['best_run']}" in " ".join(printed.split())
    # the alias builds the same study: `study` with the same settings reuses both finished runs
    assert main(["study", "--vary", "optimizer=adam,sgd", *common]) == 0
    assert capsys.readouterr().err.count("reusing the finished run") == 2
    # one optimizer is a one-cell study of that optimizer
    single = tmp_path / "sgd-only"
    assert main(["compare", "--optimizers", "sgd", *common[:-1], str(single)]) == 0
    only = json.loads((single / "study.json").read_text())
    assert only["base_config"]["optimizer"] == "sgd" and len(only["cells"]) == 1


def test_demo_runs_the_whole_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    tiny = ["--n-per-class", "24", "--size", "64", "--arch", "baseline", "--image-size", "32", "--epochs", "1",
            "--seeds", "1"]
    assert main(["demo", "--out", str(out), *tiny]) == 0
    printed = capsys.readouterr().err
    assert json.loads((out / "data" / "synthetic.json").read_text())["n_per_class"] == 24
    study = json.loads((out / "study" / "study.json").read_text())
    assert [cell["name"] for cell in study["cells"]] == ["optimizer=adam", "optimizer=sgd"]
    assert study["base_config"]["precision"] == "fp32" and study["base_config"]["arch"] == "baseline"
    for run in ("adam-seed0", "sgd-seed0"):
        metrics = json.loads((out / "evaluation" / run / "metrics.json").read_text())
        assert metrics["n_images"] == 16 and metrics["data"]["split"] == "test"
        assert _table_value(printed, run) == f"{metrics['accuracy']:.4f}"
        for name in ("report.html", "MODEL_CARD.md", "roc_curve.png", "gradcam_cases.png"):
            assert (out / "evaluation" / run / name).is_file(), name
    assert (out / "temporal_performance.png").is_file()
    assert "best model (lowest validation loss)" in printed
    # the data is reused; a dataset of another size is refused rather than mixed in
    assert main(["demo", "--out", str(out), *tiny[2:], "--n-per-class", "30"]) == 2
    assert "holds a synthetic dataset made with other settings" in capsys.readouterr().err


def test_user_mistakes_exit_2_with_one_line(trained: tuple[Path, str, str], tiny_synthetic: Path,
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, recipe, _ = trained
    bad_recipe = tmp_path / "bad.toml"
    bad_recipe.write_text("epoch = 3\n")
    mistakes = [
        (["predict", "--model", str(tmp_path), str(tmp_path)], "not a model bundle"),
        (["predict", "--model", str(run), str(tmp_path / "missing.png")], "missing.png: no such file"),
        (["evaluate", "--model", str(run), "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
         "no such folder"),
        (["train", "--config", str(bad_recipe), "--out", str(tmp_path / "r")],
         f"{bad_recipe}: unknown setting(s) epoch"),
        (["train", "--config", recipe, "--set", "epochs=many", "--out", str(tmp_path / "r")], "--set: epochs = 'many'"),
        (["train", "--data", str(tiny_synthetic), "--threshold-policy", "median", "--out", str(tmp_path / "r")],
         "threshold policy 'median'"),
        (["study", "--config", recipe, "--vary", "seed=0,1", "--out", str(tmp_path / "s")], "set by --seeds"),
        (["study", "--config", recipe, "--out", str(tmp_path / "s")], "give --vary KEY=V1,V2 and/or --cell recipes"),
        (["monitor", "--model", str(run), "--data", str(tiny_synthetic), "--drift", "glare:2", "--out",
          str(tmp_path / "m")], "unknown perturbation 'glare:2'"),
        (["synth", "--out", str(tiny_synthetic), "--n-per-class", "4", "--size", "32"], "already holds a dataset"),
    ]
    for argv, message in mistakes:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
    for name in ("o", "r", "s", "m"):
        assert not (tmp_path / name).exists(), name  # nothing written for a refused command


def test_models_lists_architectures_and_sources(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    err = capsys.readouterr().err
    assert "architectures: baseline, compact, densenet121, efficientnet_b0, resnet18" in err
    assert "synthetic[:key=value,...]" in err
