"""pneumoscan.data.patients: file names to metadata, patient-grouped validation, patient subsets (fast)."""

from collections import Counter

import pytest

from pneumoscan.data.patients import carve_validation, file_metadata, patient_id, patient_subset
from pneumoscan.data.records import Record
from pneumoscan.errors import PneumoscanError


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("person123_bacteria_456.jpeg", "person123"),
        ("person123_virus_7.jpeg", "person123"),
        ("PERSON7_Virus_1.jpeg", "PERSON7"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0429-0001-0002.jpeg", "IM-0429"),
        ("im-0115-0001.jpeg", "im-0115"),
        ("NORMAL2-IM-0372-0001.jpeg", "NORMAL2-IM-0372"),
        ("normal2-im-0372-0001.jpeg", "normal2-im-0372"),
        ("scan_from_elsewhere.png", "scan_from_elsewhere.png"),
        ("person_bacteria_1.jpeg", "person_bacteria_1.jpeg"),  # no patient number: its own patient
        ("IM-0115.jpeg", "IM-0115.jpeg"),  # no image number after the patient
        ("xperson1_virus_1.jpeg", "xperson1_virus_1.jpeg"),  # patterns anchor at the start
    ],
)
def test_patient_id(name: str, patient: str) -> None:
    assert patient_id(name) == patient


@pytest.mark.parametrize(
    ("name", "label", "metadata"),
    [
        ("person1_bacteria_1.jpeg", 1, ("person1", "bacteria", "person")),
        ("person12_virus_3.jpeg", 1, ("person12", "virus", "person")),
        ("Person3_VIRUS_7.jpeg", 1, ("Person3", "virus", "person")),
        ("IM-0115-0001.jpeg", 0, ("IM-0115", "normal", "IM")),
        ("im-0115-0001.jpeg", 0, ("im-0115", "normal", "IM")),
        ("NORMAL2-IM-0372-0001.jpeg", 0, ("NORMAL2-IM-0372", "normal", "NORMAL2")),
        ("person5_bacteria_2.jpeg", 0, ("person5", "normal", "person")),  # the label decides 'normal'
        ("IM-0001-0001.jpeg", 1, ("IM-0001", None, "IM")),  # pneumonia without a stated subtype
        ("scan.png", 1, ("scan.png", None, None)),
        ("scan.png", 0, ("scan.png", "normal", None)),
        ("IMAGE-1.png", 1, ("IMAGE-1.png", None, None)),  # 'IM' must be followed by '-', '_' or a digit
        ("NORMAL2.png", 0, ("NORMAL2.png", "normal", None)),
        ("person_bacteria_1.png", 1, ("person_bacteria_1.png", "bacteria", "person")),
        ("a_virus_b.png", 1, ("a_virus_b.png", "virus", None)),
        ("virus_1.png", 1, ("virus_1.png", None, None)),  # the subtype is a whole '_word_'
    ],
)
def test_file_metadata(name: str, label: int, metadata: tuple[str, str | None, str | None]) -> None:
    assert file_metadata(name, label) == metadata


def _records(n_patients: int = 200) -> list[Record]:
    records = []
    for p in range(n_patients):
        label = int(p % 4 != 0)  # 75 % pneumonia, like the Kermany train split
        for image in range(1 + p % 3):  # patients with 1-3 films
            records.append(Record(f"f{p}_{image}", label, f"patient{p}"))
    return records


def _patients(records: list[Record], label: int | None = None) -> set[str]:
    return {r.patient for r in records if label is None or r.label == label}


# --- carve_validation ------------------------------------------------------------------------------------------


def test_validation_split_never_shares_a_patient_and_keeps_class_balance() -> None:
    records = _records()
    train, val = carve_validation(records, fraction=0.2, seed=1)
    assert sorted(train + val, key=records.index) == records  # a partition: nothing lost, nothing twice
    assert not _patients(train) & _patients(val)
    share = len(val) / len(records)
    assert 0.14 < share < 0.26
    prevalence = sum(r.label for r in records) / len(records)
    assert abs(sum(r.label for r in val) / len(val) - prevalence) < 0.06
    for label in (0, 1):  # both classes are represented on both sides
        assert _patients(train, label) and _patients(val, label)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.25])
def test_the_fraction_sets_the_validation_share_of_patients(fraction: float) -> None:
    """One fold of round(1 / fraction) folds (StratifiedGroupKFold) becomes validation."""
    records = _records(400)
    _, val = carve_validation(records, fraction, seed=0)
    assert len(_patients(val)) / 400 == pytest.approx(fraction, abs=0.01)


def test_validation_split_is_seeded() -> None:
    records = _records()
    assert carve_validation(records, 0.2, seed=5) == carve_validation(records, 0.2, seed=5)
    assert carve_validation(records, 0.2, seed=5)[1] != carve_validation(records, 0.2, seed=6)[1]


