"""Deployment monitoring: weeks of incoming images, injected drift flagged without labels, clean weeks not."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, quiet
from pneumoscan.config import TrainConfig
from pneumoscan.data.statistics import STATISTIC_NAMES, image_statistics
from pneumoscan.errors import PneumoscanError
from pneumoscan.evaluation.monitoring import REFERENCE_KEYS, Drift, simulate
from pneumoscan.metrics import screening_metrics
from pneumoscan.models.bundle import load_bundle
from pneumoscan.pipeline.monitor import MonitorRun, run_monitor
from pneumoscan.pipeline.train import run_training

DATA = "synthetic:n_per_class=200,size=64,seed=5"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch is enough: the alarm tests the images and the scores against the validation reference."""
    run = tmp_path_factory.mktemp("monitor") / "run"
    run_training(TrainConfig(data=DATA, **{**TINY, "epochs": 1, "batch_size": 32}), run, quiet())
    return run


def _monitor(model: Path, out: Path, drifts: list[Drift], drift_from: int = 4) -> MonitorRun:
    return run_monitor(load_bundle(model), DATA, "test", out, quiet(), weeks=6, drifts=drifts, drift_from=drift_from,
                       alpha=0.01, seed=0, strict=False)


@pytest.mark.parametrize("drift", ["exposure:0.5", "noise:0.05", "contrast:0.4", "resolution:0.6"])
def test_drifted_weeks_are_flagged_and_clean_ones_are_not(model: Path, tmp_path: Path, drift: str) -> None:
    run = _monitor(model, tmp_path, [Drift.parse(drift)])
    weeks = run.simulation.weeks
    flagged = [w.week for w in weeks if w.flagged]
    assert flagged == [4, 5, 6], (drift, [w.drift_p_value for w in weeks])
    assert [w.drift_injected for w in weeks] == [False] * 3 + [True] * 3
    assert run.simulation.drifted_weeks_flagged == "3 of 3" and run.simulation.clean_weeks_flagged == "0 of 3"
    written = json.loads((tmp_path / "monitoring.json").read_text())
    assert written["drifts"] == [drift] and written["drift_from_week"] == 4
    assert [w["flagged"] for w in written["weeks"]] == [False] * 3 + [True] * 3
    assert written["data"]["split"] == "test" and written["data"]["counts"]["images"] == 100
    assert (tmp_path / "monitoring.png").stat().st_size > 10_000


def test_without_drift_no_week_is_flagged(model: Path, tmp_path: Path) -> None:
    run = _monitor(model, tmp_path, [])
    assert not any(w.flagged for w in run.simulation.weeks)
    assert all(w.drift_p_value is not None and w.drift_p_value >= 0.01 for w in run.simulation.weeks)
    assert run.simulation.drift_from_week is None and run.simulation.drifts == []
    assert sum(w.n_images for w in run.simulation.weeks) == 100


def test_a_bundle_without_a_reference_cannot_be_monitored(model: Path, tmp_path: Path) -> None:
    bundle = replace(load_bundle(model), reference=None)
    with pytest.raises(PneumoscanError, match="carries no validation reference"):
        run_monitor(bundle, DATA, "test", tmp_path / "m", quiet(), weeks=6, drifts=[], drift_from=4, alpha=0.01,
                    seed=0, strict=False)
    assert not (tmp_path / "m").exists()


# --- the simulation itself (no model) -------------------------------------------------------------------------------


