"""Deployment monitoring simulation: weeks of incoming films, optional injected drift, label-free alarms.

Labels arrive late in practice, so a deployed screening model must notice trouble without them.
Each week is compared with the validation reference the bundle carries (per-image mean and
standard deviation of intensity, sharpness, and the model's scores) by two-sample Kolmogorov-Smirnov
tests; the smallest p-value, Bonferroni-corrected for the four tests, is the week's drift p-value, and a
week is flagged when it falls below `alpha`. Per-week accuracy, sensitivity and specificity (with
bootstrap CIs) are shown beside it, as they would be once labels come in. Without injected drift
the same weeks are the evaluation report's temporal view, so they are computed once.

Drift is injected from a given week on, as named, seeded options: the image perturbations of
pneumoscan.data.drift (`exposure:s`, `contrast:s`, `noise:s`, `resolution:s`) and `prevalence:p`,
which resamples each drifted week to a share p of pneumonia.
"""

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import ks_2samp

from pneumoscan.data.drift import Perturbation
from pneumoscan.data.statistics import STATISTIC_NAMES, image_statistics
from pneumoscan.data.streaming import ImageBatchSource, take
from pneumoscan.errors import PneumoscanError
from pneumoscan.metrics import ScreeningMetrics, bootstrap_ci, screening_metrics

REFERENCE_KEYS = (*STATISTIC_NAMES, "scores")
WEEK_METRICS = ("accuracy", "sensitivity", "specificity")
TEST = ("two-sample Kolmogorov-Smirnov on per-image intensity mean, intensity std, sharpness and model score "
        "against the validation reference; Bonferroni over the four")


@dataclass(frozen=True)
class Drift:
    """One named drift: an image perturbation or `prevalence:p`."""

    name: str
    strength: float

    @classmethod
    def parse(cls, text: str) -> "Drift":
        name, _, value = text.partition(":")
        if name == "prevalence":
            try:
                strength = float(value)
            except ValueError:
                raise PneumoscanError(f"drift '{text}': prevalence must be a number in (0, 1)") from None
            if not 0.0 < strength < 1.0:
                raise PneumoscanError(f"drift '{text}': prevalence must lie strictly between 0 and 1")
            return cls(name, strength)
        perturbation = Perturbation.parse(text)
        return cls(perturbation.name, perturbation.strength)

    def __str__(self) -> str:
        return f"{self.name}:{self.strength:g}"


@dataclass(frozen=True)
class WeekResult:
    """One simulated week: its images, metrics with CIs, and the label-free drift test's verdict."""

    week: int
    drift_injected: bool
    n_images: int
    prevalence: float
    mean_probability: float
    metrics: ScreeningMetrics
    ci95: dict[str, tuple[float, float] | None]  # of WEEK_METRICS
    ks_statistic: dict[str, float] | None  # None without a drift reference
    drift_p_value: float | None
    flagged: bool


@dataclass(frozen=True)
class MonitoringResult:
    weeks: list[WeekResult]
    drifts: list[str]
    drift_from_week: int | None
    alpha: float
    test: str | None  # None: the bundle has no drift reference, so no week is tested

    @property
    def drifted_weeks_flagged(self) -> str:
        injected = [w.flagged for w in self.weeks if w.drift_injected]
        return f"{sum(injected)} of {len(injected)}"

    @property
    def clean_weeks_flagged(self) -> str:
        clean = [w.flagged for w in self.weeks if not w.drift_injected]
        return f"{sum(clean)} of {len(clean)}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drifted_weeks_flagged": self.drifted_weeks_flagged,
                "clean_weeks_flagged": self.clean_weeks_flagged}


