"""The site-adaptation methods (AdaBN, TENT, self-training); the command is pneumoscan.pipeline.adapt.

Label-free adaptation of a trained model to one site's own images.

Films from another machine or hospital differ first in their intensity statistics, and a
network's BatchNorm layers hold the training site's statistics. Two standard, label-free steps:

- **AdaBN** (Li et al. 2016): re-estimate every BatchNorm layer's running mean and variance on
  the site's images; nothing else changes. The independent test measurement of this project's
  first shipped model moved from specificity 0.65 to 0.79 with this step alone.
- **TENT** (Wang et al. 2021): a few passes of entropy minimisation over the BatchNorm affine
  parameters only (every other weight frozen), using batch statistics, then AdaBN again so the
  stored running statistics match. It sharpens confident predictions at the site; it is optional
  because on a small site it can also sharpen mistakes.
- **Self-training** (pseudo-labels, with the information-maximisation idea of SHOT: Liang et al. 2020,
  "Do we really need to access the source data?"): AdaBN only moves statistics, and it can fail
  when the class mix moves too, because a site with more normal films has different feature
  statistics for the same machine. Self-training learns the BatchNorm scales and shifts from the
  site's own most confident films: a fixed share of each class, in the proportions of the site's
  estimated prevalence (never 50/50 by assumption), plus a diversity term that keeps the mean
  prediction at that prevalence (SHOT pulls it to a uniform prior; a site's prevalence may differ
  from training, so here it is pulled to the estimate). The site's films are augmented while
  training, with the framing preset by default, so the adapted model stays blind to framing. The
  classifier head and every convolution stay frozen (as SHOT freezes its head): too few site films
  to move more without drifting. The prevalence shift is added to the logits while training, so
  the stored model stays calibrated to the training prevalence and the threshold rules (and the
  EM prior) mean what they meant before.

None reads a label. All work on the model in place.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pneumoscan.data.augment import augment, augment_preset, build_augmentation
from pneumoscan.data.framing_swaps import FRAMING_SWAPS
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.errors import PneumoscanError
from pneumoscan.models.inference import predict_with

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


@dataclass(frozen=True)
class SelfTrainingSettings:
    """How self-training runs: passes over the site, Adam's step, the share of films pseudo-labelled, the
    diversity term's weight and the augmentation preset applied to the site's films."""

    epochs: int = 5
    lr: float = 5e-3
    confident_share: float = 0.5
    diversity_weight: float = 1.0
    augment: str = "framing"
    batch_size: int = 64


@dataclass(frozen=True)
class SelfTrainingSteps:
    """What self-training did: passes, films pseudo-labelled per pass (of each class), the mean loss of the first
    and the last pass."""

    epochs: int
    pseudo_pneumonia: int
    pseudo_normal: int
    loss_first: float
    loss_last: float


def log_odds(probability: float) -> float:
    probability = min(max(probability, 1e-6), 1 - 1e-6)
    return math.log(probability / (1 - probability))


def confident_pseudo_labels(probabilities: np.ndarray, prevalence: float,
                            share: float) -> tuple[np.ndarray, np.ndarray]:
    """(indices, pseudo-labels) of the most confident films: `share` of the films, split between the classes in
    the proportions of `prevalence`, the highest probabilities called pneumonia and the lowest normal."""
    count = len(probabilities)
    positives = round(share * prevalence * count)
    negatives = min(round(share * (1 - prevalence) * count), count - positives)
    order = np.argsort(probabilities, kind="stable")
    chosen = np.concatenate([order[count - positives:], order[:negatives]]).astype(np.int64)
    labels = np.concatenate([np.ones(positives), np.zeros(negatives)]).astype(np.float32)
    return chosen, labels


def _diversity(probabilities: torch.Tensor, prevalence: float) -> torch.Tensor:
    """Binary KL(prevalence || batch-mean prediction): zero when the batch's mean prediction is the prevalence."""
    mean = probabilities.mean().clamp(1e-6, 1 - 1e-6)
    return prevalence * torch.log(prevalence / mean) + (1 - prevalence) * torch.log((1 - prevalence) / (1 - mean))


