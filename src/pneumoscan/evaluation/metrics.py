"""Binary screening metrics from scikit-learn, named the way clinicians read them."""

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_score,
    roc_auc_score,
)

from pneumoscan import CLASS_NAMES


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, Any]:
    """Accuracy, sensitivity (pneumonia recall), specificity (normal recall), precision, F1, ROC AUC.

    A rate whose denominator is empty (e.g. specificity on a pneumonia-only week) is None,
    not 0, so a missing class is never mistaken for a failing model.
    """
    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(probabilities) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel().tolist()
    both_classes = len(np.unique(labels)) == 2
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "sensitivity": _rate(tp, tp + fn),
        "specificity": _rate(tn, tn + fp),
        "precision": float(precision_score(labels, predicted, zero_division=0)) if tp + fp else None,
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "roc_auc": float(roc_auc_score(labels, probabilities)) if both_classes else None,
        "threshold": float(threshold),
        "n_images": int(len(labels)),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def report(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> tuple[str, dict[str, Any]]:
    """scikit-learn's classification report as (text, dict)."""
    predicted = (np.asarray(probabilities) >= threshold).astype(int)
    kwargs: dict[str, Any] = {"labels": [0, 1], "target_names": list(CLASS_NAMES), "zero_division": 0, "digits": 4}
    text = classification_report(labels, predicted, **kwargs)
    as_dict = classification_report(labels, predicted, output_dict=True, **kwargs)
    return text, as_dict

