"""pneumoscan.metrics.screening: point metrics, bootstrap intervals and calibration (pure numpy, fast)."""

import math
import re
import warnings
from dataclasses import asdict, fields
from statistics import NormalDist

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from pneumoscan.metrics import (
    CALIBRATION_BINS,
    METRIC_NAMES,
    BootstrapSettings,
    Confusion,
    MetricsWithCI,
    ScreeningMetrics,
    bootstrap_ci,
    classification_report_text,
    expected_calibration_error,
    log_loss,
    metrics_with_ci,
    reliability,
    screening_metrics,
)
from pneumoscan.metrics.screening import _resampled_metrics

# tp 3, fn 1, tn 3, fp 1 at 0.5; every probability in its own calibration bin
LABELS = np.array([1, 1, 1, 0, 0, 0, 0, 1])
PROBS = np.array([0.9, 0.8, 0.2, 0.1, 0.6, 0.3, 0.4, 0.7])


def _sample(rng: np.random.Generator, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    labels = (rng.random(n) < 0.6).astype(int)
    probabilities = np.clip(np.where(labels == 1, rng.normal(0.7, 0.2, n), rng.normal(0.3, 0.2, n)), 0, 1)
    return labels, probabilities


# --- names ------------------------------------------------------------------------------------------------


def test_one_name_per_metric_and_no_precision_alias() -> None:
    assert METRIC_NAMES == ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1",
                            "roc_auc", "pr_auc", "brier", "ece")
    metric_fields = {f.name for f in fields(ScreeningMetrics)} - {"threshold", "n_images", "confusion"}
    assert metric_fields == set(METRIC_NAMES)
    payload = screening_metrics(LABELS, PROBS, 0.5).to_dict()
    assert "precision" not in payload and "confusion_matrix" not in payload
    assert set(payload) == set(METRIC_NAMES) | {"threshold", "n_images", "confusion"}


def test_value_reads_a_metric_and_refuses_other_names() -> None:
    m = screening_metrics(LABELS, PROBS, 0.5)
    for name in METRIC_NAMES:
        assert m.value(name) == getattr(m, name)
    for bad in ("precision", "threshold", "n_images", "confusion"):
        with pytest.raises(KeyError) as info:
            m.value(bad)
        assert info.value.args[0] == f"unknown metric '{bad}'; known: {', '.join(METRIC_NAMES)}"


# --- point metrics ----------------------------------------------------------------------------------------


def test_point_metrics_match_a_hand_count() -> None:
    m = screening_metrics(LABELS, PROBS, 0.5)
    assert m.confusion == Confusion(tn=3, fp=1, fn=1, tp=3)
    assert m.threshold == 0.5 and isinstance(m.threshold, float)
    assert m.n_images == 8 and isinstance(m.n_images, int)
    for name in ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"):
        assert m.value(name) == pytest.approx(0.75), name
    assert m.roc_auc == pytest.approx(13 / 16)  # 13 of the 16 (pneumonia, normal) pairs ranked right
    assert m.pr_auc == pytest.approx((1 + 1 + 1 + 4 / 7) / 4)  # precision at each positive's rank
    assert m.brier == pytest.approx(1.4 / 8)
    assert m.ece == pytest.approx(2.8 / 8)  # one image per bin: the mean |p - y|


def test_asymmetric_confusion_tells_every_rate_apart() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    probs = np.array([0.1, 0.2, 0.3, 0.7, 0.9, 0.8, 0.6, 0.55, 0.4, 0.2])
    m = screening_metrics(labels, probs, threshold=0.5)
    assert m.confusion == Confusion(tn=3, fp=1, fn=2, tp=4)
    assert m.accuracy == pytest.approx(0.7)
    assert m.sensitivity == pytest.approx(4 / 6)
    assert m.specificity == pytest.approx(3 / 4)
    assert m.balanced_accuracy == pytest.approx((4 / 6 + 3 / 4) / 2)
    assert m.ppv == pytest.approx(4 / 5)
    assert m.npv == pytest.approx(3 / 5)
    assert m.f1 == pytest.approx(8 / 11)
    assert m.roc_auc == pytest.approx(roc_auc_score(labels, probs))
    assert m.pr_auc == pytest.approx(average_precision_score(labels, probs))
    assert m.brier == pytest.approx(np.mean((probs - labels) ** 2))


