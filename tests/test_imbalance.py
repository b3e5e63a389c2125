"""Class-imbalance modes: what each does to the loss and the sampling, and the prior the bundle records."""

import csv
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from conftest import TINY, quiet
from pneumoscan.config import IMBALANCE_MODES, TrainConfig
from pneumoscan.data.sources import FolderSource
from pneumoscan.models.bundle import load_bundle
from pneumoscan.pipeline.study import StudyResult, Variation, run_study
from pneumoscan.training.imbalance import epoch_order, make_loss

LABELS = torch.tensor([1.0] * 75 + [0.0] * 25)  # 75 % positive, like the Kermany train split


def test_weighted_loss_weights_positives_by_the_class_ratio() -> None:
    loss = make_loss("weighted", LABELS)
    logits = torch.randn(100, generator=torch.Generator().manual_seed(0))
    expected = F.binary_cross_entropy_with_logits(logits, LABELS, pos_weight=torch.tensor(25 / 75))
    assert torch.isclose(loss(logits, LABELS), expected)
    assert not torch.isclose(loss(logits, LABELS), F.binary_cross_entropy_with_logits(logits, LABELS))
    # at logits 0 both classes then carry the same total loss (unweighted they are 3:1)
    zeros = torch.zeros(100)
    assert torch.isclose(loss(zeros[:75], LABELS[:75]) * 75, loss(zeros[75:], LABELS[75:]) * 25, rtol=1e-5)
    plain = make_loss("none", LABELS)
    assert torch.isclose(plain(zeros[:75], LABELS[:75]) * 75, 3 * plain(zeros[75:], LABELS[75:]) * 25)
    # the ratio comes from the labels the loss is made for
    minority = make_loss("weighted", torch.tensor([1.0, 0.0, 0.0, 0.0]))
    one = torch.tensor([0.3])
    assert torch.isclose(minority(one, torch.ones(1)), 3 * F.binary_cross_entropy_with_logits(one, torch.ones(1)))


@pytest.mark.parametrize("mode", ["none", "sampler"])
def test_plain_and_sampler_modes_use_plain_cross_entropy(mode: str) -> None:
    assert make_loss(mode, LABELS) is F.binary_cross_entropy_with_logits


def test_focal_loss_is_the_gamma_2_focal_loss_and_spares_easy_examples() -> None:
    focal, bce = make_loss("focal", LABELS), make_loss("none", LABELS)
    logits = torch.tensor([4.0, -1.0, 0.5, -3.0])
    targets = torch.tensor([1.0, 1.0, 0.0, 0.0])
    p = torch.sigmoid(logits)
    p_true = torch.where(targets == 1, p, 1 - p)
    assert torch.isclose(focal(logits, targets), torch.mean((1 - p_true) ** 2 * -torch.log(p_true)), rtol=1e-5)
    easy, hard, target = torch.tensor([4.0]), torch.tensor([-1.0]), torch.tensor([1.0])
    assert focal(easy, target) / bce(easy, target) == pytest.approx((1 - torch.sigmoid(easy)).item() ** 2, rel=1e-4)
    assert focal(easy, target) / bce(easy, target) < 0.001 < focal(hard, target) / bce(hard, target)


def test_balanced_sampler_draws_each_class_about_equally() -> None:
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([epoch_order("sampler", LABELS, generator) for _ in range(40)])
    assert draws.shape == (40, 100)  # an epoch has as many draws as images
    assert 0.45 < LABELS[draws].mean().item() < 0.55  # instead of 0.75
    assert any(len(set(row.tolist())) < 100 for row in draws)  # with replacement
    assert set(draws.flatten().tolist()) == set(range(100))  # yet every image is drawn sometime


@pytest.mark.parametrize("mode", ["none", "weighted", "focal"])
def test_other_modes_visit_each_image_once_per_epoch_in_a_seeded_order(mode: str) -> None:
    first = epoch_order(mode, LABELS, torch.Generator().manual_seed(3))
    assert sorted(first.tolist()) == list(range(100))
    assert torch.equal(first, epoch_order(mode, LABELS, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, epoch_order(mode, LABELS, torch.Generator().manual_seed(4)))


@pytest.fixture(scope="module")
def imbalance_study(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> StudyResult:
    """Every mode trained for one epoch on a 75 % pneumonia training split (official val/ for validation)."""
    source = FolderSource(tiny_synthetic)
    train = [r for r in source.splits["train"] if r.label == 1] + [r for r in source.splits["train"]
                                                                    if r.label == 0][:8]
    folder = tmp_path_factory.mktemp("imbalanced")
    with (folder / "split.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "patient", "label", "split"])
        for split, records in (("train", train), ("val", source.splits["val"])):
            writer.writerows([r.source, r.patient, ("NORMAL", "PNEUMONIA")[r.label], split] for r in records)
    base = TrainConfig(data=str(folder / "split.csv"), val_source="official", threshold_policy="balanced",
                       **{**TINY, "epochs": 1})
    return run_study(base, [Variation.parse("imbalance=" + ",".join(IMBALANCE_MODES))], 1, folder / "study", quiet())


def test_each_mode_trains_and_records_the_prior_its_probabilities_are_calibrated_to(
        imbalance_study: StudyResult) -> None:
    priors = {}
    for cell in imbalance_study.cells:
        (run,) = cell.runs
        manifest = load_bundle(run.out_dir).manifest
        assert manifest.training is not None and manifest.training.config.imbalance == cell.overrides["imbalance"]
        assert manifest.training.data.train.pneumonia == 24 and manifest.training.data.train.images == 32
        priors[cell.overrides["imbalance"]] = manifest.training.calibrated_prior
        assert manifest.threshold == manifest.training.calibrated_prior  # the `balanced` policy
    assert priors == {"none": 0.75, "weighted": 0.5, "sampler": 0.5, "focal": 0.75}


def test_each_mode_changes_the_training(imbalance_study: StudyResult) -> None:
    first_loss = {cell.overrides["imbalance"]: cell.runs[0].history[0].train_loss for cell in imbalance_study.cells}
    assert len(set(first_loss.values())) == 4, first_loss  # same data, seed and initial weights; four trainings
    # focal loss is far smaller than cross-entropy on the same batches
    assert first_loss["focal"] < first_loss["none"] / 2
