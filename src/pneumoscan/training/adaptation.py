"""Label-free adaptation of a trained model to one site's own images.

Films from another machine or hospital differ first in their intensity statistics, and a
network's BatchNorm layers hold the training site's statistics. Two standard, label-free steps:

- **AdaBN** (Li et al. 2016): re-estimate every BatchNorm layer's running mean and variance on
  the site's images; nothing else changes. The independent test measurement of this project's
  first shipped model moved from specificity 0.65 to 0.79 with this step alone.
- **TENT** (Wang et al. 2021): a few passes of entropy minimisation over the BatchNorm affine
  parameters only (every other weight frozen), using batch statistics, then AdaBN again so the
  stored running statistics match. It sharpens confident predictions at the site; it is optional
  because on a small site it can also sharpen mistakes.

Neither reads a label. Both work on the model in place.
"""

from dataclasses import dataclass

import torch
from torch import nn

from pneumoscan.data.preprocess import Preprocess
from pneumoscan.errors import PneumoscanError

_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class AdaptationSteps:
    """What was done to a model: BatchNorm layers re-estimated, TENT passes and the loss they reached."""

    batchnorm_layers: int
    tent_steps: int
    tent_entropy_before: float | None = None
    tent_entropy_after: float | None = None


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [module for module in model.modules() if isinstance(module, _BATCHNORM)]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, preprocess: Preprocess,
                          batch_size: int = 64, seed: int = 0) -> int:
    """AdaBN: every BatchNorm layer's running statistics become the average over batches of `images`
    (uint8, N x 1 x S x S) in a seeded random order (files sorted by class folder would otherwise give
    one-class batches, whose variances miss the spread between classes); returns the number of layers
    re-estimated. The model ends in eval mode."""
    layers = batchnorm_layers(model)
    saved = [(layer.momentum, layer.track_running_stats) for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # None: a cumulative average over every batch, not an exponential one
    model.eval()
    for layer in layers:
        layer.train()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(images), batch_size):
        batch = images[order[start : start + batch_size]]
        if len(batch) < 2:
            continue
        model(preprocess.normalize(batch).contiguous(memory_format=torch.channels_last))
    for layer, (momentum, _) in zip(layers, saved, strict=True):
        layer.momentum = momentum
    model.eval()
    return len(layers)


def _binary_entropy(logits: torch.Tensor) -> torch.Tensor:
    probability = torch.sigmoid(logits)
    return -(probability * nn.functional.logsigmoid(logits) + (1 - probability) * nn.functional.logsigmoid(-logits))


def tent(model: nn.Module, images: torch.Tensor, preprocess: Preprocess, steps: int, lr: float = 1e-3,
         batch_size: int = 64, seed: int = 0) -> tuple[float, float]:
    """`steps` passes of entropy minimisation over the BatchNorm scales and shifts; returns the mean
    entropy (nats) of the first and the last pass. Other parameters are untouched."""
    layers = batchnorm_layers(model)
    parameters = [p for layer in layers for p in (layer.weight, layer.bias) if p is not None]
    if not parameters:
        raise PneumoscanError("TENT needs BatchNorm layers with learnable scales and shifts; this model has none")
    frozen = {id(p) for p in parameters}
    requires = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in frozen)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    for layer in layers:
        layer.train()  # batch statistics, as TENT prescribes
    entropies: list[float] = []
    try:
        for _ in range(steps):
            order = torch.randperm(len(images), generator=generator)
            total, seen = 0.0, 0
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                if len(index) < 2:
                    continue
                logits = model(preprocess.normalize(images[index]).contiguous(memory_format=torch.channels_last))
                loss = _binary_entropy(logits.float().squeeze(1)).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, seen = total + float(loss.detach()) * len(index), seen + len(index)
            entropies.append(total / max(seen, 1))
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(requires[name])
        model.eval()
    return (entropies[0], entropies[-1]) if entropies else (float("nan"), float("nan"))


def adapt_model(model: nn.Module, images: torch.Tensor, preprocess: Preprocess, tent_steps: int = 0,
                tent_lr: float = 1e-3, seed: int = 0) -> AdaptationSteps:
    """AdaBN, then (if asked) TENT followed by AdaBN again so the stored statistics are the site's."""
    layers = recalibrate_batchnorm(model, images, preprocess, seed=seed)
    if tent_steps <= 0:
        return AdaptationSteps(batchnorm_layers=layers, tent_steps=0)
    before, after = tent(model, images, preprocess, tent_steps, lr=tent_lr, seed=seed)
    recalibrate_batchnorm(model, images, preprocess, seed=seed)
    return AdaptationSteps(batchnorm_layers=layers, tent_steps=tent_steps, tent_entropy_before=round(before, 6),
                           tent_entropy_after=round(after, 6))
