"""Label-shift adaptation (EM on unlabeled scores); its report in `evaluate` is tested in test_evaluate.py."""

import numpy as np
import pytest

from pneumoscan.evaluation.prior_shift import adapt_to_prior


def _calibrated_scores(prevalence: float, train_prior: float, n: int, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Labels at `prevalence` and posteriors of a calibrated model trained at `train_prior`."""
    labels = (rng.random(n) < prevalence).astype(int)
    scores = rng.normal(np.where(labels == 1, 1.2, -1.2), 1.0)  # class-conditional log-likelihood ratio 2.4*s
    likelihood_ratio = np.exp(2.4 * scores)
    odds = likelihood_ratio * train_prior / (1 - train_prior)
    return labels, odds / (1 + odds)


@pytest.mark.parametrize("prevalence", [0.3, 0.5, 0.62])
def test_em_recovers_the_deployment_prevalence_without_labels(prevalence: float) -> None:
    rng = np.random.default_rng(0)
    labels, probabilities = _calibrated_scores(prevalence, train_prior=0.74, n=4000, rng=rng)
    estimate, adjusted = adapt_to_prior(probabilities, train_prior=0.74)
    assert abs(estimate - labels.mean()) < 0.03
    assert abs(estimate - labels.mean()) < abs(probabilities.mean() - labels.mean())  # closer than unadapted
    # fewer normals are called pneumonia after adaptation to a lower prevalence
    if prevalence < 0.74:
        assert ((adjusted >= 0.5) & (labels == 0)).sum() < ((probabilities >= 0.5) & (labels == 0)).sum()


def test_no_shift_leaves_probabilities_nearly_unchanged() -> None:
    rng = np.random.default_rng(1)
    _, probabilities = _calibrated_scores(0.74, train_prior=0.74, n=4000, rng=rng)
    estimate, adjusted = adapt_to_prior(probabilities, train_prior=0.74)
    assert abs(estimate - 0.74) < 0.03 and np.abs(adjusted - probabilities).max() < 0.05


def test_adaptation_is_bayes_rule_at_the_estimated_prior() -> None:
    rng = np.random.default_rng(2)
    _, probabilities = _calibrated_scores(0.3, train_prior=0.6, n=2000, rng=rng)
    estimate, adjusted = adapt_to_prior(probabilities, train_prior=0.6)
    odds = probabilities / (1 - probabilities) * (estimate / (1 - estimate)) / (0.6 / 0.4)
    assert np.allclose(adjusted, odds / (1 + odds), atol=1e-5)
    assert abs(adjusted.mean() - estimate) < 1e-5  # the fixed point: the adapted scores average to the prior


def test_extreme_scores_are_clipped_not_infinite() -> None:
    estimate, adjusted = adapt_to_prior(np.array([0.0, 1.0, 0.5, 0.5]), train_prior=0.5)
    assert np.isfinite(adjusted).all() and 0.0 < estimate < 1.0