def test_a_score_equal_to_the_threshold_is_called_pneumonia() -> None:
    m = screening_metrics(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.2, 0.1]), 0.5)
    assert m.confusion == Confusion(tn=1, fp=1, fn=1, tp=1)
    assert screening_metrics(np.array([1, 0]), np.array([0.3, 0.3]), 0.3).confusion == Confusion(0, 1, 0, 1)


def test_the_threshold_moves_the_confusion_but_not_the_ranking_metrics() -> None:
    low, high = screening_metrics(LABELS, PROBS, 0.05), screening_metrics(LABELS, PROBS, 0.85)
    assert low.confusion == Confusion(tn=0, fp=4, fn=0, tp=4)
    assert high.confusion == Confusion(tn=4, fp=0, fn=3, tp=1)
    assert low.threshold == 0.05 and high.threshold == 0.85
    for name in ("roc_auc", "pr_auc", "brier", "ece"):
        assert low.value(name) == high.value(name), name


def test_a_missing_class_gives_none_not_zero() -> None:
    only_pneumonia = screening_metrics(np.ones(3), np.array([0.2, 0.8, 0.9]), 0.5)
    assert only_pneumonia.sensitivity == pytest.approx(2 / 3) and only_pneumonia.ppv == 1.0
    assert only_pneumonia.npv == 0.0  # one negative call, and it was wrong
    for name in ("specificity", "balanced_accuracy", "roc_auc", "pr_auc"):
        assert only_pneumonia.value(name) is None, name
    assert only_pneumonia.brier == pytest.approx(np.mean((np.array([0.2, 0.8, 0.9]) - 1) ** 2))
    assert only_pneumonia.ece is not None

    all_called_positive = screening_metrics(np.ones(2), np.array([0.8, 0.9]), 0.5)
    assert all_called_positive.npv is None  # no negative call: no denominator

    only_normal = screening_metrics(np.zeros(4), np.array([0.1, 0.2, 0.3, 0.4]), 0.5)
    assert only_normal.specificity == 1.0 and only_normal.accuracy == 1.0 and only_normal.npv == 1.0
    for name in ("sensitivity", "balanced_accuracy", "ppv", "f1", "roc_auc", "pr_auc"):
        assert only_normal.value(name) is None, name


def test_no_images_gives_no_metric() -> None:
    m = screening_metrics(np.zeros(0), np.zeros(0), 0.5)
    assert m.n_images == 0 and m.confusion == Confusion(0, 0, 0, 0)
    assert all(m.value(name) is None for name in METRIC_NAMES)


def test_round_trip_through_a_dict() -> None:
    m = screening_metrics(LABELS, PROBS, 0.4)
    payload = m.to_dict()
    assert payload["confusion"] == {"tn": 2, "fp": 2, "fn": 1, "tp": 3}
    assert ScreeningMetrics.from_dict(payload) == m
    assert ScreeningMetrics.from_dict({**payload, "ci95": {}, "extra": 1}) == m  # other keys are ignored
    partial = ScreeningMetrics.from_dict({"threshold": "0.3", "n_images": "5", "confusion": asdict(m.confusion),
                                          "accuracy": 0.6})
    assert partial.threshold == 0.3 and partial.n_images == 5 and partial.confusion == m.confusion
    assert partial.accuracy == 0.6 and partial.ppv is None and partial.ece is None


# --- calibration ------------------------------------------------------------------------------------------


def test_calibration_uses_ten_equal_width_bins() -> None:
    assert CALIBRATION_BINS == 10
    probabilities = np.array([0.0, 0.05, 0.1, 0.15, 0.55, 0.95, 0.99, 1.0])
    labels = np.array([0, 0, 1, 0, 1, 1, 0, 1])
    bins = reliability(labels, probabilities)
    assert bins.counts.tolist() == [2, 2, 0, 0, 0, 1, 0, 0, 0, 3]  # 1.0 falls in the last bin, not an 11th
    assert bins.mean_predicted[0] == pytest.approx(0.025) and bins.observed[0] == 0.0
    assert bins.mean_predicted[1] == pytest.approx(0.125) and bins.observed[1] == 0.5
    assert bins.mean_predicted[9] == pytest.approx((0.95 + 0.99 + 1.0) / 3)
    assert bins.observed[9] == pytest.approx(2 / 3)
    assert np.isnan(bins.mean_predicted[2]) and np.isnan(bins.observed[2])  # empty bins are NaN, not 0
    assert len(reliability(labels, probabilities, bins=4).counts) == 4


