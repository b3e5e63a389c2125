"""Simulated deployment: the evaluated images arrive as consecutive weeks, scored week by week.

Arrival order is a seeded shuffle (the same for every model compared), because folder order
would put all NORMAL films in the first weeks and leave some weeks without a class.
"""

from typing import Any

import numpy as np

from pneumoscan.evaluation.metrics import binary_metrics


def arrival_order(n_images: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n_images)


def weekly_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float,
                   weeks: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """Per-week accuracy, sensitivity and specificity (None where a week lacks a class)."""
    if weeks < 1:
        raise ValueError("weeks must be at least 1")
    order = arrival_order(len(labels), seed)
    rows = []
    for week, index in enumerate(np.array_split(order, min(weeks, len(order))), start=1):
        metrics = binary_metrics(labels[index], probabilities[index], threshold)
        rows.append({
            "week": week,
            "n_images": len(index),
            "prevalence": float(np.mean(labels[index])),
            "accuracy": metrics["accuracy"],
            "sensitivity": metrics["sensitivity"],
            "specificity": metrics["specificity"],
        })
    return rows
