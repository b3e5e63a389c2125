"""Reliability of what a run leaves behind: unreadable files recorded in every output, runs that repeat exactly
and say what they depend on, output folders checked before any work, and reruns that are never mistaken for
finished ones when interrupted."""

import csv
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import pneumoscan.atomic
from conftest import TINY, TinyRun, quiet
from pneumoscan.atomic import MIN_FREE_BYTES, check_output_dir, check_output_file
from pneumoscan.cli.main import main
from pneumoscan.config import AdaptConfig, EvalConfig, TrainConfig
from pneumoscan.data.records import Record, SkippedFile, SkippedFiles, data_fingerprint
from pneumoscan.data.synthetic import SyntheticSource, SyntheticSpec
from pneumoscan.errors import BundleError, PneumoscanError
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.models.bundle import MANIFEST_FILE, WEIGHTS_FILE, load_bundle
from pneumoscan.pipeline.adapt import adapt_bundle
from pneumoscan.pipeline.ensemble import build_ensemble
from pneumoscan.pipeline.packaging import DATA_HASH_COVERS
from pneumoscan.pipeline.train import run_training

FLAGS = ["--arch", "baseline", "--image-size", "32", "--batch-size", "8", "--val-fraction", "0.25", "--precision",
         "fp32", "--device", "cpu", "--epochs", "1"]
EMPTY, GARBAGE = ("unreadable", "empty file"), ("unsupported", "not an image")


def _corrupt(folder: Path, stem: str) -> list[Path]:
    """Two broken files in `folder`: an empty PNG (unreadable) and a JPEG holding text (unsupported)."""
    folder.mkdir(parents=True, exist_ok=True)
    empty, garbage = folder / f"{stem}-empty.png", folder / f"{stem}-garbage.jpeg"
    empty.write_bytes(b"")
    garbage.write_bytes(b"this is not an image")
    return [empty, garbage]