def _reference(images: torch.Tensor, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {**image_statistics(images), "scores": rng.random(len(images))}


def test_weeks_partition_the_set_in_a_seeded_order_and_reuse_given_scores() -> None:
    labels = np.array([0] * 50 + [1] * 50)
    probabilities = labels * 0.8 + 0.1
    images = torch.zeros(100, 1, 8, 8, dtype=torch.uint8)

    def never(pixels: torch.Tensor) -> np.ndarray:
        raise AssertionError("scores were given; nothing should be scored again")

    result = simulate(images, labels, never, 0.5, None, weeks=4, seed=0, resamples=50, probabilities=probabilities)
    assert [w.n_images for w in result.weeks] == [25, 25, 25, 25]
    assert all(w.metrics.accuracy == 1.0 for w in result.weeks)
    assert all(0 < w.prevalence < 1 for w in result.weeks)  # shuffled arrival, not folder order
    assert sum(w.prevalence * w.n_images for w in result.weeks) == pytest.approx(50)
    assert result.test is None and all(w.drift_p_value is None and not w.flagged for w in result.weeks)
    again = simulate(images, labels, never, 0.5, None, weeks=4, seed=0, resamples=50, probabilities=probabilities)
    other = simulate(images, labels, never, 0.5, None, weeks=4, seed=1, resamples=50, probabilities=probabilities)
    assert again == result and [w.prevalence for w in other.weeks] != [w.prevalence for w in result.weeks]


def test_week_metrics_are_those_of_the_weeks_images() -> None:
    rng = np.random.default_rng(3)
    labels = (rng.random(60) < 0.5).astype(int)
    scores = rng.random(60)
    images = torch.randint(0, 256, (60, 1, 8, 8), dtype=torch.uint8)
    seen: list[np.ndarray] = []

    def score(pixels: torch.Tensor) -> np.ndarray:
        index = [int(np.flatnonzero((images.float() / 255.0 == p).flatten(1).all(1))[0]) for p in pixels]
        seen.append(np.array(index))
        return scores[index]

    result = simulate(images, labels, score, 0.4, None, weeks=3, seed=2, resamples=50)
    assert sorted(np.concatenate(seen).tolist()) == list(range(60))
    for week, index in zip(result.weeks, seen, strict=True):
        assert week.metrics == screening_metrics(labels[index], scores[index], 0.4)
        assert week.mean_probability == pytest.approx(scores[index].mean())
        assert set(week.ci95) == {"accuracy", "sensitivity", "specificity"}


def test_prevalence_drift_resamples_the_drifted_weeks_only() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(600) < 0.5).astype(int)
    images = torch.randint(0, 256, (600, 1, 16, 16), dtype=torch.uint8)
    result = simulate(images, labels, lambda pixels: np.full(len(pixels), 0.5), 0.5, _reference(images[:200], rng),
                      weeks=6, drifts=[Drift.parse("prevalence:0.1")], drift_from=4, resamples=20)
    prevalences = [w.prevalence for w in result.weeks]
    assert all(0.3 < p < 0.7 for p in prevalences[:3]) and all(p <= 0.12 for p in prevalences[3:])
    assert [w.drift_injected for w in result.weeks] == [False] * 3 + [True] * 3
    assert result.drifts == ["prevalence:0.1"] and result.drift_from_week == 4
    with pytest.raises(PneumoscanError, match="needs images of both classes"):
        simulate(images, np.ones(600, dtype=int), lambda p: np.full(len(p), 0.5), 0.5, None, weeks=6,
                 drifts=[Drift.parse("prevalence:0.1")], drift_from=4, resamples=20)


def test_the_drift_test_compares_each_statistic_and_the_scores_with_the_reference() -> None:
    rng = np.random.default_rng(1)
    images = torch.randint(60, 200, (300, 1, 16, 16), dtype=torch.uint8)
    labels = (rng.random(300) < 0.5).astype(int)
    reference = _reference(images[:150], rng)
    result = simulate(images[150:], labels[150:], lambda pixels: rng.random(len(pixels)), 0.5, reference, weeks=3,
                      drifts=[Drift.parse("exposure:1.0")], drift_from=2, resamples=20)
    assert REFERENCE_KEYS == (*STATISTIC_NAMES, "scores")
    for week in result.weeks:
        assert set(week.ks_statistic) == set(REFERENCE_KEYS)  # type: ignore[arg-type]
    assert result.weeks[1].ks_statistic["intensity_mean"] > 0.9 > result.weeks[0].ks_statistic["intensity_mean"]  # type: ignore[index]
    assert [w.flagged for w in result.weeks] == [False, True, True]


def test_simulation_refuses_impossible_requests() -> None:
    images, labels = torch.zeros(5, 1, 8, 8, dtype=torch.uint8), np.array([0, 1, 0, 1, 0])
    for weeks in (0, 6):
        with pytest.raises(PneumoscanError, match="weeks must be between 1 and the number of images"):
            simulate(images, labels, lambda p: np.zeros(len(p)), 0.5, None, weeks=weeks)
    with pytest.raises(PneumoscanError, match="the drift reference lacks scores"):
        simulate(images, labels, lambda p: np.zeros(len(p)), 0.5, image_statistics(images), weeks=2)


def test_drift_options_parse_or_fail_clearly() -> None:
    assert Drift.parse("prevalence:0.2") == Drift("prevalence", 0.2)
    assert Drift.parse("noise:0.05") == Drift("noise", 0.05) and str(Drift.parse("exposure:-0.4")) == "exposure:-0.4"
    for text, reason in (("prevalence:1.5", "strictly between 0 and 1"), ("prevalence:x", "must be a number"),
                         ("sunshine:1", "unknown perturbation"), ("noise:x", "must be a number")):
        with pytest.raises(PneumoscanError, match=reason):
            Drift.parse(text)
