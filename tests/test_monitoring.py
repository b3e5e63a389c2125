"""pneumoscan monitor: injected drift is flagged without labels, clean weeks are not."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumoscan.cli.main import main
from pneumoscan.errors import PneumoscanError
from pneumoscan.evaluation.monitoring import Drift, image_statistics, simulate

DATA = "synthetic:n_per_class=200,size=64,seed=5"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("monitor") / "run"
    assert main(["train", "--data", DATA, "--arch", "compact", "--image-size", "64", "--epochs", "4",
                 "--val-fraction", "0.25", "--out", str(run)]) == 0
    return run


@pytest.mark.parametrize("drift", ["exposure:0.5", "noise:0.05", "contrast:0.4", "resolution:0.6"])
def test_drifted_weeks_are_flagged_and_clean_ones_are_not(model: Path, tmp_path: Path, drift: str) -> None:
    assert main(["monitor", "--model", str(model), "--data", DATA, "--weeks", "6", "--drift", drift,
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "monitoring.json").read_text())
    flagged = [row["week"] for row in result["weeks"] if row["flagged"]]
    assert flagged == [4, 5, 6], (drift, [row["drift_p_value"] for row in result["weeks"]])
    assert (tmp_path / "monitoring.png").stat().st_size > 10_000


def test_without_drift_no_week_is_flagged(model: Path, tmp_path: Path) -> None:
    assert main(["monitor", "--model", str(model), "--data", DATA, "--weeks", "6", "--out", str(tmp_path)]) == 0
    assert not any(row["flagged"] for row in json.loads((tmp_path / "monitoring.json").read_text())["weeks"])


def test_prevalence_drift_resamples_the_drifted_weeks_only() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(600) < 0.5).astype(int)
    images = torch.randint(0, 256, (600, 1, 16, 16), dtype=torch.uint8)
    reference = {**image_statistics(images[:200]), "scores": rng.random(200)}
    result = simulate(images, labels, lambda pixels: np.full(len(pixels), 0.5), 0.5, reference, weeks=6,
                      drifts=[Drift.parse("prevalence:0.1")], drift_from=4, resamples=20)
    prevalences = [row["prevalence"] for row in result["weeks"]]
    assert all(0.3 < p < 0.7 for p in prevalences[:3]) and all(p <= 0.12 for p in prevalences[3:])
    assert [row["drift_injected"] for row in result["weeks"]] == [False] * 3 + [True] * 3


def test_bad_drift_options_are_clear_errors(model: Path, tmp_path: Path) -> None:
    for text in ("prevalence:1.5", "sunshine:1", "noise:x"):
        with pytest.raises(PneumoscanError):
            Drift.parse(text)
    assert main(["monitor", "--model", str(model), "--data", DATA, "--drift", "glare:2", "--out",
                 str(tmp_path / "m")]) == 2
    assert not (tmp_path / "m").exists()
