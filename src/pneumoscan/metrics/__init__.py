"""Metrics: the one place a number about a model is computed (point estimates, bootstrap intervals,
calibration, decision thresholds, paired comparisons). It depends on nothing else in pneumoscan, so
training, evaluation, studies and benchmarks all count the same way."""

from pneumoscan.metrics import screening
from pneumoscan.metrics.screening import *  # noqa: F403  (its __all__ is this package's public surface)
from pneumoscan.metrics.thresholds import ThresholdPolicy, calibrated_prior

__all__ = [*screening.__all__, "ThresholdPolicy", "calibrated_prior"]
