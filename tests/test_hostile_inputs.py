"""Hostile inputs through every surface: each corpus file (tests/hostile.py) is decoded as intended or refused with
an ImageDecodeError of the right kind and reason, by decode_grayscale, the decoded-image cache, predict (skipped and
counted; --strict: exit 2, one line), the web service (a 4xx, never a 500), evaluate, train and adapt; every bad
option value is one line and exit 2; every tampered bundle is refused in one line.

The case count (files x surfaces + options + bundles) is pinned by test_the_corpus_has_at_least_200_cases.
"""

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TinyRun, write_image
from hostile import CASES, REGULAR, SIZE, Case, folder, is_root, write_corpus
from pneumoscan.cli.main import main
from pneumoscan.data.cache import ImageCache
from pneumoscan.data.decode import IMAGE_SUFFIXES, decode_grayscale, read_file_bytes
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.errors import BundleError, ImageDecodeError, InputWarning
from pneumoscan.models import create_model
from pneumoscan.models.bundle import MANIFEST_FILE, WEIGHTS_FILE, Manifest, load_bundle, save_bundle

ROOT_SKIP = pytest.mark.skipif(is_root(), reason="running as root, which reads any file: no permission-denied case")


def _params(cases: tuple[Case, ...]) -> list[object]:
    return [pytest.param(case, id=case.name, marks=[ROOT_SKIP] if case.needs_non_root else []) for case in cases]


REFUSED = tuple(case for case in CASES if not case.accepted and case.write is not folder)
SPECIAL = tuple(case for case in CASES if case.special)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("hostile") / "corpus")


def _one_line_error(err: str) -> str:
    """The error of a refused command: one line and no traceback (a transient progress bar, drawn on a
    non-terminal, may leave an empty line before it)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _expect(case: Case, path: Path, decode: Callable[[], np.ndarray]) -> None:
    """Accepted: a (SIZE, SIZE) uint8 image with the intended content; refused: the kind and reason, naming the file."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if case.accepted:
            pixels = decode()
            assert pixels.shape == (SIZE, SIZE) and pixels.dtype == np.uint8
            assert case.check is None or case.check(pixels), pixels
        else:
            with pytest.raises(ImageDecodeError) as info:
                decode()
            assert (info.value.kind, str(info.value)) == (case.kind, f"{path}: {info.value.reason}")
            assert case.reason in info.value.reason, info.value.reason
    warned = [str(w.message) for w in caught if issubclass(w.category, InputWarning)]
    assert bool(warned) == case.warns, warned
    assert all(message.startswith(f"{path}: ") for message in warned)


# --- the decoder, the cache, and the byte reader the cache uses ---------------------------------------------------


@pytest.mark.parametrize("case", _params(CASES))
def test_decode_grayscale(case: Case, corpus: dict[str, Path]) -> None:
    _expect(case, corpus[case.name], lambda: decode_grayscale(corpus[case.name], SIZE))


@pytest.mark.parametrize("case", _params(CASES))
def test_the_decoded_image_cache_gives_the_same_answers(case: Case, corpus: dict[str, Path], tmp_path: Path) -> None:
    if case.write is folder:  # the cache reads files: a folder is refused as one, not searched
        with pytest.raises(ImageDecodeError, match="is a folder"):
            ImageCache(tmp_path).decode(corpus[case.name], SIZE)
        return
    _expect(case, corpus[case.name], lambda: ImageCache(tmp_path).decode(corpus[case.name], SIZE))


@pytest.mark.parametrize("case", _params(SPECIAL))
def test_read_file_bytes_says_why_a_path_is_not_a_readable_file(case: Case, corpus: dict[str, Path]) -> None:
    """What the cache and any other byte reader call; a FIFO must fail at once, not wait for a writer."""
    with pytest.raises(ImageDecodeError) as info:
        read_file_bytes(corpus[case.name])
    assert case.reason in info.value.reason and str(info.value).startswith(f"{corpus[case.name]}: ")


