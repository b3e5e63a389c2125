"""pneumoscan.metrics.thresholds: decision-threshold policies and the calibrated prior (pure numpy, fast)."""

import numpy as np
import pytest

from pneumoscan.errors import PneumoscanError
from pneumoscan.metrics import screening_metrics
from pneumoscan.metrics.thresholds import BALANCING_MODES, ThresholdPolicy, calibrated_prior


@pytest.fixture()
def scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 300 + [1] * 700)
    probabilities = np.clip(np.where(labels == 1, rng.normal(0.75, 0.15, 1000), rng.normal(0.4, 0.15, 1000)), 0, 1)
    return labels, probabilities


# --- parsing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "kind", "value"), [
    ("fixed:0.5", "fixed", 0.5), ("fixed:0.3", "fixed", 0.3), ("fixed:0.001", "fixed", 0.001),
    ("fixed:0.999", "fixed", 0.999), ("balanced", "balanced", 0.5), ("youden", "youden", 0.5),
    ("sensitivity:0.95", "sensitivity", 0.95), ("sensitivity:0.9", "sensitivity", 0.9),
])
def test_parse(text: str, kind: str, value: float) -> None:
    policy = ThresholdPolicy.parse(text)
    assert policy == ThresholdPolicy(kind, value)
    assert str(policy) == text


@pytest.mark.parametrize("bad", ["fixed", "fixed:", "fixed:0", "fixed:1", "fixed:1.5", "fixed:-0.2", "fixed:x",
                                 "sensitivity", "sensitivity:x", "sensitivity:0", "sensitivity:1",
                                 "median", "balanced:0.3", "youden:0.8", "", "Fixed:0.5"])
def test_bad_policies_are_refused_naming_the_text_and_the_choices(bad: str) -> None:
    with pytest.raises(PneumoscanError) as info:
        ThresholdPolicy.parse(bad)
    assert str(info.value) == (f"threshold policy '{bad}': use fixed:P, balanced, youden or sensitivity:S "
                               "with 0 < P, S < 1")


def test_str_uses_the_shortest_form_of_the_value() -> None:
    assert str(ThresholdPolicy("fixed", 0.25)) == "fixed:0.25"
    assert str(ThresholdPolicy("sensitivity", 0.123456789)) == "sensitivity:0.123457"
    assert str(ThresholdPolicy("youden", 0.3)) == "youden" and str(ThresholdPolicy("balanced", 0.9)) == "balanced"
    assert ThresholdPolicy("youden").value == 0.5


# --- choosing -------------------------------------------------------------------------------------------------


def test_fixed_ignores_the_data(scores: tuple[np.ndarray, np.ndarray]) -> None:
    assert ThresholdPolicy.parse("fixed:0.3").choose(*scores, 0.7) == 0.3
    assert ThresholdPolicy.parse("fixed:0.3").choose(np.ones(3), np.full(3, 0.9), 0.7) == 0.3  # one class is fine


def test_balanced_is_the_training_prior_whatever_the_scores() -> None:
    policy = ThresholdPolicy.parse("balanced")
    assert policy.choose(np.array([0, 1]), np.array([0.2, 0.9]), 0.74) == 0.74
    assert policy.choose(np.ones(3), np.full(3, 0.9), 0.31) == 0.31  # needs no validation scores at all
    assert isinstance(policy.choose(np.ones(1), np.ones(1), np.float32(0.5)), float)


@pytest.mark.parametrize("text", ["youden", "sensitivity:0.9"])
def test_data_driven_policies_need_both_classes(text: str) -> None:
    with pytest.raises(PneumoscanError) as info:
        ThresholdPolicy.parse(text).choose(np.ones(5), np.linspace(0.1, 0.9, 5), 0.5)
    assert str(info.value) == f"threshold policy {text}: validation split needs both classes"


def test_youden_on_a_hand_made_case() -> None:
    # thresholds 0.8, 0.4, 0.35, 0.1 give (tpr, fpr) (.5, 0), (.5, .5), (1, .5), (1, 1): J = .5, 0, .5, 0
    labels, probabilities = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert ThresholdPolicy.parse("youden").choose(labels, probabilities, 0.5) == 0.8  # the first (highest) of ties
    perfect = ThresholdPolicy.parse("youden").choose(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.6, 0.7]), 0.5)
    assert perfect == 0.6


