import numpy as np
import pytest

from pneumoscan.evaluation.prior_shift import adapt_to_prior, training_prior


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


def test_training_prior_follows_the_imbalance_mode() -> None:
    data = {"train": {"images": 100, "pneumonia": 74}}
    assert training_prior({"config": {"imbalance": "none"}, "data": data}) == pytest.approx(0.74)
    assert training_prior({"config": {"imbalance": "weighted"}, "data": data}) == 0.5


def test_evaluate_reports_the_adapted_result_separately(tiny_synthetic, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    from pneumoscan.cli.main import main

    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_synthetic), "--image-size", "32", "--epochs", "1",
                 "--val-fraction", "0.25", "--out", str(run)]) == 0
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(run), "--data", str(tiny_synthetic), "--adapt-prior",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    adapted = metrics["prior_adapted"]
    assert "no labels" in adapted["note"] and 0.0 < adapted["estimated_prevalence"] < 1.0
    assert adapted["training_prior"] == pytest.approx(0.5, abs=0.1)
    assert "accuracy" in metrics and "accuracy" in adapted  # the fixed-threshold result is untouched
    assert "NO labels used" in capsys.readouterr().err
