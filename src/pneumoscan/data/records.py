"""The unit every data source yields: one image with its label and patient."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    """One image. `source` is a file path or a synthetic id; `patient` groups images for splitting."""

    source: str
    label: int
    patient: str
