import numpy as np
import pytest

from pneumoscan.errors import PneumoscanError
from pneumoscan.evaluation.metrics import binary_metrics
from pneumoscan.evaluation.thresholds import ThresholdPolicy


@pytest.fixture()
def scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 300 + [1] * 700)
    probabilities = np.clip(np.where(labels == 1, rng.normal(0.75, 0.15, 1000), rng.normal(0.4, 0.15, 1000)), 0, 1)
    return labels, probabilities


def test_parse_and_round_trip() -> None:
    for text in ("fixed:0.5", "balanced", "youden", "sensitivity:0.95"):
        assert str(ThresholdPolicy.parse(text)) == text
    for bad in ("fixed", "fixed:1.5", "sensitivity:x", "median", "balanced:0.3"):
        with pytest.raises(PneumoscanError):
            ThresholdPolicy.parse(bad)


def test_youden_beats_any_other_threshold_on_its_own_data(scores: tuple[np.ndarray, np.ndarray]) -> None:
    labels, probabilities = scores
    chosen = ThresholdPolicy.parse("youden").choose(labels, probabilities, 0.7)

    def j(threshold: float) -> float:
        m = binary_metrics(labels, probabilities, threshold)
        return m["sensitivity"] + m["specificity"] - 1

    assert all(j(chosen) >= j(t) - 1e-12 for t in np.linspace(0.05, 0.95, 91))


def test_sensitivity_target_is_met_with_the_best_specificity(scores: tuple[np.ndarray, np.ndarray]) -> None:
    labels, probabilities = scores
    chosen = ThresholdPolicy.parse("sensitivity:0.95").choose(labels, probabilities, 0.7)
    at_chosen = binary_metrics(labels, probabilities, chosen)
    assert at_chosen["sensitivity"] >= 0.95
    slightly_higher = binary_metrics(labels, probabilities, np.nextafter(chosen, 1.0))
    assert slightly_higher["sensitivity"] < 0.95  # any stricter threshold misses the target


def test_fixed_ignores_the_data(scores: tuple[np.ndarray, np.ndarray]) -> None:
    assert ThresholdPolicy.parse("fixed:0.3").choose(*scores, 0.7) == 0.3


def test_balanced_threshold_is_the_training_prior_and_equalizes_the_classes() -> None:
    """A calibrated model trained at prevalence pi, scored on equally common classes: thresholding at pi
    is the same decision as 0.5 on the prior-corrected probability."""
    rng = np.random.default_rng(1)
    prior = 0.74
    evidence = rng.normal(0, 1.5, 20000)  # log-likelihood ratio of each image
    labels = (rng.random(20000) < 1 / (1 + np.exp(-evidence))).astype(int)  # balanced-prior posterior
    trained = 1 / (1 + np.exp(-(evidence + np.log(prior / (1 - prior)))))  # what a model trained at 74 % says
    chosen = ThresholdPolicy.parse("balanced").choose(labels, trained, prior)
    assert chosen == prior
    at_balanced = binary_metrics(labels, trained, chosen)
    at_half = binary_metrics(labels, trained, 0.5)
    assert abs(at_balanced["sensitivity"] - at_balanced["specificity"]) < 0.02
    assert at_half["sensitivity"] - at_half["specificity"] > 0.1  # 0.5 leans towards the common class


def test_training_stores_the_validation_chosen_threshold(tiny_synthetic, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from pneumoscan.cli.main import main

    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_synthetic), "--image-size", "32", "--epochs", "2",
                 "--val-fraction", "0.25", "--threshold", "sensitivity:0.9", "--out", str(run)]) == 0
    manifest = json.loads((run / "model.json").read_text())
    assert manifest["validation_metrics"]["threshold_policy"] == "sensitivity:0.9"
    assert manifest["validation_metrics"]["sensitivity"] >= 0.9
    assert manifest["threshold"] == manifest["validation_metrics"]["threshold"]
    assert main(["train", "--data", str(tiny_synthetic), "--threshold", "median", "--out", str(tmp_path / "x")]) == 2