def _check_skipped(record: dict, files: list[Path]) -> None:
    """A skipped-files record (as written to JSON) naming exactly `files` with their kinds and reasons."""
    assert record["count"] == 2
    assert record["by_kind"] == {"unreadable": 1, "unsupported": 1}
    by_source = {Path(f["source"]).name: (f["kind"], f["reason"]) for f in record["files"]}
    assert set(by_source) == {f.name for f in files}
    for file in files:
        kind, reason = EMPTY if file.suffix == ".png" else GARBAGE
        assert by_source[file.name][0] == kind and reason in by_source[file.name][1]


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A tiny synthetic dataset with two broken files in train/ and two in test/, a flat site folder (the test
    images) with two broken files, and a run trained, evaluated, monitored and adapted on them by the CLI."""
    root = tmp_path_factory.mktemp("broken")
    data = root / "data"
    SyntheticSource(SyntheticSpec(n_per_class=24, size=64, seed=3, difficulty=0.0)).write(data)
    train_bad = _corrupt(data / "train" / "NORMAL", "train")
    test_bad = _corrupt(data / "test" / "PNEUMONIA", "test")
    site = root / "site"
    site.mkdir()
    for file in sorted((data / "test").rglob("*.png")):
        if file not in test_bad:
            shutil.copy(file, site / f"{file.parent.name}-{file.name}")
    site_bad = _corrupt(site, "site")
    run, ev, mon, ad = root / "run", root / "eval", root / "monitor", root / "adapted"
    assert main(["train", "--data", str(data), *FLAGS, "--out", str(run)]) == 0
    assert main(["evaluate", "--model", str(run), "--data", str(data), "--bootstrap", "100", "--weeks", "2",
                 "--out", str(ev)]) == 0
    assert main(["monitor", "--model", str(run), "--data", str(data), "--weeks", "2", "--out", str(mon)]) == 0
    assert main(["adapt", "--model", str(run), "--data", str(site), "--min-images", "16", "--max-ood-share", "1",
                 "--out", str(ad)]) == 0
    return {"train_bad": train_bad, "test_bad": test_bad, "site_bad": site_bad, "run": run, "eval": ev,
            "monitor": mon, "adapted": ad}


# --- skipped files --------------------------------------------------------------------------------------------


def test_training_records_its_skipped_files_in_the_manifest_and_run_json(broken: dict) -> None:
    manifest = json.loads((broken["run"] / MANIFEST_FILE).read_text())
    skipped = manifest["training"]["data"]["skipped"]
    assert set(skipped) == {"train", "val"}
    assert skipped["train"]["count"] + skipped["val"]["count"] == 2
    _check_skipped({"count": 2, "by_kind": {"unreadable": 1, "unsupported": 1},
                    "files": skipped["train"]["files"] + skipped["val"]["files"]}, broken["train_bad"])
    run = json.loads((broken["run"] / "run.json").read_text())
    _check_skipped(run["data"]["skipped_total"], broken["train_bad"])
    loaded = load_bundle(broken["run"]).manifest.training.data  # type: ignore[union-attr]
    assert loaded.skipped_total.count == 2 and loaded.skipped_total.by_kind == {"unreadable": 1, "unsupported": 1}
    split_files = {Path(row["file"]).name for row in csv.DictReader((broken["run"] / "split.csv").open())}
    assert not split_files & {f.name for f in broken["train_bad"]}  # left out of the split it trained on


def test_evaluation_records_its_skipped_files_in_every_output(broken: dict) -> None:
    ev: Path = broken["eval"]
    metrics = json.loads((ev / "metrics.json").read_text())
    _check_skipped(metrics["data"]["skipped"], broken["test_bad"])
    assert metrics["data"]["counts"]["images"] == 16  # the readable ones
    report = (ev / "report.html").read_text()
    card = (ev / "MODEL_CARD.md").read_text()
    assert "Files skipped as unreadable: 2</strong> (unreadable 1, unsupported 1)" in report
    assert "**Files of this evaluation skipped as unreadable: 2** (unreadable 1, unsupported 1)" in card
    assert "**Files of the training data (train " in card  # the bundle's own record, per split
    for file in broken["test_bad"]:
        assert file.name in report and file.name in card
    for file in broken["train_bad"]:
        assert file.name in card
    assert "empty file" in report and "empty file" in card


def test_monitoring_records_its_skipped_files(broken: dict) -> None:
    monitoring = json.loads((broken["monitor"] / "monitoring.json").read_text())
    _check_skipped(monitoring["data"]["skipped"], broken["test_bad"])


def test_adaptation_records_its_skipped_files(broken: dict) -> None:
    adaptation = json.loads((broken["adapted"] / MANIFEST_FILE).read_text())["adaptation"]
    assert adaptation["skipped"] == 2 and adaptation["images"] == 16
    _check_skipped(adaptation["skipped_files"], broken["site_bad"])
    record = load_bundle(broken["adapted"]).manifest.adaptation
    assert record is not None and record.skipped_files is not None and record.skipped_files.count == 2


def test_a_clean_run_records_that_nothing_was_skipped(tiny_run: TinyRun, tiny_evaluation: tuple) -> None:
    training = load_bundle(tiny_run.out_dir).manifest.training
    assert training is not None and training.data.skipped == {"train": SkippedFiles(), "val": SkippedFiles()}
    run = json.loads((tiny_run.out_dir / "run.json").read_text())
    assert run["data"]["skipped_total"] == {"count": 0, "by_kind": {}, "listed": 0, "files": []}
    _, out = tiny_evaluation
    assert json.loads((out / "metrics.json").read_text())["data"]["skipped"]["count"] == 0
    assert "Files skipped as unreadable: none" in (out / "report.html").read_text()
    card = (out / "MODEL_CARD.md").read_text()
    assert "Files of this evaluation skipped as unreadable: none." in card
    assert "Files of the training data (train 0, val 0) skipped as unreadable: none." in card


def test_skipped_files_list_at_most_100_but_count_all() -> None:
    many = [SkippedFile(f"f{i}.png", "empty file", "unreadable" if i % 3 else "unsupported") for i in range(250)]
    record = SkippedFiles.of(many)
    assert record.count == 250 and len(record.files) == 100 and record.files[0].source == "f0.png"
    assert record.by_kind == {"unreadable": 166, "unsupported": 84}
    assert SkippedFiles.from_dict(record.to_dict()) == record
    assert (record + SkippedFiles.of(many[:2])).count == 252
    assert str(SkippedFiles()) == "no file skipped" and str(SkippedFiles.of(many[:1])) == \
        "1 file(s) skipped (unsupported 1)"


def test_an_old_manifest_without_the_record_still_loads(tiny_run: TinyRun, tmp_path: Path) -> None:
    folder = tmp_path / "old"
    shutil.copytree(tiny_run.out_dir, folder)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    del manifest["training"]["data"]["skipped"], manifest["training"]["data"]["data_sha256"]
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    data = load_bundle(folder).manifest.training.data  # type: ignore[union-attr]
    assert data.skipped is None and data.skipped_total is None and data.data_sha256 is None  # "not recorded"


# --- reproducibility ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twice(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same tiny training (fp32) run twice, each preparing its data itself."""
    config = TrainConfig(data=str(tiny_synthetic), **{**TINY, "epochs": 1})
    root = tmp_path_factory.mktemp("twice")
    for name in ("first", "second"):
        run_training(config, root / name, quiet(), command="pytest twice")
    return root / "first", root / "second"