def test_ece_is_the_reliability_bins_weighted_gap() -> None:
    labels, probabilities = _sample(np.random.default_rng(7), 300)
    bins = reliability(labels, probabilities)
    filled = bins.counts > 0
    by_hand = np.sum(bins.counts[filled] * np.abs(bins.mean_predicted[filled] - bins.observed[filled])) / 300
    assert expected_calibration_error(labels, probabilities) == pytest.approx(by_hand, abs=1e-12)
    assert bins.ece == pytest.approx(by_hand, abs=1e-12)
    assert screening_metrics(labels, probabilities, 0.5).ece == pytest.approx(by_hand, abs=1e-12)
    # the bin count matters, and the default is CALIBRATION_BINS
    assert expected_calibration_error(labels, probabilities) == expected_calibration_error(
        labels, probabilities, CALIBRATION_BINS)
    assert expected_calibration_error(labels, probabilities, 3) != pytest.approx(by_hand, abs=1e-6)


def test_ece_of_a_hand_made_case_and_of_nothing() -> None:
    # bin 2 holds 0.2, 0.25 (labels 0, 1): gap |0.225 - 0.5|; bin 8 holds 0.8 (label 1): gap 0.2
    labels, probabilities = np.array([0, 1, 1]), np.array([0.2, 0.25, 0.8])
    assert expected_calibration_error(labels, probabilities) == pytest.approx((2 * 0.275 + 0.2) / 3)
    assert expected_calibration_error(labels, probabilities, bins=1) == pytest.approx(abs(1.25 / 3 - 2 / 3))
    assert reliability(np.zeros(0), np.zeros(0)).ece == 0.0
    assert expected_calibration_error(np.array([1]), np.array([0.7])) == pytest.approx(0.3)  # one image: |p - y|


def test_calibration_error_separates_calibrated_from_overconfident_scores() -> None:
    rng = np.random.default_rng(4)
    probabilities = rng.random(20000)
    labels = (rng.random(20000) < probabilities).astype(int)
    assert expected_calibration_error(labels, probabilities) < 0.02
    overconfident = np.where(probabilities > 0.5, 0.99, 0.01)
    assert expected_calibration_error(labels, overconfident) > 0.2


def test_log_loss_is_the_clipped_mean_cross_entropy() -> None:
    assert log_loss(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert log_loss(np.array([0]), np.array([1.0])) == pytest.approx(-math.log(1e-7), rel=1e-6)  # clipped, finite
    assert log_loss(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-7), rel=1e-6)
    assert log_loss(np.array([1]), np.array([1.0])) == pytest.approx(-math.log(1 - 1e-7), rel=1e-6)
    assert log_loss(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(math.log(2))
    # computed in float64 whatever comes in: float32 scores (1 - 1e-7 is 1.0 in float32), boolean labels
    assert log_loss(np.array([0]), np.array([1.0], dtype=np.float32)) == pytest.approx(-math.log(1e-7), rel=1e-6)
    assert log_loss(np.array([True, False]), np.array([0.8, 0.4])) == pytest.approx(
        -(math.log(0.8) + math.log(0.6)) / 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no empty-mean warning: no images, no loss
        assert math.isnan(log_loss(np.zeros(0), np.zeros(0)))


# --- bootstrap ----------------------------------------------------------------------------------------------


def _reference_bootstrap(labels: np.ndarray, probabilities: np.ndarray, threshold: float, resamples: int,
                         seed: int, level: float = 0.95) -> dict[str, tuple[float, float] | None]:
    """The documented method, image by image: resample normals and pneumonias separately (normals first,
    the same seeded generator), score each resample with screening_metrics, take percentiles."""
    rng = np.random.default_rng(seed)
    draws = np.zeros((resamples, len(labels)), dtype=int)
    for group in (np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)):
        draws[:, group] = rng.multinomial(len(group), np.full(len(group), 1 / len(group)), size=resamples)
    values: dict[str, list[float]] = {name: [] for name in METRIC_NAMES}
    for row in draws:
        index = np.repeat(np.arange(len(labels)), row)
        m = screening_metrics(labels[index], probabilities[index], threshold)
        for name in METRIC_NAMES:
            if m.value(name) is not None:
                values[name].append(m.value(name))
    tail = 100 * (1 - level) / 2
    return {name: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) if v else None
            for name, v in values.items()}


