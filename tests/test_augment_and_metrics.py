import numpy as np
import pytest
import torch

from pneumoscan.data.augment import AugmentConfig, augment, build_augmentation
from pneumoscan.evaluation.metrics import binary_metrics
from pneumoscan.evaluation.temporal import weekly_metrics


def test_augmentation_is_seeded_and_keeps_shape_and_range() -> None:
    images = torch.rand(4, 1, 48, 48)
    module = build_augmentation(AugmentConfig())
    torch.manual_seed(1)
    a = augment(module, images.clone())
    torch.manual_seed(1)
    b = augment(module, images.clone())
    assert a.shape == images.shape and torch.equal(a, b)
    assert not torch.allclose(a, images)
    assert a.min() >= 0 and a.max() <= 1


def test_flip_is_off_by_default_and_augmentation_can_be_disabled() -> None:
    assert "RandomHorizontalFlip" not in repr(build_augmentation(AugmentConfig()))
    assert "RandomHorizontalFlip" in repr(build_augmentation(AugmentConfig(hflip=True)))
    images = torch.rand(2, 1, 16, 16)
    assert torch.equal(augment(build_augmentation(AugmentConfig(enabled=False)), images.clone()), images)


def test_binary_metrics_on_a_known_confusion() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    probs = np.array([0.1, 0.2, 0.3, 0.7, 0.9, 0.8, 0.6, 0.55, 0.4, 0.2])
    m = binary_metrics(labels, probs, threshold=0.5)
    assert m["confusion_matrix"] == {"tn": 3, "fp": 1, "fn": 2, "tp": 4}
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["sensitivity"] == pytest.approx(4 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))
    assert 0.5 < m["roc_auc"] < 1.0


def test_a_missing_class_gives_none_not_zero() -> None:
    m = binary_metrics(np.ones(5), np.full(5, 0.9), threshold=0.5)
    assert m["specificity"] is None and m["roc_auc"] is None and m["sensitivity"] == 1.0


def test_weeks_partition_the_set_in_a_seeded_order() -> None:
    labels = np.array([0] * 50 + [1] * 50)
    probs = labels * 0.8 + 0.1
    weeks = weekly_metrics(labels, probs, 0.5, weeks=4, seed=0)
    assert [w["n_images"] for w in weeks] == [25, 25, 25, 25]
    assert all(w["accuracy"] == 1.0 for w in weeks)
    assert all(0 < w["prevalence"] < 1 for w in weeks)  # shuffled arrival, not folder order


def test_shift_preset_adds_exposure_noise_and_blur() -> None:
    module = build_augmentation(AugmentConfig.for_shift())
    names = repr(module)
    assert all(name in names for name in ("RandomGamma", "RandomGaussianNoise", "RandomGaussianBlur"))
    assert "RandomGamma" not in repr(build_augmentation(AugmentConfig()))
    torch.manual_seed(0)
    out = augment(module, torch.rand(8, 1, 40, 40))
    assert out.shape == (8, 1, 40, 40) and out.min() >= 0 and out.max() <= 1
