"""Decision-threshold policies, applied to validation scores only and stored in the bundle.

A threshold picked on the data it is then reported on flatters that report; pneumoscan picks it
on the patient-grouped validation split at training time and never on an evaluation set.
"""

from dataclasses import dataclass

import numpy as np

from pneumoscan.errors import PneumoscanError

BALANCING_MODES = ("weighted", "sampler")  # imbalance modes that train as if both classes were equally common


def calibrated_prior(imbalance: str, train_images: int, train_pneumonia: int) -> float:
    """The pneumonia prevalence the probabilities of a model trained this way are calibrated to."""
    if imbalance in BALANCING_MODES:
        return 0.5
    if train_images <= 0:
        raise PneumoscanError("the training prior needs at least one training image")
    return train_pneumonia / train_images


def threshold_for_prior(threshold: float, training_prior: float, site_prior: float) -> float:
    """The threshold on a probability p calibrated to `training_prior` that gives the same decision as
    `threshold` on p rescaled to `site_prior` (Saerens et al. 2002): q >= t  <=>  p >= t r0 / (t r0 + (1-t) r1),
    with r1 = site/training and r0 = (1-site)/(1-training)."""
    r1, r0 = site_prior / training_prior, (1.0 - site_prior) / (1.0 - training_prior)
    return float(threshold * r0 / (threshold * r0 + (1.0 - threshold) * r1))


def adapted_threshold(policy: str, threshold: float) -> float:
    """The threshold on probabilities rescaled to a known site prevalence. A `balanced` threshold is the
    training prior itself and ignores prevalence, so at a known prevalence the minimum-error decision, 0.5 on
    the rescaled probabilities, replaces it; any other stored threshold stands."""
    return 0.5 if ThresholdPolicy.parse(policy).kind == "balanced" else threshold


def site_threshold(policy: str, threshold: float, training_prior: float, site_prior: float) -> float:
    """The decision threshold on the training-calibrated probabilities once the site's prevalence is known:
    the `adapted_threshold`'s decision on the rescaled probabilities."""
    return threshold_for_prior(adapted_threshold(policy, threshold), training_prior, site_prior)


@dataclass(frozen=True)
class ThresholdPolicy:
    """`fixed:0.5`; `balanced`: the training prevalence, where a calibrated model's odds, divided by
    the training prior odds, reach 1, i.e. the Bayes decision for equally likely classes: it maximizes
    balanced accuracy whatever the deployment prevalence, and needs no validation scores, so it does
    not move with validation noise; `youden` (max sensitivity + specificity - 1 on validation) or
    `sensitivity:0.95` (the highest threshold, hence best specificity, keeping validation
    sensitivity >= 0.95)."""

    kind: str
    value: float = 0.5

    @classmethod
    def parse(cls, text: str) -> "ThresholdPolicy":
        kind, _, value = text.partition(":")
        try:
            if kind in ("youden", "balanced") and not value:
                return cls(kind)
            if kind in ("fixed", "sensitivity") and 0.0 < float(value) < 1.0:
                return cls(kind, float(value))
        except ValueError:
            pass
        raise PneumoscanError(
            f"threshold policy '{text}': use fixed:P, balanced, youden or sensitivity:S with 0 < P, S < 1")

    def __str__(self) -> str:
        return self.kind if self.kind in ("youden", "balanced") else f"{self.kind}:{self.value:g}"

    def choose(self, labels: np.ndarray, probabilities: np.ndarray, training_prior: float) -> float:
        """`training_prior`: the pneumonia share the model's probabilities are calibrated to."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "balanced":
            return float(training_prior)
        if len(np.unique(labels)) < 2:
            raise PneumoscanError(f"threshold policy {self}: validation split needs both classes")
        from sklearn.metrics import roc_curve  # scipy/sklearn imported where used: config and the CLI load without them
        false_positive_rate, true_positive_rate, thresholds = roc_curve(labels, probabilities, drop_intermediate=False)
        thresholds = np.clip(thresholds, 0.0, 1.0)  # scikit-learn's first threshold is +inf
        if self.kind == "youden":
            best = int(np.argmax(true_positive_rate - false_positive_rate))
        else:
            best = int(np.argmax(true_positive_rate >= self.value))  # first (highest) threshold reaching it
        return float(thresholds[best])
