"""Patient ids from Kermany file names, and validation splits that never share a patient."""

import re
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

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
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(records)), labels, groups))
    return [records[i] for i in train_idx], [records[i] for i in val_idx]
