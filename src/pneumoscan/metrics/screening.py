"""Screening metrics, their stratified bootstrap intervals, and calibration, computed once for every caller.

Names are the clinical ones and each metric has exactly one (`ppv`, never also `precision`). A rate
whose denominator is empty (specificity on a pneumonia-only week) or an AUC on one class is None,
not 0, so a missing class is never mistaken for a failing model.

On a test set of a few hundred images a specificity of 0.90 can be anything from 0.86 to 0.94; a
number without its interval invites over-reading. The bootstrap resamples pneumonia and normal images
separately (stratified), so every resample keeps the evaluated class balance, and is seeded so a
report can be reproduced exactly. Calibration uses CALIBRATION_BINS equal-width bins for both the
number (ECE) and the reliability figure, so the two always agree.
"""

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pneumoscan import CLASS_NAMES

__all__ = ["CALIBRATION_BINS", "METRIC_NAMES", "BootstrapSettings", "Confusion", "MetricsWithCI", "Reliability",
           "ScreeningMetrics", "bootstrap_ci", "classification_report_text", "expected_calibration_error", "log_loss",
           "metrics_with_ci", "reliability", "screening_metrics"]

METRIC_NAMES = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc",
                "pr_auc", "brier", "ece")
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Confusion:
    tn: int
    fp: int
    fn: int
    tp: int


@dataclass(frozen=True)
class ScreeningMetrics:
    """Point estimates at one threshold; every field of METRIC_NAMES is a float or None."""

    threshold: float
    n_images: int
    confusion: Confusion
    accuracy: float | None
    balanced_accuracy: float | None
    sensitivity: float | None
    specificity: float | None
    ppv: float | None
    npv: float | None
    f1: float | None
    roc_auc: float | None
    pr_auc: float | None
    brier: float | None
    ece: float | None

    def value(self, name: str) -> float | None:
        if name not in METRIC_NAMES:
            raise KeyError(f"unknown metric '{name}'; known: {', '.join(METRIC_NAMES)}")
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "ScreeningMetrics":
        known = {name: payload.get(name) for name in METRIC_NAMES}
        return cls(threshold=float(payload["threshold"]), n_images=int(payload["n_images"]),
                   confusion=Confusion(**payload["confusion"]), **known)


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator else None


@dataclass(frozen=True)
class Reliability:
    """Per calibration bin: image count, mean predicted probability and observed pneumonia share
    (NaN in empty bins)."""

    counts: np.ndarray
    mean_predicted: np.ndarray
    observed: np.ndarray

    @property
    def ece(self) -> float:
        """Share-weighted gap between mean predicted probability and observed rate."""
        filled = self.counts > 0
        gaps = np.abs(self.mean_predicted[filled] - self.observed[filled]) * self.counts[filled]
        return float(gaps.sum() / max(self.counts.sum(), 1))


def _bin_index(probabilities: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((probabilities * bins).astype(int), bins - 1)


def reliability(labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS) -> Reliability:
    labels, probabilities = np.asarray(labels, dtype=float), np.asarray(probabilities, dtype=float)
    index = _bin_index(probabilities, bins)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_predicted = np.bincount(index, probabilities, bins) / counts
        observed = np.bincount(index, labels, bins) / counts
    return Reliability(counts, mean_predicted, observed)


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    return reliability(labels, probabilities, bins).ece


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [1e-7, 1 - 1e-7]); the validation loss."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else float("nan")


