"""Class-imbalance handling: the Kermany train split is 74 % pneumonia.

`none`: plain BCE. `weighted`: BCE with the positive class weighted n_normal / n_pneumonia, so
both classes carry equal total weight. `sampler`: batches drawn with replacement so each class is
seen equally often. `focal`: MONAI's sigmoid focal loss (gamma 2), which down-weights easy
examples, most of which are the majority class.
"""

from collections.abc import Callable

import torch
from torch.nn import functional as F

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss(mode: str, labels: torch.Tensor, device: torch.device | str = "cpu") -> LossFunction:
    """A loss on logits (N,) and float targets (N,) for the given mode, computed on `device`."""
    if mode == "weighted":
        positives = float(labels.sum())
        pos_weight = torch.tensor((len(labels) - positives) / max(positives, 1.0), device=device)
        return lambda logits, targets: F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)
    if mode == "focal":
        from monai.losses import FocalLoss

        focal = FocalLoss(gamma=2.0, use_softmax=False)
        return lambda logits, targets: focal(logits[:, None], targets[:, None])
    return F.binary_cross_entropy_with_logits


def epoch_order(mode: str, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices for one epoch: a permutation, or a class-balanced draw with replacement."""
    if mode != "sampler":
        return torch.randperm(len(labels), generator=generator)
    positives = labels.sum()
    weights = torch.where(labels > 0.5, 1.0 / positives, 1.0 / (len(labels) - positives))
    return torch.multinomial(weights, len(labels), replacement=True, generator=generator)