def _without_timings(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(path.open())]


def test_the_same_run_twice_gives_the_same_metrics_and_records_what_it_depends_on(twice: tuple[Path, Path]) -> None:
    first, second = (json.loads((run / MANIFEST_FILE).read_text()) for run in twice)
    assert first["validation"] == second["validation"] and first["threshold"] == second["threshold"]
    # the same tensors, and the same file: the bundle's weights hash repeats too
    assert first["weights_sha256"] == second["weights_sha256"]
    weights = [load_file(run / WEIGHTS_FILE) for run in twice]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    assert _without_timings(twice[0] / "metrics.csv") == _without_timings(twice[1] / "metrics.csv")
    runs = [json.loads((run / "run.json").read_text()) for run in twice]
    assert runs[0]["reproducibility"] == runs[1]["reproducibility"]
    assert runs[0]["validation"] == first["validation"]["metrics"]
    block = runs[0]["reproducibility"]
    assert block["seed"] == 0 and block["split_seed"] == 0 and block["precision"] == "fp32"
    assert block["versions"] == first["versions"] and set(block["versions"]) >= {"pneumoscan", "torch", "python"}
    assert block["code_version"] == first["training"]["code_version"]
    assert block["data_sha256_covers"] == DATA_HASH_COVERS
    digest = block["data_sha256"]
    assert len(digest) == 64 and digest == first["training"]["data"]["data_sha256"]
    # the hash is that of split.csv's rows (with each file's size): recomputable from the run folder alone
    rows = list(csv.DictReader((twice[0] / "split.csv").open()))
    by_split: dict[str, list[Record]] = {}
    for row in rows:
        by_split.setdefault(row["split"], []).append(
            Record(row["file"], int(row["label"] == "PNEUMONIA"), row["patient"]))
    assert data_fingerprint(by_split.items()) == digest


def test_the_data_hash_changes_with_a_file_its_label_or_its_split(tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"12345")
    b.write_bytes(b"123")
    records = [Record(str(a), 0, "p1"), Record(str(b), 1, "p2")]
    base = data_fingerprint([("train", records)])
    assert data_fingerprint([("train", records[::-1])]) == base  # order does not matter
    assert data_fingerprint([("train", records[:1]), ("val", records[1:])]) != base
    assert data_fingerprint([("train", [records[0], Record(str(b), 0, "p2")])]) != base
    b.write_bytes(b"1234")
    assert data_fingerprint([("train", records)]) != base
    assert data_fingerprint([("train", [Record("synthetic:1", 0, "p")])]) != data_fingerprint([])


# --- output folders checked first -----------------------------------------------------------------------------


def _commands(out: Path, model: Path, data: Path) -> dict[str, list[str]]:
    """Every command that writes, with --out (or predict's --explain, export's file) at `out`."""
    m, d, o = str(model), str(data), str(out)
    return {
        "study": ["study", "--data", d, "--vary", "optimizer=adam,sgd", "--out", o],
        "compare": ["compare", "--data", d, "--out", o],
        "evaluate": ["evaluate", "--model", m, "--data", d, "--out", o],
        "pretrain": ["pretrain", "--data", d, "--out", o],
        "ensemble": ["ensemble", m, m, "--out", o],
        "adapt": ["adapt", "--model", m, "--data", d, "--out", o],
        "monitor": ["monitor", "--model", m, "--data", d, "--out", o],
        "explain": ["explain", "--model", m, d, "--out", o],
        "demo": ["demo", "--out", o],
        "synth": ["synth", "--out", o],
        "export": ["export", "--model", m, "--to", "onnx", "--data", d, "--out", str(out / "model.onnx")],
        "predict --explain": ["predict", "--model", m, d, "--explain", o],
    }


