import pytest

from pneumoscan.data.patients import carve_validation, patient_id
from pneumoscan.data.records import Record
from pneumoscan.errors import PneumoscanError


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("person123_bacteria_456.jpeg", "person123"),
        ("person123_virus_7.jpeg", "person123"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0429-0001-0002.jpeg", "IM-0429"),
        ("NORMAL2-IM-0372-0001.jpeg", "NORMAL2-IM-0372"),
        ("scan_from_elsewhere.png", "scan_from_elsewhere.png"),
    ],
)
def test_patient_id(name: str, patient: str) -> None:
    assert patient_id(name) == patient


def _records(n_patients: int = 200) -> list[Record]:
    records = []
    for p in range(n_patients):
        label = int(p % 4 != 0)  # 75 % pneumonia, like the Kermany train split
        for image in range(1 + p % 3):  # patients with 1-3 films
            records.append(Record(f"f{p}_{image}", label, f"patient{p}"))
    return records


def test_validation_split_never_shares_a_patient_and_keeps_class_balance() -> None:
    records = _records()
    train, val = carve_validation(records, fraction=0.2, seed=1)
    assert len(train) + len(val) == len(records)
    assert not {r.patient for r in train} & {r.patient for r in val}
    share = len(val) / len(records)
    assert 0.14 < share < 0.26
    prevalence = sum(r.label for r in records) / len(records)
    assert abs(sum(r.label for r in val) / len(val) - prevalence) < 0.06


def test_validation_split_is_seeded() -> None:
    records = _records()
    assert carve_validation(records, 0.2, seed=5) == carve_validation(records, 0.2, seed=5)
    assert carve_validation(records, 0.2, seed=5)[1] != carve_validation(records, 0.2, seed=6)[1]


def test_too_few_patients_is_a_clear_error() -> None:
    records = [Record("a", 0, "p1"), Record("b", 1, "p2"), Record("c", 1, "p3")]
    with pytest.raises(PneumoscanError, match="too few patients"):
        carve_validation(records, 0.2, seed=0)