def _week_indices(labels: np.ndarray, weeks: int, drifts: Sequence[Drift], drift_from: int,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """Consecutive weeks of a seeded arrival order (folder order would put all NORMAL films first);
    drifted weeks resampled to a prevalence if asked."""
    order = rng.permutation(len(labels))
    chunks = np.array_split(order, weeks)
    prevalence = next((d.strength for d in drifts if d.name == "prevalence"), None)
    if prevalence is None:
        return chunks
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if not len(positives) or not len(negatives):
        raise PneumoscanError("drift prevalence:p needs images of both classes")
    resampled = []
    for week, chunk in enumerate(chunks, start=1):
        if week < drift_from:
            resampled.append(chunk)
            continue
        n_positive = int(round(prevalence * len(chunk)))
        resampled.append(np.concatenate([rng.choice(positives, n_positive), rng.choice(negatives,
                                                                                       len(chunk) - n_positive)]))
    return resampled


CHUNK = 64  # films perturbed and scored at a time: a week of any size never becomes one float copy
CHUNK_SEED = 100_003  # added per chunk to a week's perturbation seed (0 for a week's first chunk)


def _week_scores(images: ImageBatchSource, index: np.ndarray, score: Callable[[torch.Tensor], np.ndarray],
                 perturbations: Sequence[Perturbation], seed: int, want_statistics: bool
                 ) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
    """One drifted week's scores (and image statistics), a chunk at a time: perturbed in [0, 1] floats, then
    scored. Each chunk's noise has its own seed, the first chunk's the week's seed."""
    scores, parts = [], []
    for chunk, start in enumerate(range(0, len(index), CHUNK)):
        pixels = images[torch.as_tensor(index[start:start + CHUNK])].float() / 255.0
        for number, perturbation in enumerate(perturbations):
            pixels = perturbation(pixels, seed=seed + number + CHUNK_SEED * chunk)
        scores.append(np.asarray(score(pixels)))
        if want_statistics:
            parts.append(image_statistics(pixels))
    statistics = None if not want_statistics else {
        name: np.concatenate([part[name] for part in parts]) for name in STATISTIC_NAMES}
    return np.concatenate(scores), statistics


def simulate(images: ImageBatchSource, labels: np.ndarray, score: Callable[[torch.Tensor], np.ndarray],
             threshold: float, reference: dict[str, np.ndarray] | None, *, weeks: int = 8,
             drifts: Sequence[Drift] = (), drift_from: int = 1, alpha: float = 0.01, seed: int = 0,
             resamples: int = 500, probabilities: np.ndarray | None = None) -> MonitoringResult:
    """Stream `images` (uint8, N x 1 x S x S, in memory or streamed) as weeks; `score` maps uint8 or [0, 1] float
    images to P(pneumonia). `probabilities`, when the caller has already scored the images, are reused for weeks
    without drift. A week is read a chunk at a time, so memory does not grow with its size."""
    if weeks < 1 or weeks > len(labels):
        raise PneumoscanError(f"weeks must be between 1 and the number of images ({len(labels)}), got {weeks}")
    if reference is not None:
        missing = [k for k in REFERENCE_KEYS if k not in reference]
        if missing:
            raise PneumoscanError(f"the drift reference lacks {', '.join(missing)}")
    rng = np.random.default_rng(seed)
    perturbations = [Perturbation(d.name, d.strength) for d in drifts if d.name != "prevalence"]
    rows = []
    for week, index in enumerate(_week_indices(labels, weeks, drifts, drift_from, rng), start=1):
        drifted = bool(drifts) and week >= drift_from
        if probabilities is not None and not drifted:
            week_scores = probabilities[index]
            statistics = None if reference is None else image_statistics(take(images, index))
        elif drifted:
            week_scores, statistics = _week_scores(images, index, score, perturbations, seed * 1000 + week * 10,
                                                   reference is not None)
        else:
            week_scores, statistics = _week_scores(images, index, score, (), 0, reference is not None)
        week_labels = labels[index]
        ks, p_value = None, None
        if reference is not None and statistics is not None:
            tests = {key: ks_2samp({**statistics, "scores": week_scores}[key], reference[key])
                     for key in REFERENCE_KEYS}
            ks = {key: float(t.statistic) for key, t in tests.items()}
            p_value = min(1.0, len(tests) * min(float(t.pvalue) for t in tests.values()))
        ci = bootstrap_ci(week_labels, week_scores, threshold, resamples=resamples, seed=seed + week)
        rows.append(WeekResult(
            week=week, drift_injected=drifted, n_images=len(index), prevalence=float(week_labels.mean()),
            mean_probability=float(week_scores.mean()), metrics=screening_metrics(week_labels, week_scores, threshold),
            ci95={name: ci[name] for name in WEEK_METRICS}, ks_statistic=ks, drift_p_value=p_value,
            flagged=p_value is not None and p_value < alpha))
    return MonitoringResult(weeks=rows, drifts=[str(d) for d in drifts], drift_from_week=drift_from if drifts else None,
                            alpha=alpha, test=TEST if reference is not None else None)
