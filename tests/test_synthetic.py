import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from pneumoscan.data.sources import FolderSource
from pneumoscan.data.synthetic import SyntheticSource, SyntheticSpec
from pneumoscan.errors import PneumoscanError


def test_generator_is_deterministic_and_seeded() -> None:
    a = SyntheticSource(SyntheticSpec(n_per_class=6, size=64, seed=1))
    b = SyntheticSource(SyntheticSpec(n_per_class=6, size=64, seed=1))
    c = SyntheticSource(SyntheticSpec(n_per_class=6, size=64, seed=2))
    record = a.splits["train"][-1]
    assert a.splits == b.splits
    assert np.array_equal(a.read(record, 64), b.read(record, 64))
    assert not np.array_equal(a.read(record, 64), c.read(c.splits["train"][-1], 64))


def test_splits_sizes_and_patients_are_disjoint() -> None:
    source = SyntheticSource(SyntheticSpec(n_per_class=40, size=64))
    counts = {name: (sum(1 - r.label for r in rs), sum(r.label for r in rs)) for name, rs in source.splits.items()}
    assert counts == {"train": (40, 40), "val": (8, 8), "test": (10, 10)}
    patients = [{r.patient for r in rs} for rs in source.splits.values()]
    assert not (patients[0] & patients[1]) and not (patients[0] & patients[2]) and not (patients[1] & patients[2])
    assert len(patients[0]) < 80  # some patients have several films, so grouping matters


def test_opacity_mask_only_for_pneumonia_and_inside_the_chest() -> None:
    source = SyntheticSource(SyntheticSpec(n_per_class=8, size=96))
    for record in source.splits["train"]:
        image, mask = source.render(record)
        assert image.shape == mask.shape == (96, 96)
        if record.label == 0:
            assert not mask.any()
        else:
            assert mask.any()
            assert not mask[:, :8].any() and not mask[:, -8:].any()  # never outside the body
            assert image[mask].mean() > np.median(image) * 0.5


def test_pixel_means_do_not_reveal_the_class() -> None:
    source = SyntheticSource(SyntheticSpec(n_per_class=150, size=64))
    records = source.splits["train"]
    means = np.array([[source.read(r, 64).mean()] for r in records])
    labels = np.array([r.label for r in records])
    accuracy = cross_val_score(LogisticRegression(), means, labels, cv=5).mean()
    assert accuracy < 0.65, f"a brightness-only classifier reached {accuracy:.2f}"


def test_written_dataset_has_the_kaggle_layout(tiny_synthetic) -> None:  # type: ignore[no-untyped-def]
    source = FolderSource(tiny_synthetic)
    assert sorted(source.splits) == ["test", "train", "val"]
    assert len(source.splits["train"]) == 48
    assert (tiny_synthetic / "synthetic.json").is_file()
    assert source.read(source.splits["test"][0], 32).shape == (32, 32)


def test_adult_anatomy_is_seeded_and_differs_from_the_child_default() -> None:
    """`age` defaults to child (the films other tests pin); adult films share the seeds but not the body."""
    from pneumoscan.data.registry import open_source

    child = SyntheticSource(SyntheticSpec(n_per_class=4, size=64, seed=1))
    explicit = SyntheticSource(SyntheticSpec(n_per_class=4, size=64, seed=1, age="child"))
    adult = open_source("synthetic:n_per_class=4,size=64,seed=1,age=adult")
    assert isinstance(adult, SyntheticSource) and adult.spec.age == "adult" and "age=adult" in adult.name
    record = child.splits["train"][0]
    assert np.array_equal(child.read(record, 64), explicit.read(record, 64))
    assert np.array_equal(adult.read(record, 64), adult.read(record, 64))
    assert not np.array_equal(child.read(record, 64), adult.read(record, 64))
    with pytest.raises(PneumoscanError, match="age"):
        SyntheticSpec(age="elderly")
