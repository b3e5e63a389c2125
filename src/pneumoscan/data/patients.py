"""Kermany file names to patient, subtype and series; validation splits that never share a patient."""

import re
from collections.abc import Sequence

import numpy as np

from pneumoscan.data.records import Record
from pneumoscan.errors import PneumoscanError

# person123_bacteria_456.jpeg -> person123 ; IM-0115-0001.jpeg -> IM-0115 ;
# NORMAL2-IM-0372-0001.jpeg -> NORMAL2-IM-0372 ; IM-0429-0001-0002.jpeg -> IM-0429
_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_", re.IGNORECASE),
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE),
)


def patient_id(file_name: str) -> str:
    """The patient a Kermany file belongs to; an unknown name is its own patient."""
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(file_name)
        if match:
            return match.group(1)
    return file_name


_SUBTYPE = re.compile(r"_(bacteria|virus)_", re.IGNORECASE)
_SERIES = re.compile(r"^(person|NORMAL2|IM)[-_\d]", re.IGNORECASE)


def file_metadata(file_name: str, label: int) -> tuple[str, str | None, str | None]:
    """(patient, subgroup, series) of a Kermany file name: the subgroup is 'normal' for label 0 and the
    pneumonia subtype ('bacteria' or 'virus') where the name states it."""
    subtype = _SUBTYPE.search(file_name)
    subgroup = "normal" if label == 0 else subtype[1].lower() if subtype else None
    found = _SERIES.match(file_name)
    series = None if found is None else "person" if found[1].lower() == "person" else found[1].upper()
    return patient_id(file_name), subgroup, series


def carve_validation(
    records: Sequence[Record], fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
    """Split into (train, validation) by patient, stratified by class.

    Splitting by image would put one patient's films on both sides and inflate validation
    scores; StratifiedGroupKFold keeps each patient whole while matching class balance.
    """
    if not 0.0 < fraction < 0.5:
        raise PneumoscanError(f"validation fraction must be in (0, 0.5), got {fraction}")
    labels = np.array([r.label for r in records])
    groups = np.array([r.patient for r in records])
    n_splits = max(2, round(1.0 / fraction))
    per_class_groups = [len(set(groups[labels == c])) for c in (0, 1)]
    if min(per_class_groups) < n_splits:
        raise PneumoscanError(
            f"too few patients to carve a {fraction:.0%} validation split "
            f"({per_class_groups[0]} normal, {per_class_groups[1]} pneumonia patients)"
        )
    from sklearn.model_selection import StratifiedGroupKFold
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(records)), labels, groups))
    return [records[i] for i in train_idx], [records[i] for i in val_idx]


def patient_subset(records: Sequence[Record], fraction: float, seed: int) -> list[Record]:
    """A share `fraction` of the patients of each class, with all their images (a data-budget study's
    training set); the same seed and fraction give the same subset, and a smaller fraction's subset
    lies inside a larger one's."""
    if not 0.0 < fraction <= 1.0:
        raise PneumoscanError(f"training fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return list(records)
    rng = np.random.default_rng([seed, 17])
    kept: set[str] = set()
    for label in (0, 1):
        patients = sorted({r.patient for r in records if r.label == label})
        order = rng.permutation(len(patients))
        kept.update(patients[i] for i in order[: max(1, round(fraction * len(patients)))])
    return [r for r in records if r.patient in kept]
