"""Metrics: the one place a number about a model is computed (point estimates, bootstrap intervals,
calibration, decision thresholds, paired comparisons). It depends on nothing else in pneumoscan, so
training, evaluation, studies and benchmarks all count the same way."""

from pneumoscan.metrics.screening import (
    CALIBRATION_BINS,
    METRIC_NAMES,
    BootstrapSettings,
    Confusion,
    MetricsWithCI,
    Reliability,
    ScreeningMetrics,
    bootstrap_ci,
    classification_report_text,
    expected_calibration_error,
    log_loss,
    metrics_with_ci,
    reliability,
    screening_metrics,
)
from pneumoscan.metrics.thresholds import ThresholdPolicy, calibrated_prior

__all__ = [
    "CALIBRATION_BINS", "METRIC_NAMES", "BootstrapSettings", "Confusion", "MetricsWithCI", "Reliability",
    "ScreeningMetrics", "ThresholdPolicy", "bootstrap_ci", "calibrated_prior", "classification_report_text",
    "expected_calibration_error", "log_loss", "metrics_with_ci", "reliability", "screening_metrics",
]