@pytest.mark.parametrize("fraction", [0.0, -0.1, 0.5, 0.7, 1.0])
def test_validation_fraction_must_be_below_one_half(fraction: float) -> None:
    with pytest.raises(PneumoscanError) as info:
        carve_validation(_records(), fraction, seed=0)
    assert str(info.value) == f"validation fraction must be in (0, 0.5), got {fraction}"


def test_too_few_patients_is_a_clear_error() -> None:
    records = [Record("a", 0, "p1"), Record("b", 1, "p2"), Record("c", 1, "p3")]
    with pytest.raises(PneumoscanError) as info:
        carve_validation(records, 0.2, seed=0)
    assert str(info.value) == "too few patients to carve a 20% validation split (1 normal, 2 pneumonia patients)"


def test_each_class_needs_as_many_patients_as_folds() -> None:
    """fraction 0.25 means 4 folds: 4 patients per class suffice, 3 of one class do not (patients, not images)."""
    enough = [Record(f"{c}{p}_{i}", c, f"{c}-{p}") for c in (0, 1) for p in range(4) for i in range(3)]
    train, val = carve_validation(enough, 0.25, seed=0)
    assert len(_patients(val)) == 2 and {r.label for r in val} == {0, 1}
    short = [r for r in enough if r.patient != "0-3"]
    with pytest.raises(PneumoscanError) as info:
        carve_validation(short, 0.25, seed=0)
    assert str(info.value) == "too few patients to carve a 25% validation split (3 normal, 4 pneumonia patients)"


# --- patient_subset -----------------------------------------------------------------------------------------------


def test_full_fraction_keeps_everything_in_order() -> None:
    records = _records(40)
    subset = patient_subset(records, 1.0, seed=3)
    assert subset == records and subset is not records


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.01, 2.0])
def test_subset_fraction_must_be_in_zero_one(fraction: float) -> None:
    with pytest.raises(PneumoscanError) as info:
        patient_subset(_records(20), fraction, seed=0)
    assert str(info.value) == f"training fraction must be in (0, 1], got {fraction}"


def test_subset_keeps_whole_patients_per_class_in_record_order() -> None:
    records = _records(200)  # 50 normal and 150 pneumonia patients
    subset = patient_subset(records, 0.1, seed=0)
    kept = _patients(subset)
    assert len(_patients(subset, 0)) == 5 and len(_patients(subset, 1)) == 15  # stratified: a tenth of each class
    assert subset == [r for r in records if r.patient in kept]  # every image of a kept patient, in order
    per_patient = Counter(r.patient for r in records)
    assert all(Counter(r.patient for r in subset)[p] == per_patient[p] for p in kept)


def test_subset_rounds_and_keeps_at_least_one_patient_per_class() -> None:
    records = _records(40)  # 10 normal, 30 pneumonia patients
    assert [len(_patients(patient_subset(records, f, seed=1), c)) for f in (0.25, 0.35) for c in (0, 1)] == [
        2, 8, 4, 10]  # round(2.5) = 2 (to even), round(7.5) = 8, round(3.5) = 4, round(10.5) = 10
    tiny = patient_subset(records, 0.01, seed=1)
    assert len(_patients(tiny, 0)) == 1 and len(_patients(tiny, 1)) == 1


def test_subsets_are_seeded_and_nested() -> None:
    records = _records(200)
    assert patient_subset(records, 0.3, seed=4) == patient_subset(records, 0.3, seed=4)
    assert patient_subset(records, 0.3, seed=4) != patient_subset(records, 0.3, seed=5)
    sizes = (0.1, 0.25, 0.5, 0.8, 1.0)
    subsets = [_patients(patient_subset(records, f, seed=4)) for f in sizes]
    for smaller, larger in zip(subsets, subsets[1:], strict=False):
        assert smaller < larger  # a smaller budget's patients lie inside a larger one's


def test_subset_is_reproducible_across_releases() -> None:
    """A data-budget study names its subset by (fraction, split_seed); the draw must not change under it."""
    records = [Record(f"n{p}", 0, f"n{p}") for p in range(5)] + [Record(f"q{p}", 1, f"q{p}") for p in range(8)]
    assert [r.patient for r in patient_subset(records, 0.5, seed=0)] == GOLDEN_SUBSET


GOLDEN_SUBSET = ["n0", "n1", "q0", "q3", "q4", "q7"]


def test_subset_of_records_without_one_class() -> None:
    only_pneumonia = [Record(f"q{p}", 1, f"q{p}") for p in range(10)]
    assert len(patient_subset(only_pneumonia, 0.3, seed=0)) == 3
