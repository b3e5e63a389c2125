"""File names and values that used to break the CLI's output (issue 11): rich markup in names, names that are not
UTF-8, and non-finite numbers in JSON."""

import json
import os
from pathlib import Path

import pytest

from conftest import TinyRun, write_image
from pneumoscan.cli.main import main


def test_names_with_markup_are_printed_as_they_are(tiny_run: TinyRun, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    write_image(tmp_path / "scan [left].png", value=120, size=(40, 40))
    monkeypatch.chdir(tmp_path)  # a short name, so the table does not wrap it
    assert main(["predict", "--model", str(tiny_run.out_dir), "scan [left].png"]) == 0
    assert "scan [left].png" in capsys.readouterr().out
    missing = tmp_path / "[/x]missing.png"
    assert main(["predict", "--model", str(tiny_run.out_dir), str(missing)]) == 2
    err = capsys.readouterr().err
    assert "[/x]missing.png: no such file" in err and "Traceback" not in err and "MarkupError" not in err


def test_json_output_is_valid_for_names_that_are_not_utf8(tiny_run: TinyRun, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    good = write_image(tmp_path / "good.png", value=120, size=(40, 40))
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/film\xff.png"))
    odd.write_bytes(good.read_bytes())
    assert main(["predict", "--model", str(tiny_run.out_dir), str(odd), "--format", "json"]) == 0
    output = capsys.readouterr().out
    output.encode("utf-8")  # valid UTF-8 (a lone surrogate would raise here)
    (row,) = json.loads(output)
    assert row["file"].endswith("film\\xff.png")
    assert main(["predict", "--model", str(tiny_run.out_dir), str(odd), "--format", "csv"]) == 0
    assert "film\\xff.png" in capsys.readouterr().out


def test_non_finite_numbers_become_null_in_json(tiny_run: TinyRun, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import pneumoscan.serving.predict as predict_module

    original = predict_module.predict_images

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        return [predict_module.Prediction(p.file, float("nan"), p.label, p.in_distribution, float("inf"))
                for p in original(*args, **kwargs)]

    monkeypatch.setattr(predict_module, "predict_images", broken)
    film = write_image(tmp_path / "film.png", value=120, size=(40, 40))
    assert main(["predict", "--model", str(tiny_run.out_dir), str(film), "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)  # strict JSON parsers accept it
    assert row["probability"] is None and row["ood_score"] is None