def test_an_inverted_model_gets_threshold_one_not_infinity() -> None:
    # no threshold beats chance: the best is calling nobody, scikit-learn's +inf, clipped to 1
    chosen = ThresholdPolicy.parse("youden").choose(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1]), 0.5)
    assert chosen == 1.0


def test_thresholds_stay_in_zero_one_even_for_scores_outside_it() -> None:
    labels = np.array([0, 0, 1, 1])
    assert ThresholdPolicy.parse("youden").choose(labels, np.array([-3.0, -2.0, -1.0, -0.5]), 0.5) == 0.0
    assert ThresholdPolicy.parse("youden").choose(labels, np.array([2.0, 0.1, 3.0, 4.0]), 0.5) == 1.0


def test_sensitivity_target_on_a_hand_made_case() -> None:
    labels, probabilities = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert ThresholdPolicy.parse("sensitivity:0.5").choose(labels, probabilities, 0.5) == 0.8  # reaching, not beyond
    assert ThresholdPolicy.parse("sensitivity:0.6").choose(labels, probabilities, 0.5) == 0.35
    assert ThresholdPolicy.parse("sensitivity:0.99").choose(labels, probabilities, 0.5) == 0.35


def test_sensitivity_target_considers_every_threshold() -> None:
    """scikit-learn's default drops collinear ROC points; the first pneumonia alone already meets a low target."""
    labels = np.array([1, 1, 1, 0, 0])
    probabilities = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    assert ThresholdPolicy.parse("sensitivity:0.3").choose(labels, probabilities, 0.5) == 0.9
    assert ThresholdPolicy.parse("sensitivity:0.5").choose(labels, probabilities, 0.5) == 0.8


def test_youden_beats_any_other_threshold_on_its_own_data(scores: tuple[np.ndarray, np.ndarray]) -> None:
    labels, probabilities = scores
    chosen = ThresholdPolicy.parse("youden").choose(labels, probabilities, 0.7)
    assert isinstance(chosen, float) and chosen in set(probabilities)

    def j(threshold: float) -> float:
        m = screening_metrics(labels, probabilities, threshold)
        return m.sensitivity + m.specificity - 1

    assert all(j(chosen) >= j(t) - 1e-12 for t in np.linspace(0.05, 0.95, 91))


def test_sensitivity_target_is_met_with_the_best_specificity(scores: tuple[np.ndarray, np.ndarray]) -> None:
    labels, probabilities = scores
    chosen = ThresholdPolicy.parse("sensitivity:0.95").choose(labels, probabilities, 0.7)
    assert screening_metrics(labels, probabilities, chosen).sensitivity >= 0.95
    slightly_higher = screening_metrics(labels, probabilities, np.nextafter(chosen, 1.0))
    assert slightly_higher.sensitivity < 0.95  # any stricter threshold misses the target


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
    at_balanced = screening_metrics(labels, trained, chosen)
    at_half = screening_metrics(labels, trained, 0.5)
    assert abs(at_balanced.sensitivity - at_balanced.specificity) < 0.02
    assert at_half.sensitivity - at_half.specificity > 0.1  # 0.5 leans towards the common class


# --- calibrated prior ----------------------------------------------------------------------------------------------


def test_balancing_modes_are_calibrated_to_one_half() -> None:
    assert BALANCING_MODES == ("weighted", "sampler")
    for mode in BALANCING_MODES:
        assert calibrated_prior(mode, 100, 74) == 0.5
        assert calibrated_prior(mode, 0, 0) == 0.5  # needs no counts


@pytest.mark.parametrize("mode", ["none", "focal"])
def test_other_modes_are_calibrated_to_the_training_prevalence(mode: str) -> None:
    assert calibrated_prior(mode, 100, 74) == pytest.approx(0.74)
    assert calibrated_prior(mode, 4471, 3321) == pytest.approx(3321 / 4471)
    assert calibrated_prior(mode, 3, 3) == 1.0 and calibrated_prior(mode, 1, 0) == 0.0
    with pytest.raises(PneumoscanError, match="^the training prior needs at least one training image$"):
        calibrated_prior(mode, 0, 0)
