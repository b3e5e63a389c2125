from statistics import NormalDist

import numpy as np
import pytest

from pneumoscan.evaluation.uncertainty import (
    METRIC_NAMES,
    bootstrap_ci,
    expected_calibration_error,
    metrics_with_ci,
    screening_metrics,
)


def _sample(rng: np.random.Generator, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    labels = (rng.random(n) < 0.6).astype(int)
    probabilities = np.clip(np.where(labels == 1, rng.normal(0.7, 0.2, n), rng.normal(0.3, 0.2, n)), 0, 1)
    return labels, probabilities


def test_point_metrics_match_a_hand_count() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    probabilities = np.array([0.9, 0.8, 0.2, 0.1, 0.6, 0.3, 0.4, 0.7])  # tp 3, fn 1, tn 3, fp 1
    m = screening_metrics(labels, probabilities, 0.5)
    assert m["sensitivity"] == m["specificity"] == m["ppv"] == m["npv"] == m["accuracy"] == 0.75
    assert m["balanced_accuracy"] == 0.75 and m["f1"] == 0.75
    assert m["brier"] == pytest.approx(np.mean((probabilities - labels) ** 2))
    only_pneumonia = screening_metrics(np.ones(3), np.array([0.2, 0.8, 0.9]), 0.5)
    assert only_pneumonia["specificity"] is None and only_pneumonia["roc_auc"] is None


def test_every_metric_gets_an_interval_around_its_estimate_and_the_seed_repeats_it() -> None:
    labels, probabilities = _sample(np.random.default_rng(0))
    result = metrics_with_ci(labels, probabilities, 0.5, resamples=300, seed=1)
    assert set(result["ci95"]) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        low, high = result["ci95"][name]
        assert low <= result["point"][name] <= high and high - low < 0.2, name
    assert result["ci95"] == metrics_with_ci(labels, probabilities, 0.5, resamples=300, seed=1)["ci95"]


def test_intervals_cover_the_true_sensitivity_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(2)
    # the population's sensitivity at 0.5 for N(0.7, 0.2) pneumonia scores (clipping does not move the cut)
    true_sensitivity = 1 - NormalDist(0.7, 0.2).cdf(0.5)
    covered = 0
    for _ in range(100):
        labels, probabilities = _sample(rng, n=300)
        seed = int(rng.integers(1 << 30))
        low, high = bootstrap_ci(labels, probabilities, 0.5, resamples=200, seed=seed)["sensitivity"]
        covered += low <= true_sensitivity <= high
    assert 88 <= covered <= 100


def test_more_data_gives_narrower_intervals() -> None:
    rng = np.random.default_rng(3)
    widths = []
    for n in (100, 1600):
        labels, probabilities = _sample(rng, n)
        low, high = bootstrap_ci(labels, probabilities, 0.5, resamples=300)["accuracy"]
        widths.append(high - low)
    assert widths[1] < widths[0] / 2.5  # ~1/sqrt(16) = 1/4 in theory


def test_calibration_error_separates_calibrated_from_overconfident_scores() -> None:
    rng = np.random.default_rng(4)
    probabilities = rng.random(20000)
    labels = (rng.random(20000) < probabilities).astype(int)
    assert expected_calibration_error(labels, probabilities) < 0.02
    overconfident = np.where(probabilities > 0.5, 0.99, 0.01)
    assert expected_calibration_error(labels, overconfident) > 0.2


def test_the_fast_resampling_agrees_with_scikit_learn_on_each_resample() -> None:
    from pneumoscan.evaluation.uncertainty import _resampled_metrics

    rng = np.random.default_rng(5)
    labels, probabilities = _sample(rng, 120)
    probabilities = np.round(probabilities, 1)  # many ties, the hard case for AUC and PR AUC
    counts = rng.multinomial(120, np.full(120, 1 / 120), size=4)
    fast = _resampled_metrics(labels, probabilities, 0.5, counts)
    for row in range(4):
        index = np.repeat(np.arange(120), counts[row])
        slow = screening_metrics(labels[index], probabilities[index], 0.5)
        for name in METRIC_NAMES:
            assert fast[name][row] == pytest.approx(slow[name], abs=1e-9), name