@pytest.fixture()
def nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model or decoding an image fails the test: a refused --out must stop a command before either."""
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the output folder was checked")

    monkeypatch.setattr("pneumoscan.models.bundle.load_bundle", forbidden)
    monkeypatch.setattr("pneumoscan.data.loading.decode_each", forbidden)
    monkeypatch.setattr("pneumoscan.data.synthetic.SyntheticSource.write", forbidden)


def _usage(free: int) -> SimpleNamespace:
    """What shutil.disk_usage answers for a disk with `free` bytes left."""
    return SimpleNamespace(total=10**12, used=10**12 - free, free=free)


def _one_line_error(capsys: pytest.CaptureFixture[str], *expected: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err


@pytest.mark.parametrize("command", list(_commands(Path("o"), Path("m"), Path("d"))))
@pytest.mark.parametrize("problem", ["existing file", "parent is a file", "read-only", "disk full"])
def test_every_command_checks_its_output_before_any_work(
        command: str, problem: str, tiny_run: TinyRun, tiny_synthetic: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, nothing_runs: None, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    out, expected = {
        "existing file": (a_file, "is an existing file, not a folder"),
        "parent is a file": (a_file / "sub", "a-file"),
        "read-only": (tmp_path / "out", "is not writable"),
        "disk full": (tmp_path / "out", "MB free on its disk"),
    }[problem]
    if command == "export" and problem == "existing file":  # export writes a file: an existing folder is the mistake
        out, expected = tmp_path / "out", "is a folder; give the file to write"
        (out / "model.onnx").mkdir(parents=True)
    if problem == "read-only":
        monkeypatch.setattr(pneumoscan.atomic.os, "access", lambda *args, **kwargs: False)
    if problem == "disk full":
        monkeypatch.setattr(pneumoscan.atomic.shutil, "disk_usage", lambda path: _usage(free=10**6))
    argv = _commands(out, tiny_run.out_dir, tiny_synthetic)[command]
    assert main(argv) == 2, argv
    _one_line_error(capsys, expected)
    assert not (tmp_path / "out" / "model.onnx").is_file() and not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_really_read_only_folder_is_refused(tiny_run: TinyRun, tiny_synthetic: Path, tmp_path: Path,
                                              nothing_runs: None, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["evaluate", "--model", str(tiny_run.out_dir), "--data", str(tiny_synthetic), "--out",
                     str(locked / "eval")]) == 2
    finally:
        locked.chmod(0o755)
    _one_line_error(capsys, "is not writable")


def test_check_output_dir_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    new = tmp_path / "a" / "b"
    assert check_output_dir(new) == new and not (tmp_path / "a").exists()  # created by the job, not the check
    (tmp_path / "existing").mkdir()
    assert check_output_dir(tmp_path / "existing") == tmp_path / "existing"
    assert list((tmp_path / "existing").iterdir()) == []  # the probe file is gone
    assert check_output_file(tmp_path / "x" / "model.onnx") == tmp_path / "x" / "model.onnx"
    monkeypatch.setattr(pneumoscan.atomic.shutil, "disk_usage", lambda path: _usage(free=MIN_FREE_BYTES))
    assert check_output_dir(tmp_path / "existing") == tmp_path / "existing"  # exactly enough is enough
    with pytest.raises(PneumoscanError, match="existing: only 52 MB free on its disk; at least 54 MB are needed"):
        check_output_dir(tmp_path / "existing", min_free_bytes=MIN_FREE_BYTES + 2 * 10**6)


def test_library_entry_points_check_their_output_first(tiny_run: TinyRun, tiny_synthetic: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded before the output folder was checked")

    monkeypatch.setattr("pneumoscan.data.loading.decode_each", forbidden)
    monkeypatch.setattr("pneumoscan.pipeline.adapt.decode_each", forbidden)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    bundle = load_bundle(tiny_run.out_dir)
    with pytest.raises(PneumoscanError, match="a-file: is an existing file"):
        evaluate(bundle, str(tiny_synthetic), a_file, EvalConfig(bootstrap=100), quiet())
    with pytest.raises(PneumoscanError, match="a-file: is an existing file"):
        adapt_bundle(tiny_run.out_dir, tiny_synthetic / "test", a_file, AdaptConfig(min_images=16), quiet())
    with pytest.raises(PneumoscanError, match="a-file: is an existing file"):
        build_ensemble([tiny_run.out_dir, tiny_run.out_dir], a_file, quiet())


# --- interrupted reruns ---------------------------------------------------------------------------------------


def _interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


def _previous_bundle(tiny_run: TinyRun, folder: Path) -> Path:
    """A folder holding a finished bundle (a copy of the tiny run's), as a previous run would have left it."""
    folder.mkdir(parents=True)
    for name in (MANIFEST_FILE, WEIGHTS_FILE):
        shutil.copy(tiny_run.out_dir / name, folder / name)
    load_bundle(folder)
    return folder


def test_an_interrupted_evaluation_rerun_leaves_no_metrics_json(
        tiny_run: TinyRun, tiny_synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text('{"accuracy": 0.5}')  # a previous evaluation's
    (out / "roc_curve.png").write_bytes(b"old")  # drawn only when the data allow: must not outlive its evaluation
    monkeypatch.setattr("pneumoscan.evaluation.evaluate._draw", lambda *args: {})  # figures: slow and beside the point
    monkeypatch.setattr("pneumoscan.evaluation.evaluate.render_model_card", _interrupt)  # the step before metrics.json
    with pytest.raises(KeyboardInterrupt):
        evaluate(load_bundle(tiny_run.out_dir), str(tiny_synthetic), out, EvalConfig(bootstrap=100, weeks=2), quiet())
    assert not (out / "metrics.json").exists() and not (out / "roc_curve.png").exists()
    assert (out / "report.html").is_file()  # the rerun had got this far: metrics.json would come after it


def test_an_interrupted_adapt_rerun_never_loads_as_a_bundle(
        tiny_run: TinyRun, tiny_synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _previous_bundle(tiny_run, tmp_path / "adapted")
    monkeypatch.setattr("pneumoscan.models.bundle.save_file", _interrupt)  # while the new weights are written
    with pytest.raises(KeyboardInterrupt):
        adapt_bundle(tiny_run.out_dir, tiny_synthetic / "test", out, AdaptConfig(min_images=16, max_ood_share=1.0),
                     quiet())
    with pytest.raises(BundleError, match="model.json is missing"):
        load_bundle(out)


def test_an_interrupted_ensemble_rerun_never_loads_as_a_bundle(
        tiny_run: TinyRun, twice: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _previous_bundle(tiny_run, tmp_path / "ensemble")
    monkeypatch.setattr("pneumoscan.training.prepare.PreparedData.write_split_csv", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        build_ensemble([tiny_run.out_dir, twice[0]], out, quiet())
    with pytest.raises(BundleError, match="model.json is missing"):
        load_bundle(out)
    monkeypatch.undo()
    built = build_ensemble([tiny_run.out_dir, twice[0]], out, quiet())  # a finished rerun is a bundle again
    ensemble = json.loads((out / "ensemble.json").read_text())
    assert ensemble["skipped"] == {"train": SkippedFiles().to_dict(), "val": SkippedFiles().to_dict()}
    assert load_bundle(out).manifest.weights_sha256 == built.bundle.manifest.weights_sha256


def test_an_interrupted_side_by_side_rerun_leaves_no_old_comparison(
        tiny_run: TinyRun, tiny_synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pneumoscan.evaluation.side_by_side import evaluate_side_by_side

    out = tmp_path / "compare"
    out.mkdir()
    (out / "comparison.json").write_text('{"names": ["old"]}')  # a previous comparison's
    (out / "comparison.md").write_text("old")
    monkeypatch.setattr("pneumoscan.evaluation.side_by_side.evaluate", _interrupt)  # while evaluating the models
    bundle = load_bundle(tiny_run.out_dir)
    with pytest.raises(KeyboardInterrupt):
        evaluate_side_by_side([bundle, bundle], str(tiny_synthetic), out, EvalConfig(bootstrap=100, weeks=2), quiet())
    assert not (out / "comparison.json").exists() and not (out / "comparison.md").exists()