def test_bootstrap_equals_the_image_by_image_reference() -> None:
    rng = np.random.default_rng(11)
    labels = np.array([0] * 18 + [1] * 22)
    probabilities = np.round(np.where(labels == 1, rng.uniform(0.2, 0.45, 40), rng.uniform(0.0, 0.4, 40)), 2)
    probabilities[20] = 0.9  # the only pneumonia call: PPV is undefined in resamples that miss it
    for level in (0.95, 0.8):
        fast = bootstrap_ci(labels, probabilities, 0.5, resamples=150, seed=3, level=level)
        slow = _reference_bootstrap(labels, probabilities, 0.5, resamples=150, seed=3, level=level)
        assert set(fast) == set(METRIC_NAMES)
        for name in METRIC_NAMES:
            assert fast[name] == pytest.approx(slow[name], abs=1e-9), (name, level)


def test_bootstrap_in_chunks_draws_the_same_way_as_documented() -> None:
    """Large sets are resampled in chunks (bounded memory); each chunk draws normals then pneumonias."""
    rng = np.random.default_rng(12)
    labels, probabilities = _sample(rng, 2000)
    resamples, chunk = 2500, 1000  # 2_000_000 // 2000 images: three chunks of 1000, 1000 and 500
    generator = np.random.default_rng(5)
    collected: dict[str, list[np.ndarray]] = {name: [] for name in METRIC_NAMES}
    for size in (chunk, chunk, resamples - 2 * chunk):
        counts = np.zeros((size, len(labels)), dtype=np.int64)
        for group in (np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)):
            counts[:, group] = generator.multinomial(len(group), np.full(len(group), 1 / len(group)), size=size)
        for name, values in _resampled_metrics(labels, probabilities, 0.5, counts).items():
            collected[name].append(values)
    intervals = bootstrap_ci(labels, probabilities, 0.5, resamples=resamples, seed=5)
    for name in METRIC_NAMES:
        values = np.concatenate(collected[name])
        assert len(values) == resamples
        assert intervals[name] == (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))), name


def test_the_fast_resampling_agrees_with_scikit_learn_on_each_resample() -> None:
    rng = np.random.default_rng(5)
    labels, probabilities = _sample(rng, 120)
    probabilities = np.round(probabilities, 1)  # many ties, the hard case for AUC and PR AUC
    counts = rng.multinomial(120, np.full(120, 1 / 120), size=4)
    fast = _resampled_metrics(labels, probabilities, 0.5, counts)
    assert set(fast) == set(METRIC_NAMES)
    for row in range(4):
        index = np.repeat(np.arange(120), counts[row])
        slow = screening_metrics(labels[index], probabilities[index], 0.5)
        for name in METRIC_NAMES:
            assert fast[name][row] == pytest.approx(slow.value(name), abs=1e-9), name


def test_bootstrap_is_stratified() -> None:
    """Every pneumonia image called pneumonia, every normal one too: accuracy is the pneumonia share. Resampling
    each class separately keeps that share, so its interval collapses to the point; pooled resampling would not."""
    labels = np.array([0] * 10 + [1] * 30)
    probabilities = np.full(40, 0.9)
    intervals = bootstrap_ci(labels, probabilities, 0.5, resamples=200, seed=0)
    assert intervals["accuracy"] == (0.75, 0.75)
    assert intervals["ppv"] == (0.75, 0.75) and intervals["sensitivity"] == (1.0, 1.0)
    assert intervals["specificity"] == (0.0, 0.0)


def test_every_metric_gets_an_interval_around_its_estimate_and_the_seed_repeats_it() -> None:
    labels, probabilities = _sample(np.random.default_rng(0))
    result = metrics_with_ci(labels, probabilities, 0.5, BootstrapSettings(resamples=300, seed=1))
    assert result.point == screening_metrics(labels, probabilities, 0.5)
    assert set(result.ci95) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        low, high = result.ci95[name]
        assert low <= result.point.value(name) <= high and high - low < 0.2, name
    assert result.ci95 == bootstrap_ci(labels, probabilities, 0.5, resamples=300, seed=1)
    assert result.ci95 == metrics_with_ci(labels, probabilities, 0.5, BootstrapSettings(300, 1)).ci95
    assert result.ci95 != metrics_with_ci(labels, probabilities, 0.5, BootstrapSettings(300, 2)).ci95
    assert result.bootstrap == BootstrapSettings(300, 1)


