"""Metrics per subgroup: a model that misses viral pneumonia can hide behind a good overall sensitivity.

The data source fills each record's subgroup (for Kermany files the pneumonia subtype, `bacteria` or
`virus`, and `normal`), so those groups come for free; `--groups CSV` (columns `file,group`) gives any
other grouping (site, sex, age band). Each group reports its sensitivity and/or specificity with a
bootstrap CI.
"""

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumoscan.data.records import Record
from pneumoscan.errors import PneumoscanError
from pneumoscan.metrics import ScreeningMetrics, bootstrap_ci, screening_metrics

GROUP_METRICS = ("sensitivity", "specificity", "accuracy")


@dataclass(frozen=True)
class SubgroupResult:
    group: str
    n_images: int
    pneumonia: int
    metrics: ScreeningMetrics
    ci95: dict[str, tuple[float, float] | None]  # of GROUP_METRICS


def record_groups(records: Sequence[Record]) -> list[str] | None:
    """Each record's subgroup; None when no record carries a pneumonia subtype (nothing to compare)."""
    groups = [r.subgroup or ("normal" if r.label == 0 else "pneumonia, subtype unknown") for r in records]
    return groups if any(g not in ("normal", "pneumonia, subtype unknown") for g in groups) else None


def read_groups(path: Path, records: Sequence[Record]) -> list[str]:
    """Groups from a CSV with columns file,group; a file is matched by its full path or, failing that, its name."""
    try:
        with Path(path).open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise PneumoscanError(f"{path}: cannot read the groups file ({error.strerror})") from None
    if not rows or not {"file", "group"} <= set(rows[0]):
        raise PneumoscanError(f"{path}: expected a CSV with a header 'file,group' and one row per image")
    by_path = {row["file"]: row["group"] for row in rows}
    by_name = {Path(row["file"]).name: row["group"] for row in rows}
    return [by_path.get(r.source) or by_name.get(Path(r.source).name) or "unlisted" for r in records]


def subgroup_metrics(groups: Sequence[str], labels: np.ndarray, probabilities: np.ndarray, threshold: float,
                     resamples: int = 2000, seed: int = 0) -> list[SubgroupResult]:
    """Per group: images, pneumonia count, metrics (None where the group lacks a class) and their CIs."""
    groups_array = np.asarray(groups)
    rows = []
    for group in sorted(set(groups)):
        chosen = groups_array == group
        ci = bootstrap_ci(labels[chosen], probabilities[chosen], threshold, resamples=resamples, seed=seed)
        rows.append(SubgroupResult(group=group, n_images=int(chosen.sum()), pneumonia=int(labels[chosen].sum()),
                                   metrics=screening_metrics(labels[chosen], probabilities[chosen], threshold),
                                   ci95={name: ci[name] for name in GROUP_METRICS}))
    return rows
