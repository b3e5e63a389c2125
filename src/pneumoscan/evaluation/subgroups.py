"""Metrics per subgroup: a model that misses viral pneumonia can hide behind a good overall sensitivity.

Kermany file names carry the pneumonia subtype (`person12_bacteria_45.jpeg`, `person3_virus_7.jpeg`),
so those groups come for free; `--groups CSV` (columns `file,group`) gives any other grouping
(site, sex, age band). Each group reports its sensitivity and/or specificity with a bootstrap CI.
"""

import csv
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan.data.records import Record
from pneumoscan.errors import PneumoscanError
from pneumoscan.evaluation.uncertainty import bootstrap_ci, screening_metrics

_SUBTYPE = re.compile(r"_(bacteria|virus)_", re.IGNORECASE)


def subtype_groups(records: Sequence[Record]) -> list[str] | None:
    """'bacteria' / 'virus' for pneumonia files named that way, 'normal' for NORMAL; None if names say nothing."""
    groups = []
    for record in records:
        match = _SUBTYPE.search(Path(record.source).name)
        groups.append("normal" if record.label == 0 else match[1].lower() if match else "pneumonia, subtype unknown")
    return groups if any(g in ("bacteria", "virus") for g in groups) else None


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
                     resamples: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Per group: images, pneumonia count, sensitivity and specificity (None where the group lacks the class)."""
    groups_array = np.asarray(groups)
    rows = []
    for group in sorted(set(groups)):
        chosen = groups_array == group
        point = screening_metrics(labels[chosen], probabilities[chosen], threshold)
        ci = bootstrap_ci(labels[chosen], probabilities[chosen], threshold, resamples=resamples, seed=seed)
        rows.append({"group": group, "n_images": int(chosen.sum()), "pneumonia": int(labels[chosen].sum()),
                     **{name: point[name] for name in ("sensitivity", "specificity", "accuracy")},
                     "ci95": {name: ci[name] for name in ("sensitivity", "specificity", "accuracy")}})
    return rows