def test_a_permission_error_is_reported_as_such_even_when_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads anything, so the chmod case is skipped there; the mapping of the error is pinned here instead."""
    path = write_image(tmp_path / "locked.png")

    def refuse(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("pneumoscan.data.decode.os.open", refuse)
    for read in (read_file_bytes, lambda p: decode_grayscale(p, SIZE)):
        with pytest.raises(ImageDecodeError, match=re.escape(f"{path}: permission denied")):
            read(path)


def test_a_file_over_the_byte_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 2000)
    with pytest.raises(ImageDecodeError, match="file of 2,008 bytes is over the limit of 1,000 bytes") as info:
        read_file_bytes(path, max_bytes=1000)
    assert info.value.kind == "too_large"


def test_an_undecodable_dicom_logs_no_traceback(corpus: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    """pydicom logs its decoder's exception; a service that logs (serve) would print a traceback per bad upload."""
    with caplog.at_level(logging.DEBUG), pytest.raises(ImageDecodeError, match="transfer syntax JPEG 2000"):
        decode_grayscale(corpus["dicom_jpeg2000_syntax.dcm"], SIZE)
    assert [record.getMessage() for record in caplog.records if record.name.startswith("pydicom")] == []


# --- predict: one run over the whole corpus, then --strict per refused file --------------------------------------