def test_a_lower_level_gives_a_narrower_interval_inside_the_wider_one() -> None:
    labels, probabilities = _sample(np.random.default_rng(8), 300)
    wide = bootstrap_ci(labels, probabilities, 0.5, resamples=400, seed=0, level=0.95)["accuracy"]
    narrow = bootstrap_ci(labels, probabilities, 0.5, resamples=400, seed=0, level=0.5)["accuracy"]
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    settings = BootstrapSettings(resamples=400, seed=0, level=0.5)
    assert metrics_with_ci(labels, probabilities, 0.5, settings).ci95["accuracy"] == narrow  # the level is passed on


def test_metrics_without_a_class_have_no_interval() -> None:
    intervals = bootstrap_ci(np.ones(20, dtype=int), np.linspace(0.1, 0.9, 20), 0.5, resamples=100)
    for name in ("specificity", "balanced_accuracy", "roc_auc"):
        assert intervals[name] is None, name
    assert intervals["sensitivity"] is not None and intervals["accuracy"] is not None


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


def test_bootstrap_settings_and_the_metrics_json_layout() -> None:
    assert BootstrapSettings() == BootstrapSettings(resamples=2000, seed=0, level=0.95,
                                                    method="stratified percentile bootstrap")
    labels, probabilities = _sample(np.random.default_rng(9), 80)
    result = metrics_with_ci(labels, probabilities, 0.4, BootstrapSettings(resamples=100, seed=4))
    assert isinstance(result, MetricsWithCI)
    payload = result.to_dict()
    for name in METRIC_NAMES:
        assert payload[name] == result.point.value(name)  # point estimates at the top level
        assert payload["ci95"][name] == list(result.ci95[name])
    assert payload["threshold"] == 0.4 and payload["n_images"] == 80
    assert payload["confusion"] == asdict(result.point.confusion)
    assert payload["bootstrap"] == {"resamples": 100, "seed": 4, "level": 0.95,
                                    "method": "stratified percentile bootstrap"}
    one_class = metrics_with_ci(np.ones(10), np.linspace(0, 1, 10), 0.5, BootstrapSettings(100, 0)).to_dict()
    assert one_class["ci95"]["specificity"] is None and one_class["specificity"] is None


def test_default_bootstrap_settings_are_used_when_none_are_given() -> None:
    labels, probabilities = _sample(np.random.default_rng(10), 60)
    result = metrics_with_ci(labels, probabilities, 0.5)
    assert result.bootstrap == BootstrapSettings()
    assert result.ci95 == bootstrap_ci(labels, probabilities, 0.5, resamples=2000, seed=0)


# --- classification report ------------------------------------------------------------------------------------


def test_classification_report_uses_pneumoscan_class_names_and_the_threshold() -> None:
    text, report = classification_report_text(LABELS, PROBS, 0.5)
    assert "NORMAL" in text and "PNEUMONIA" in text and re.search(r"\b0\.7500\b", text)  # four digits
    assert report["PNEUMONIA"]["precision"] == pytest.approx(0.75) and report["NORMAL"]["recall"] == 0.75
    assert report["PNEUMONIA"]["support"] == 4 and report["accuracy"] == pytest.approx(0.75)
    _, strict = classification_report_text(LABELS, PROBS, 0.85)
    assert strict["PNEUMONIA"]["recall"] == pytest.approx(0.25)
    _, at_threshold = classification_report_text(np.array([1, 0]), np.array([0.5, 0.4]), 0.5)
    assert at_threshold["PNEUMONIA"]["recall"] == 1.0  # a score equal to the threshold is a pneumonia call
    # nothing called pneumonia: precision is 0 by convention, without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, none_called = classification_report_text(np.array([0, 1]), np.array([0.1, 0.2]), 0.5)
    assert none_called["PNEUMONIA"]["precision"] == 0.0 and set(none_called) >= {"NORMAL", "PNEUMONIA"}
    # both classes are listed even when neither the labels nor the calls contain pneumonia
    text, only_normal = classification_report_text(np.zeros(3, dtype=int), np.full(3, 0.1), 0.5)
    assert only_normal["PNEUMONIA"]["support"] == 0 and "PNEUMONIA" in text