def screening_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> ScreeningMetrics:
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    predicted = probabilities >= threshold
    tp = int(np.sum(predicted & (labels == 1)))
    fp = int(np.sum(predicted & (labels == 0)))
    fn = int(np.sum(~predicted & (labels == 1)))
    tn = int(np.sum(~predicted & (labels == 0)))
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
    sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    both = sensitivity is not None and specificity is not None
    return ScreeningMetrics(
        threshold=float(threshold),
        n_images=int(len(labels)),
        confusion=Confusion(tn=tn, fp=fp, fn=fn, tp=tp),
        accuracy=_ratio(tp + tn, len(labels)),
        balanced_accuracy=(sensitivity + specificity) / 2 if both else None,  # type: ignore[operator]
        sensitivity=sensitivity,
        specificity=specificity,
        ppv=_ratio(tp, tp + fp),
        npv=_ratio(tn, tn + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        roc_auc=float(roc_auc_score(labels, probabilities)) if both else None,
        pr_auc=float(average_precision_score(labels, probabilities)) if both else None,
        brier=float(brier_score_loss(labels, probabilities, pos_label=1)) if len(labels) else None,
        ece=expected_calibration_error(labels, probabilities) if len(labels) else None,
    )


def _resampled_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float,
                       counts: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric for many resamples at once; a resample is a row of `counts` (times each image is drawn).

    Works on the counts instead of copying images, so 2,000 resamples of a few thousand images
    take a second, not minutes; the formulas are scikit-learn's (AUC as Mann-Whitney with ties
    at one half, PR AUC as average precision over distinct thresholds).
    """
    positive, predicted = labels == 1, probabilities >= threshold
    n = counts.sum(1).astype(float)
    tp, fn = counts[:, positive & predicted].sum(1), counts[:, positive & ~predicted].sum(1)
    fp, tn = counts[:, ~positive & predicted].sum(1), counts[:, ~positive & ~predicted].sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sensitivity, specificity = tp / (tp + fn), tn / (tn + fp)
        result = {"accuracy": (tp + tn) / n, "balanced_accuracy": (sensitivity + specificity) / 2,
                  "sensitivity": sensitivity, "specificity": specificity, "ppv": tp / (tp + fp),
                  "npv": tn / (tn + fn), "f1": 2 * tp / (2 * tp + fp + fn)}
        pos_scores, neg_scores = probabilities[positive], probabilities[~positive]
        beats = (pos_scores[:, None] > neg_scores[None, :]) + 0.5 * (pos_scores[:, None] == neg_scores[None, :])
        pos_counts, neg_counts = counts[:, positive].astype(float), counts[:, ~positive].astype(float)
        result["roc_auc"] = np.einsum("bi,bi->b", pos_counts @ beats, neg_counts) / (
            pos_counts.sum(1) * neg_counts.sum(1))
        order = np.argsort(-probabilities, kind="stable")
        ranked = probabilities[order]
        last_of_tie = np.append(ranked[1:] != ranked[:-1], True)
        true_pos = np.cumsum(counts[:, order] * positive[order], axis=1)[:, last_of_tie]
        false_pos = np.cumsum(counts[:, order] * ~positive[order], axis=1)[:, last_of_tie]
        precision = true_pos / np.maximum(true_pos + false_pos, 1e-12)
        recall = true_pos / true_pos[:, -1:]
        result["pr_auc"] = np.sum(np.diff(recall, axis=1, prepend=0.0) * precision, axis=1)
        result["brier"] = counts @ (probabilities - labels) ** 2 / n
        one_hot = np.eye(CALIBRATION_BINS)[_bin_index(probabilities, CALIBRATION_BINS)]
        gap = np.abs(counts @ (one_hot * probabilities[:, None]) - counts @ (one_hot * labels[:, None]))
        result["ece"] = gap.sum(1) / n
    return result


@dataclass(frozen=True)
class BootstrapSettings:
    resamples: int = 2000
    seed: int = 0
    level: float = 0.95
    method: str = "stratified percentile bootstrap"


Interval = tuple[float, float] | None


def bootstrap_ci(labels: np.ndarray, probabilities: np.ndarray, threshold: float, resamples: int = 2000,
                 seed: int = 0, level: float = 0.95) -> dict[str, Interval]:
    """Stratified percentile bootstrap interval of every metric in METRIC_NAMES ((low, high), or None)."""
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {name: [] for name in METRIC_NAMES}
    chunk = max(1, min(resamples, 2_000_000 // max(len(labels), 1)))  # bounds memory on large sets
    for done in range(0, resamples, chunk):
        size = min(chunk, resamples - done)
        counts = np.zeros((size, len(labels)), dtype=np.int64)
        for group in (np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)):
            if len(group):
                counts[:, group] = rng.multinomial(len(group), np.full(len(group), 1 / len(group)), size=size)
        for name, values in _resampled_metrics(labels, probabilities, threshold, counts).items():
            draws[name].append(values)
    tail = 100 * (1 - level) / 2
    intervals: dict[str, Interval] = {}
    for name in METRIC_NAMES:
        values = np.concatenate(draws[name]) if draws[name] else np.zeros(0)
        values = values[np.isfinite(values)]
        intervals[name] = ((float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))
                           if len(values) else None)
    return intervals


@dataclass(frozen=True)
class MetricsWithCI:
    point: ScreeningMetrics
    ci95: dict[str, Interval]
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)

    def to_dict(self) -> dict[str, Any]:
        """The metrics.json layout: point estimates at the top level, then `ci95` and `bootstrap`."""
        return {**self.point.to_dict(), "ci95": {k: None if v is None else list(v) for k, v in self.ci95.items()},
                "bootstrap": asdict(self.bootstrap)}


def metrics_with_ci(labels: np.ndarray, probabilities: np.ndarray, threshold: float,
                    settings: BootstrapSettings = BootstrapSettings()) -> MetricsWithCI:
    return MetricsWithCI(
        point=screening_metrics(labels, probabilities, threshold),
        ci95=bootstrap_ci(labels, probabilities, threshold, resamples=settings.resamples, seed=settings.seed,
                          level=settings.level),
        bootstrap=settings,
    )


def classification_report_text(labels: np.ndarray, probabilities: np.ndarray,
                               threshold: float) -> tuple[str, dict[str, Any]]:
    """scikit-learn's classification report as (text, dict), with pneumoscan's class names."""
    predicted = (np.asarray(probabilities) >= threshold).astype(int)
    from sklearn.metrics import classification_report
    kwargs: dict[str, Any] = {"labels": [0, 1], "target_names": list(CLASS_NAMES), "zero_division": 0, "digits": 4}
    return (classification_report(labels, predicted, **kwargs),
            classification_report(labels, predicted, output_dict=True, **kwargs))