def self_train(model: nn.Module, images: torch.Tensor, preprocess: Preprocess, training_prevalence: float,
               site_prevalence: float, settings: SelfTrainingSettings | None = None,
               seed: int = 0) -> SelfTrainingSteps:
    """Self-training on the site's confident pseudo-labels plus the diversity term, over the BatchNorm scales and
    shifts only (batch statistics while training); run AdaBN after it. Pseudo-labels are redrawn before each pass
    from the current model, on the unaugmented films. Seeded: the same call gives the same weights."""
    settings = settings or SelfTrainingSettings()
    layers = batchnorm_layers(model)
    parameters = [p for layer in layers for p in (layer.weight, layer.bias) if p is not None]
    if not parameters:
        raise PneumoscanError("self-training needs BatchNorm layers with learnable scales and shifts; this model "
                              "has none")
    shift = log_odds(site_prevalence) - log_odds(training_prevalence)  # the site's prior on the logits
    prevalence = min(max(site_prevalence, 1e-3), 1 - 1e-3)
    augmentation = build_augmentation(augment_preset(settings.augment))
    requires = {name: p.requires_grad for name, p in model.named_parameters()}
    trainable = {id(p) for p in parameters}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    optimizer = torch.optim.Adam(parameters, lr=settings.lr)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    counts = (0, 0)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the augmentation draws from the global generator
            for _ in range(settings.epochs):
                scores = predict_with(model, preprocess.normalize, images, batch_size=settings.batch_size)
                chosen, labels = confident_pseudo_labels(
                    1 / (1 + np.exp(-(_logits(scores) + shift))), prevalence, settings.confident_share)
                counts = (int(labels.sum()), int(len(labels) - labels.sum()))
                targets = torch.full((len(images),), float("nan"))
                targets[torch.from_numpy(chosen)] = torch.from_numpy(labels)
                losses.append(_self_training_pass(model, images, preprocess, targets, shift, prevalence, settings,
                                                  augmentation, optimizer, generator))
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(requires[name])
        model.eval()
    return SelfTrainingSteps(epochs=settings.epochs, pseudo_pneumonia=counts[0], pseudo_normal=counts[1],
                             loss_first=round(losses[0], 6) if losses else float("nan"),
                             loss_last=round(losses[-1], 6) if losses else float("nan"))


def _logits(probabilities: np.ndarray) -> np.ndarray:
    clipped = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(clipped / (1 - clipped))


def _self_training_pass(model: nn.Module, images: torch.Tensor, preprocess: Preprocess, targets: torch.Tensor,
                        shift: float, prevalence: float, settings: SelfTrainingSettings, augmentation: nn.Module,
                        optimizer: torch.optim.Optimizer, generator: torch.Generator) -> float:
    """One pass over the augmented site films: cross-entropy on the pseudo-labelled ones (targets not NaN) plus the
    diversity term over the whole batch; returns the pass's mean loss."""
    model.eval()
    for layer in batchnorm_layers(model):
        layer.train()
    order = torch.randperm(len(images), generator=generator)
    total, seen = 0.0, 0
    for start in range(0, len(order), settings.batch_size):
        index = order[start : start + settings.batch_size]
        if len(index) < 2:
            continue
        pixels = augment(augmentation, images[index].float().div(255.0))
        logits = model(preprocess.normalize(pixels).contiguous(memory_format=torch.channels_last)).float().squeeze(1)
        logits = logits + shift
        target = targets[index]
        labelled = ~torch.isnan(target)
        loss = settings.diversity_weight * _diversity(torch.sigmoid(logits), prevalence)
        if labelled.any():
            loss = loss + nn.functional.binary_cross_entropy_with_logits(logits[labelled], target[labelled])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, seen = total + float(loss.detach()) * len(index), seen + len(index)
    model.eval()
    return total / max(seen, 1)


@torch.no_grad()
def framing_flip_share(model: nn.Module, images: torch.Tensor, preprocess: Preprocess, threshold: float,
                       seed: int = 0) -> float:
    """Share of (film, framing swap) pairs whose call flips, each swap of FRAMING_SWAPS applied to the films the
    model itself calls its target class (zoom in and a pasted marker to the films it calls normal, zoom out onto
    black to those it calls pneumonia): the project's framing-swap figures with the model's own unswapped call in
    place of the label, so no label is read. 0 when no film is called a swap's class. Deterministic for a seed."""
    called = predict_with(model, preprocess.normalize, images) >= threshold
    flipped, pairs = 0, 0
    for swap in FRAMING_SWAPS:
        chosen = np.flatnonzero(called == bool(swap.target))
        if len(chosen) == 0:
            continue
        swapped = swap.apply(images[torch.from_numpy(chosen)], seed)
        flipped += int(np.sum((predict_with(model, preprocess.normalize, swapped) >= threshold) != called[chosen]))
        pairs += len(chosen)
    return flipped / pairs if pairs else 0.0