@pytest.fixture(scope="module")
def predicted(tiny_run: TinyRun, corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[int, list[dict[str, object]], str]:
    good = write_image(tmp_path_factory.mktemp("good") / "good.png", value=90, size=(64, 64))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        code = main(["predict", "--model", str(tiny_run.out_dir), str(good), *map(str, corpus.values()),
                     "--format", "json"])
    return code, json.loads(out.getvalue()), err.getvalue()


@pytest.mark.parametrize("case", _params(CASES))
def test_predict_scores_good_files_and_reports_each_bad_one(
        case: Case, corpus: dict[str, Path], predicted: tuple[int, list[dict[str, object]], str]) -> None:
    code, rows, err = predicted
    scored = {row["file"] for row in rows}
    path = corpus[case.name]
    assert code == 0 and "Traceback" not in err and rows[0]["file"].endswith("good.png")  # type: ignore[union-attr]
    if case.write is folder:  # a folder on the command line is searched
        assert str(path / "inside.png") in scored and str(path) not in scored
    elif case.accepted:
        assert str(path) in scored
    else:
        assert str(path) not in scored
        (line,) = [line for line in err.splitlines() if line.startswith(f"warning: skipped {path}: ")]
        assert case.reason in line


@pytest.mark.parametrize("case", _params(REFUSED))
def test_predict_strict_stops_at_a_bad_file_with_one_line(case: Case, corpus: dict[str, Path], tiny_run: TinyRun,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    good = corpus["gray.jpeg"]
    assert main(["predict", "--model", str(tiny_run.out_dir), str(good), str(corpus[case.name]), "--strict"]) == 2
    err = capsys.readouterr().err
    line = _one_line_error(err)
    assert line.startswith(f"error: {corpus[case.name]}: ") and case.reason in line, err


# --- the web service: a status that says what was wrong, never a 500 --------------------------------------------


@pytest.fixture(scope="module")
def client(tiny_run: TinyRun):  # type: ignore[no-untyped-def]
    testclient = pytest.importorskip("fastapi.testclient")
    from pneumoscan.serving.service import create_app

    with testclient.TestClient(create_app(load_bundle(tiny_run.out_dir), name="tiny")) as test_client:
        yield test_client


@pytest.mark.parametrize("case", _params(REGULAR))
def test_the_service_answers_each_upload_with_the_right_status(client, case: Case,  # type: ignore[no-untyped-def]
                                                               corpus: dict[str, Path]) -> None:
    from pneumoscan.serving.service import STATUS_FOR_KIND

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        response = client.post("/v1/predict", files=[("files", (case.name, corpus[case.name].read_bytes(),
                                                                "application/octet-stream"))])
    if case.accepted:
        assert response.status_code == 200, response.text
        (result,) = response.json()["results"]
        assert 0.0 <= result["probability"] <= 1.0 and bool(result.get("warnings")) == case.warns
    else:
        assert response.status_code == STATUS_FOR_KIND[case.kind], response.text  # type: ignore[index]
        assert response.json()["detail"].startswith(f"{case.name}: ") and case.reason in response.json()["detail"]


# --- evaluate, train and adapt with the corpus mixed into their data: skipped and counted, --strict fails ---------


def _listed(case: Case) -> bool:
    """A folder search (FolderSource, predict's folder walk) picks it up: an image suffix, not a folder."""
    return Path(case.name).suffix.lower() in IMAGE_SUFFIXES and case.write is not folder


@pytest.fixture(scope="module")
def mixed(tiny_synthetic: Path, corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny synthetic dataset with every corpus file that has an image suffix added to
    train/PNEUMONIA and test/NORMAL (FIFOs and broken links included: a class-folder listing keeps them, so they
    are skipped with their reason rather than dropped from the counts)."""
    root = tmp_path_factory.mktemp("mixed") / "data"
    shutil.copytree(tiny_synthetic, root)
    for split, label in (("train", "PNEUMONIA"), ("test", "NORMAL")):
        write_corpus(root / split / label, MIXED)
    return root


MIXED = tuple(case for case in CASES if _listed(case) and not case.needs_non_root)
REFUSED_LISTED = tuple(case for case in MIXED if not case.accepted)
ACCEPTED_LISTED = tuple(case for case in MIXED if case.accepted)
TRAIN_FLAGS = ["--image-size", "32", "--batch-size", "8", "--val-fraction", "0.25", "--precision", "fp32",
               "--device", "cpu", "--epochs", "1", "--no-cache"]


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        code = main(argv)
    return code, err.getvalue()


def _assert_skipped_and_counted(err: str, folder_: Path, total: int) -> None:
    for case in REFUSED_LISTED:
        (line,) = [line for line in err.splitlines() if line.startswith(f"warning: skipped {folder_ / case.name}: ")]
        assert case.reason in line
    # one count per decoded split (train decodes its training and validation sides apart): they add up
    counts = [tuple(map(int, found)) for found in re.findall(r"skipped (\d+) unreadable file\(s\) of (\d+)", err)]
    assert tuple(map(sum, zip(*counts, strict=True))) == (len(REFUSED_LISTED), total), counts
    assert "Traceback" not in err


def test_evaluate_skips_and_counts_the_bad_files(mixed: Path, tiny_run: TinyRun, tmp_path: Path) -> None:
    code, err = _run(["evaluate", "--model", str(tiny_run.out_dir), "--data", str(mixed), "--bootstrap", "100",
                      "--weeks", "1", "--no-cache", "--out", str(tmp_path / "eval")])
    assert code == 0, err
    test_images = 16 + len(ACCEPTED_LISTED)
    _assert_skipped_and_counted(err, mixed / "test" / "NORMAL", test_images + len(REFUSED_LISTED))
    assert len(list(csv.DictReader((tmp_path / "eval" / "predictions.csv").open()))) == test_images
    code, err = _run(["evaluate", "--model", str(tiny_run.out_dir), "--data", str(mixed), "--strict", "--no-cache",
                      "--out", str(tmp_path / "strict")])
    assert code == 2 and _one_line_error(err)


def test_train_skips_and_counts_the_bad_files(mixed: Path, tmp_path: Path) -> None:
    code, err = _run(["train", "--data", str(mixed), *TRAIN_FLAGS, "--out", str(tmp_path / "run")])
    assert code == 0, err
    _assert_skipped_and_counted(err, mixed / "train" / "PNEUMONIA",
                                48 + len(ACCEPTED_LISTED) + len(REFUSED_LISTED))
    code, err = _run(["train", "--data", str(mixed), *TRAIN_FLAGS, "--strict", "--out", str(tmp_path / "strict")])
    assert code == 2 and _one_line_error(err)


def test_adapt_skips_and_counts_the_bad_files(tiny_run: TinyRun, tiny_synthetic: Path, corpus: dict[str, Path],
                                              tmp_path: Path) -> None:
    """adapt walks a flat folder like predict does, so the special files (FIFO, links) are reported too."""
    site = tmp_path / "site"
    shutil.copytree(tiny_synthetic / "test" / "NORMAL", site)
    shutil.copytree(tiny_synthetic / "test" / "PNEUMONIA", site, dirs_exist_ok=True)
    cases = tuple(case for case in CASES if _listed(case) and not case.needs_non_root)
    write_corpus(site, cases)
    refused = [case for case in cases if not case.accepted]
    code, err = _run(["adapt", "--model", str(tiny_run.out_dir), "--data", str(site), "--min-images", "16",
                      "--max-ood-share", "1", "--out", str(tmp_path / "adapted")])
    assert code == 0, err
    for case in refused:
        assert any(line.startswith(f"warning: skipped {site / case.name}: ") and case.reason in line
                   for line in err.splitlines()), case.name
    images = 16 + len([case for case in cases if case.accepted])
    assert f"skipped {len(refused)} unreadable file(s) of {images + len(refused)}" in err
    adapted = load_bundle(tmp_path / "adapted").manifest.adaptation
    assert adapted is not None and (adapted.images, adapted.skipped) == (images, len(refused))


# --- option values: one line, exit 2, nothing written --------------------------------------------------------------

M, D, OUT = "{model}", "{data}", "{out}"
OPTIONS = [
    ("train-image-size-1", ["train", "--data", D, "--image-size", "1", "--out", OUT], "image_size must be at least 32"),
    ("train-image-size-0", ["train", "--data", D, "--image-size", "0", "--out", OUT], "image_size must be at least 32"),
    ("train-image-size-huge", ["train", "--data", D, "--image-size", "100000", "--out", OUT],
     "image_size must be at most 2048"),
    ("train-image-size-text", ["train", "--data", D, "--image-size", "big", "--out", OUT], "image_size = 'big'"),
    ("train-lr-negative", ["train", "--data", D, "--lr", "-1", "--out", OUT], "lr must be a positive number"),
    ("train-lr-nan", ["train", "--data", D, "--lr", "nan", "--out", OUT], "lr must be a positive number, got nan"),
    ("train-lr-inf", ["train", "--data", D, "--lr", "inf", "--out", OUT], "lr must be a positive number, got inf"),
    ("train-lr-zero", ["train", "--data", D, "--set", "lr=0", "--out", OUT], "lr must be a positive number"),
    ("train-epochs-0", ["train", "--data", D, "--epochs", "0", "--out", OUT], "epochs must be at least 1"),
    ("train-epochs-fraction", ["train", "--data", D, "--set", "epochs=1.5", "--out", OUT], "epochs = '1.5'"),
    ("train-batch-size-1", ["train", "--data", D, "--batch-size", "1", "--out", OUT], "batch_size at least 2"),
    ("train-batch-size-negative", ["train", "--data", D, "--batch-size", "-8", "--out", OUT], "batch_size at least 2"),
    ("train-val-fraction-0", ["train", "--data", D, "--val-fraction", "0", "--out", OUT], "val_fraction must be in"),
    ("train-val-fraction-nan", ["train", "--data", D, "--val-fraction", "nan", "--out", OUT], "val_fraction"),
    ("train-train-fraction-0", ["train", "--data", D, "--train-fraction", "0", "--out", OUT], "train_fraction"),
    ("train-momentum-nan", ["train", "--data", D, "--momentum", "nan", "--out", OUT], "momentum and weight_decay"),
    ("train-weight-decay-inf", ["train", "--data", D, "--weight-decay", "inf", "--out", OUT], "momentum and weight"),
    ("train-mixup-inf", ["train", "--data", D, "--mixup", "inf", "--out", OUT], "mixup a finite number"),
    ("train-mixup-nan", ["train", "--data", D, "--mixup", "nan", "--out", OUT], "mixup a finite number"),
    ("train-erasing-2", ["train", "--data", D, "--erasing", "2", "--out", OUT], "erasing must be in [0, 1]"),
    ("train-label-smoothing-half", ["train", "--data", D, "--label-smoothing", "0.5", "--out", OUT], "label_smoothing"),
    ("train-border-crop-nan", ["train", "--data", D, "--border-crop", "nan", "--out", OUT], "border_crop"),
    ("train-lr-factor-1", ["train", "--data", D, "--lr-factor", "1", "--out", OUT], "lr_factor must be in (0, 1)"),
    ("train-patience-0", ["train", "--data", D, "--patience", "0", "--out", OUT], "patience must be at least 1"),
    ("train-lr-patience-negative", ["train", "--data", D, "--lr-patience", "-1", "--out", OUT], "lr_patience"),
    ("train-seed-negative", ["train", "--data", D, "--seed", "-1", "--out", OUT], "seed must be between 0 and"),
    ("train-seed-huge", ["train", "--data", D, "--seed", str(2**64), "--out", OUT], "seed must be between 0 and"),
    ("train-split-seed-negative", ["train", "--data", D, "--split-seed", "-1", "--out", OUT], "split_seed must be"),
    ("train-threshold-2", ["train", "--data", D, "--threshold-policy", "fixed:2", "--out", OUT], "threshold policy"),
    ("train-threshold-nan", ["train", "--data", D, "--threshold-policy", "sensitivity:nan", "--out", OUT],
     "threshold policy"),
    ("train-optimizer", ["train", "--data", D, "--set", "optimizer=rmsprop", "--out", OUT], "choose from adam, sgd"),
    ("evaluate-bootstrap-0", ["evaluate", "--model", M, "--data", D, "--bootstrap", "0", "--out", OUT],
     "bootstrap needs at least 100 resamples, got 0"),
    ("evaluate-bootstrap-negative", ["evaluate", "--model", M, "--data", D, "--bootstrap", "-5", "--out", OUT],
     "bootstrap needs at least 100"),
    ("evaluate-bootstrap-huge", ["evaluate", "--model", M, "--data", D, "--bootstrap", "100000000000", "--out", OUT],
     "bootstrap takes at most 100,000 resamples"),
    ("evaluate-weeks-0", ["evaluate", "--model", M, "--data", D, "--weeks", "0", "--out", OUT], "weeks must be"),
    ("evaluate-weeks-negative", ["evaluate", "--model", M, "--data", D, "--weeks", "-2", "--out", OUT], "weeks must"),
    ("evaluate-seed-negative", ["evaluate", "--model", M, "--data", D, "--seed", "-1", "--out", OUT], "seed must be"),
    ("monitor-weeks-0", ["monitor", "--model", M, "--data", D, "--weeks", "0", "--out", OUT], "--weeks must"),
    ("monitor-weeks-negative", ["monitor", "--model", M, "--data", D, "--weeks", "-3", "--out", OUT], "--weeks"),
    ("monitor-alpha-0", ["monitor", "--model", M, "--data", D, "--alpha", "0", "--out", OUT], "--alpha in (0, 1)"),
    ("monitor-alpha-1", ["monitor", "--model", M, "--data", D, "--alpha", "1", "--out", OUT], "--alpha in (0, 1)"),
    ("monitor-alpha-nan", ["monitor", "--model", M, "--data", D, "--alpha", "nan", "--out", OUT], "--alpha in (0, 1)"),
    ("monitor-drift-from-0", ["monitor", "--model", M, "--data", D, "--drift-from-week", "0", "--out", OUT],
     "--drift-from-week must be a week from 1 to --weeks (4), got 0"),
    ("monitor-drift-from-past", ["monitor", "--model", M, "--data", D, "--weeks", "4", "--drift-from-week", "5",
                                 "--out", OUT], "--drift-from-week must be a week from 1 to --weeks (4), got 5"),
    ("monitor-seed-negative", ["monitor", "--model", M, "--data", D, "--seed", "-1", "--out", OUT], "--seed must be"),
    ("monitor-drift-nan", ["monitor", "--model", M, "--data", D, "--drift", "noise:nan", "--out", OUT],
     "perturbation 'noise:nan'"),
    ("monitor-prevalence-2", ["monitor", "--model", M, "--data", D, "--drift", "prevalence:2", "--out", OUT],
     "prevalence must lie strictly between 0 and 1"),
    ("export-n-images-0", ["export", "--model", M, "--to", "onnx", "--data", D, "--n-images", "0", "--out",
                           OUT + ".onnx"], "--n-images must be at least 16, got 0"),
    ("export-n-images-negative", ["export", "--model", M, "--to", "onnx", "--data", D, "--n-images", "-5",
                                  "--out", OUT + ".onnx"], "--n-images must be at least 16, got -5"),
    ("serve-port-0", ["serve", "--model", M, "--port", "0"], "--port must be 1-65535"),
    ("serve-port-huge", ["serve", "--model", M, "--port", "70000"], "--port must be 1-65535"),
    ("serve-upload-0", ["serve", "--model", M, "--max-upload-mb", "0"], "--max-upload-mb a positive number"),
    ("serve-upload-inf", ["serve", "--model", M, "--max-upload-mb", "inf"], "--max-upload-mb a positive number"),
    ("serve-upload-nan", ["serve", "--model", M, "--max-upload-mb", "nan"], "--max-upload-mb a positive number"),
    ("serve-queue-0", ["serve", "--model", M, "--max-queue", "0"], "--max-queue at least 1"),
    ("serve-wait-negative", ["serve", "--model", M, "--max-wait-ms", "-1"], "--max-wait-ms a number at least 0"),
    ("serve-wait-inf", ["serve", "--model", M, "--max-wait-ms", "inf"], "--max-wait-ms a number at least 0"),
    ("synth-n-per-class-0", ["synth", "--out", OUT, "--n-per-class", "0"], "n_per_class must be at least 4, got 0"),
    ("synth-n-per-class-negative", ["synth", "--out", OUT, "--n-per-class", "-1"], "n_per_class must be at least 4"),
    ("synth-size-1", ["synth", "--out", OUT, "--size", "1"], "size must be at least 32 pixels, got 1"),
    ("synth-size-0", ["synth", "--out", OUT, "--size", "0"], "size must be at least 32 pixels, got 0"),
    ("synth-size-huge", ["synth", "--out", OUT, "--size", "100000"], "--size must be 32 to 2048 pixels"),
    ("synth-difficulty-nan", ["synth", "--out", OUT, "--difficulty", "nan"], "difficulty must be in [0, 1]"),
    ("synth-seed-negative", ["synth", "--out", OUT, "--seed", "-1"], "--seed must be between 0 and"),
    ("demo-n-per-class-0", ["demo", "--out", OUT, "--n-per-class", "0"], "the demo needs"),
    ("demo-seeds-0", ["demo", "--out", OUT, "--seeds", "0"], "the demo needs"),
    ("demo-size-1", ["demo", "--out", OUT, "--size", "1"], "the demo needs"),
    ("demo-image-size-1", ["demo", "--out", OUT, "--image-size", "1"], "image_size must be at least 32"),
    ("demo-epochs-0", ["demo", "--out", OUT, "--epochs", "0"], "epochs must be at least 1"),
    ("adapt-tent-steps-negative", ["adapt", "--model", M, "--data", D, "--tent-steps", "-1", "--out", OUT],
     "tent_steps must be at least 0"),
    ("adapt-tent-lr-nan", ["adapt", "--model", M, "--data", D, "--tent-lr", "nan", "--out", OUT], "tent_lr a positive"),
    ("adapt-min-images-0", ["adapt", "--model", M, "--data", D, "--min-images", "0", "--out", OUT],
     "min_images must be at least 16"),
    ("adapt-max-ood-share-0", ["adapt", "--model", M, "--data", D, "--max-ood-share", "0", "--out", OUT],
     "max_ood_share must be in (0, 1]"),
    ("adapt-seed-negative", ["adapt", "--model", M, "--data", D, "--seed", "-1", "--out", OUT], "seed must be between"),
    ("study-seeds-0", ["study", "--data", D, "--vary", "lr=0.1,0.2", "--seeds", "0", "--out", OUT],
     "--seeds must be at least 1"),
    ("study-vary-lr-negative", ["study", "--data", D, "--vary", "lr=-1,0.2", "--out", OUT], "lr must be a positive"),
    ("compare-seeds-negative", ["compare", "--data", D, "--seeds", "-1", "--out", OUT], "--seeds must be at least 1"),
    ("pretrain-temperature-0", ["pretrain", "--data", D, "--temperature", "0", "--out", OUT], "temperature in (0, 10]"),
    ("pretrain-lr-nan", ["pretrain", "--data", D, "--lr", "nan", "--out", OUT], "lr must be positive"),
    ("pretrain-image-size-1", ["pretrain", "--data", D, "--image-size", "1", "--out", OUT],
     "image_size must be at least 32"),
    ("pretrain-projection-dim-0", ["pretrain", "--data", D, "--projection-dim", "0", "--out", OUT], "projection_dim"),
]


@pytest.mark.parametrize(("argv", "message"), [pytest.param(a, m, id=i) for i, a, m in OPTIONS])
def test_a_bad_option_value_is_one_line_and_exit_2(argv: list[str], message: str, tiny_run: TinyRun,
                                                   tiny_synthetic: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    filled = [a.format(model=tiny_run.out_dir, data=tiny_synthetic, out=out) for a in argv]
    assert main(filled) == 2
    err = capsys.readouterr().err
    assert message in _one_line_error(err)
    assert not out.exists() and not Path(f"{out}.onnx").exists()  # refused before anything is written


# --- tampered and broken bundles: refused in one line, nothing executed ---------------------------------------------


class _Marker:
    """Unpickling this calls open(marker, 'w'): had a loader unpickled it, the marker file would exist."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def _evil_pickle(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"features.0.0.weight": _Marker(marker)}, buffer)
    return buffer.getvalue()


def _rehash(bundle: Path) -> None:
    """Make the manifest's checksum match the (tampered) weights, so the loader itself is tested."""
    payload = json.loads((bundle / MANIFEST_FILE).read_text())
    payload["weights_sha256"] = hashlib.sha256((bundle / WEIGHTS_FILE).read_bytes()).hexdigest()
    (bundle / MANIFEST_FILE).write_text(json.dumps(payload))


def _manifest(**changes: object) -> Callable[[Path, Path], None]:
    def edit(bundle: Path, outside: Path) -> None:
        payload = json.loads((bundle / MANIFEST_FILE).read_text())
        payload.update({k: str(v).format(outside=outside) if isinstance(v, str) else v for k, v in changes.items()})
        (bundle / MANIFEST_FILE).write_text(json.dumps(payload))
    return edit


def _weights(content: Callable[[Path], bytes], rehash: bool = True) -> Callable[[Path, Path], None]:
    def edit(bundle: Path, outside: Path) -> None:
        (bundle / WEIGHTS_FILE).write_bytes(content(outside / "marker"))
        if rehash:
            _rehash(bundle)
    return edit


def _replace(make: Callable[[Path, Path], None], name: str = WEIGHTS_FILE) -> Callable[[Path, Path], None]:
    def edit(bundle: Path, outside: Path) -> None:
        (bundle / name).unlink()
        make(bundle / name, outside)
    return edit


def _link_out(name: str) -> Callable[[Path, Path], None]:
    """The file moved out of the bundle and linked back: same bytes, so the checksum still matches."""
    def make(path: Path, outside: Path) -> None:
        moved = outside / f"moved-{name}"
        shutil.move(str(path), moved)
        path.symlink_to(moved)
    return make


def _link_in(bundle: Path, outside: Path) -> None:
    (bundle / WEIGHTS_FILE).rename(bundle / "weights.bin")
    (bundle / WEIGHTS_FILE).symlink_to("weights.bin")


BUNDLES: list[tuple[str, Callable[[Path, Path], None], str | None]] = [
    ("pickle-as-weights", _weights(_evil_pickle), "weights do not fit architecture 'baseline'"),
    ("pickle-as-weights-old-hash", _weights(_evil_pickle, rehash=False),
     "weights do not match the manifest's checksum"),
    ("empty-weights", _weights(lambda _: b""), "weights do not fit architecture"),
    ("truncated-weights", lambda b, o: ((b / WEIGHTS_FILE).write_bytes((b / WEIGHTS_FILE).read_bytes()[:500]),
                                        _rehash(b)), "weights do not fit architecture"),
    ("huge-header", _weights(lambda _: (2**62).to_bytes(8, "little") + b"{}"), "header too large"),
    ("lying-header", _weights(lambda _: (96).to_bytes(8, "little") + json.dumps(
        {"features.0.0.weight": {"dtype": "F32", "shape": [10**11], "data_offsets": [0, 4 * 10**11]}}
    ).encode()[:96].ljust(96)), "weights do not fit architecture"),
    ("weights-link-outside", lambda b, o: _link_out(WEIGHTS_FILE)(b / WEIGHTS_FILE, o), "outside the bundle folder"),
    ("manifest-link-outside", lambda b, o: _link_out(MANIFEST_FILE)(b / MANIFEST_FILE, o), "outside the bundle folder"),
    ("weights-fifo", _replace(lambda p, o: os.mkfifo(p)), "model.safetensors is missing"),
    ("weights-link-to-dev-zero", _replace(lambda p, o: p.symlink_to("/dev/zero")), "model.safetensors is missing"),
    ("weights-folder", _replace(lambda p, o: p.mkdir()), "model.safetensors is missing"),
    ("manifest-empty", lambda b, o: (b / MANIFEST_FILE).write_text(""), "unreadable manifest"),
    ("manifest-list", lambda b, o: (b / MANIFEST_FILE).write_text("[]"), "unreadable manifest"),
    ("manifest-not-utf8", lambda b, o: (b / MANIFEST_FILE).write_bytes(b"\xff\xfe{}"), "unreadable manifest"),
    ("manifest-deeply-nested", lambda b, o: (b / MANIFEST_FILE).write_text("[" * 100_000 + "]" * 100_000),
     "unreadable manifest (RecursionError"),
    ("manifest-huge-input", _manifest(input_size=10**9), "is not a model input"),
    ("manifest-tiny-input", _manifest(input_size=16), "image_size 16 is too small (at least 32 px)"),
    ("manifest-zero-channels", _manifest(channels=0), "is not a model input"),
    ("manifest-one-class", _manifest(class_names=["NORMAL"]), "are not two distinct names"),
    ("manifest-same-classes", _manifest(class_names=["A", "A"]), "are not two distinct names"),
    ("manifest-class-names-not-text", _manifest(class_names=[["A"], {"B": 1}]), "are not two distinct names"),
    ("manifest-unknown-arch", _manifest(arch="os.system"), "cannot build architecture 'os.system'"),
    ("manifest-arch-kwargs", _manifest(arch_kwargs={"__import__": "os"}), "cannot build architecture 'baseline'"),
    ("manifest-names-outside-weights", _manifest(weights="../{outside}/marker.pt", weights_file="{outside}/marker.pt",
                                                 guard="/etc/passwd"), None),
    ("weights-link-inside", _link_in, None),
]


@pytest.fixture(scope="module")
def base_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_bundle(tmp_path_factory.mktemp("bundles") / "base", create_model("baseline", image_size=32).eval(),
                       Manifest(arch="baseline", preprocess=Preprocess(image_size=32)))


@pytest.mark.parametrize(("tamper", "message"), [pytest.param(t, m, id=i) for i, t, m in BUNDLES])
def test_a_tampered_bundle_is_refused_in_one_line(tamper: Callable[[Path, Path], None], message: str | None,
                                                  base_bundle: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bundle, outside = tmp_path / "bundle", tmp_path / "outside"
    shutil.copytree(base_bundle, bundle)
    outside.mkdir()
    (outside / "marker.pt").write_bytes(_evil_pickle(outside / "marker"))
    tamper(bundle, outside)
    image = write_image(tmp_path / "x.png")
    code = main(["predict", "--model", str(bundle), str(image)])
    err = capsys.readouterr().err
    assert not (outside / "marker").exists()  # no pickle was ever unpickled
    if message is None:  # the manifest names no files: extra keys are ignored, and the bundle's own weights load
        assert code == 0, err
        x = torch.randn(1, 1, 32, 32)
        assert torch.equal(load_bundle(bundle).model(x), load_bundle(base_bundle).model(x))
        return
    assert code == 2 and message in _one_line_error(err)
    with pytest.raises(BundleError):
        load_bundle(bundle)


def test_a_symlinked_bundle_folder_loads(base_bundle: Path, tmp_path: Path) -> None:
    """Only links that leave the bundle are refused: a link to the whole folder is the folder."""
    (tmp_path / "alias").symlink_to(base_bundle, target_is_directory=True)
    assert load_bundle(tmp_path / "alias").manifest.arch == "baseline"


# --- the bar --------------------------------------------------------------------------------------------------------


def test_the_corpus_has_at_least_200_cases() -> None:
    """Issue 11: at least 200 hostile cases across predict, evaluate, train, bundles and options."""
    files = len(CASES)
    counted = {
        "decode": files, "cache": files, "read_file_bytes": len(SPECIAL), "predict": files, "predict --strict":
        len(REFUSED), "service": len(REGULAR), "evaluate": 1, "train": 1, "adapt": 1, "options": len(OPTIONS),
        "bundles": len(BUNDLES),
    }
    assert files >= 100 and sum(counted.values()) >= 200, counted


def test_a_fifo_or_broken_link_in_a_class_folder_is_skipped_with_its_reason_not_dropped(tiny_synthetic: Path,
                                                                                         tmp_path: Path) -> None:
    from conftest import quiet
    from pneumoscan.data.loading import load_split

    root = tmp_path / "data"
    shutil.copytree(tiny_synthetic / "train", root)
    os.mkfifo(root / "NORMAL" / "pipe.png")
    (root / "PNEUMONIA" / "gone.png").symlink_to(tmp_path / "missing.png")
    images, _ = load_split(str(root), "train", 32, console=quiet())
    reasons = {Path(f.source).name: f.reason for f in images.skipped}
    assert set(reasons) == {"pipe.png", "gone.png"}
    assert "FIFO" in reasons["pipe.png"] and "broken link" in reasons["gone.png"]
