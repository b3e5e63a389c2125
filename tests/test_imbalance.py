import pytest
import torch
from torch.nn import functional as F

from pneumoscan.training.imbalance import IMBALANCE_MODES, epoch_order, make_loss

LABELS = torch.tensor([1.0] * 75 + [0.0] * 25)  # 75 % positive, like the Kermany train split


def test_weighted_loss_gives_both_classes_equal_total_weight() -> None:
    loss = make_loss("weighted", LABELS)
    logits = torch.zeros(100)
    positives_only = loss(logits[:75], LABELS[:75]) * 75
    negatives_only = loss(logits[75:], LABELS[75:]) * 25
    # pos_weight = 25/75, so at logits 0 the two classes' summed losses are equal (and unweighted they are 3:1)
    assert torch.isclose(positives_only, negatives_only, rtol=1e-5)
    plain = make_loss("none", LABELS)
    assert torch.isclose(plain(logits[:75], LABELS[:75]) * 75, 3 * plain(logits[75:], LABELS[75:]) * 25)


def test_focal_loss_down_weights_easy_examples() -> None:
    focal, bce = make_loss("focal", LABELS), make_loss("none", LABELS)
    easy, hard = torch.tensor([4.0]), torch.tensor([-1.0])
    target = torch.tensor([1.0])
    assert focal(easy, target) / bce(easy, target) < focal(hard, target) / bce(hard, target)
    assert bce is F.binary_cross_entropy_with_logits


def test_balanced_sampler_draws_each_class_about_equally() -> None:
    generator = torch.Generator().manual_seed(0)
    draws = torch.cat([epoch_order("sampler", LABELS, generator) for _ in range(40)])
    share = LABELS[draws].mean().item()
    assert 0.45 < share < 0.55
    assert sorted(epoch_order("none", LABELS, generator).tolist()) == list(range(100))


@pytest.mark.parametrize("mode", IMBALANCE_MODES)
def test_every_mode_trains_through_the_cli(mode: str, tiny_synthetic, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pneumoscan.cli.main import main

    assert main(["train", "--data", str(tiny_synthetic), "--imbalance", mode, "--image-size", "32", "--epochs", "1",
                 "--val-fraction", "0.25", "--out", str(tmp_path / mode)]) == 0
