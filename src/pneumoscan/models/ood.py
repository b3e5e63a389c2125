"""Out-of-distribution guard: "this does not look like the frontal chest X-rays I was trained on".

A classifier scores anything it is given; a photo or a blank page gets a confident P(pneumonia).
The guard needs no extra labelled data (Lee et al. 2018, "A simple unified framework for detecting
out-of-distribution samples"): at the end of each feature stage the architecture declares it summarises
the feature map by the mean and standard deviation of every channel, fits a Gaussian per class
with one shared, Ledoit-Wolf-shrunk covariance on the training images, and measures an image's
Mahalanobis distance to the nearest class mean. Early stages catch pixel-level oddities (noise,
flat images, inverted contrast), late ones semantic ones (not a chest). Each stage's distance is
standardized by its spread on the training images and the guard takes the largest; its threshold
is set on the validation X-rays at a stated false-alarm rate. Everything it needs travels in the
bundle as tensors.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import nn

from pneumoscan.data.streaming import iter_chunks, take
from pneumoscan.errors import PneumoscanError
from pneumoscan.models.modes import eval_mode

TENSOR_PREFIX = "ood."
# a covariance of a few hundred features needs thousands of images, not millions: beyond this the guard is fitted
# on a fixed sample of the training images, so its memory stays bounded on a dataset larger than memory
FIT_MAX_IMAGES = 20_000
Normalize = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def features_and_probabilities(model: nn.Module, layers: list[str], images: torch.Tensor, normalize: Normalize,
                               batch_size: int = 64) -> tuple[list[np.ndarray], np.ndarray]:
    """Per layer, (N, 2C): each channel's spatial mean and standard deviation; and the model's P(pneumonia)
    (N,) from the same forward pass (one pass serves the guard and the prediction). `images`: uint8
    (N, 1, S, S), in memory or streamed (pneumoscan.data.streaming), or float in [0, 1], normalized a batch at a
    time (a whole training set as float would take gigabytes)."""
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handles = [modules[name].register_forward_hook(
        lambda module, args, output, name=name: captured.__setitem__(name, output)) for name in layers]
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    probabilities = []
    try:
        with eval_mode(model):
            for batch in iter_chunks(images, batch_size):
                logits = model(normalize(batch).contiguous(memory_format=torch.channels_last))
                probabilities.append(torch.sigmoid(logits.float().squeeze(1)).numpy())
                for name in layers:
                    output = captured[name].float().flatten(2)
                    chunks[name].append(torch.cat([output.mean(2), output.std(2)], dim=1).numpy())
    finally:
        for handle in handles:
            handle.remove()
    empty = np.zeros(0, dtype=np.float32)
    return [np.concatenate(chunks[name]) for name in layers], np.concatenate(probabilities) if probabilities else empty


def stage_features(model: nn.Module, layers: list[str], images: torch.Tensor, normalize: Normalize,
                   batch_size: int = 64) -> list[np.ndarray]:
    """Per layer, (N, 2C): each channel's spatial mean and standard deviation (see features_and_probabilities)."""
    return features_and_probabilities(model, layers, images, normalize, batch_size)[0]


def _narrowed(model: nn.Module, layers: list[str], normalize: Normalize) -> tuple[nn.Module, list[str], Normalize]:
    """(module, layer names, normalize) that yield the same features of `layers` with the least computation."""
    from pneumoscan.models.ensemble import EnsembleModel

    if not isinstance(model, EnsembleModel):
        return model, layers, normalize
    indices = {name.split(".")[1] for name in layers if name.startswith("members.")}
    if len(indices) != 1 or not all(name.startswith("members.") for name in layers):
        return model, layers, normalize
    index = int(indices.pop())
    prefix = f"members.{index}."

    def member_normalize(images: torch.Tensor) -> torch.Tensor:
        return model.member_input(index, normalize(images))

    return model.members[index], [name[len(prefix):] for name in layers], member_normalize


METHOD = "Mahalanobis distance of per-stage channel statistics, class-conditional, tied Ledoit-Wolf covariance"


@dataclass(frozen=True)
class OodSettings:
    """What the manifest says about the guard; its tensors travel in the weights file."""

    layers: list[str]
    threshold: float
    false_alarm_rate: float
    method: str = METHOD


@dataclass
class OodGuard:
    layers: list[str]
    means: list[np.ndarray]  # per layer: (classes, D)
    precisions: list[np.ndarray]  # per layer: (D, D)
    centers: np.ndarray  # per layer: median training distance
    scales: np.ndarray  # per layer: spread (IQR) of training distances
    threshold: float
    false_alarm_rate: float

    def _distances(self, features: list[np.ndarray]) -> np.ndarray:
        """(N, layers): each layer's distance to its nearest class mean."""
        columns = []
        for feature, means, precision in zip(features, self.means, self.precisions, strict=True):
            per_class = [np.sum(((feature - mean) @ precision) * (feature - mean), axis=1) for mean in means]
            columns.append(np.sqrt(np.maximum(np.min(per_class, axis=0), 0.0)))
        return np.stack(columns, axis=1)

    def score_features(self, features: list[np.ndarray]) -> np.ndarray:
        return np.max((self._distances(features) - self.centers) / self.scales, axis=1)

    def score(self, model: nn.Module, images: torch.Tensor, normalize: Normalize) -> np.ndarray:
        """One score per image; above `threshold` means out of distribution. When every watched layer lies in
        one member of an ensemble, only that member runs (the same features, at a fraction of the cost)."""
        model, layers, normalize = _narrowed(model, self.layers, normalize)
        return self.score_features(stage_features(model, layers, images, normalize))

    def score_and_predict(self, model: nn.Module, images: torch.Tensor,
                          normalize: Normalize) -> tuple[np.ndarray, np.ndarray]:
        """(P(pneumonia), guard score) per image from one forward pass: half the cost of predicting and scoring
        apart (for an ensemble, whose guard watches its first member, the whole ensemble runs once)."""
        features, probabilities = features_and_probabilities(model, self.layers, images, normalize)
        return probabilities, self.score_features(features)

    def settings(self) -> OodSettings:
        return OodSettings(layers=list(self.layers), threshold=self.threshold, false_alarm_rate=self.false_alarm_rate)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"{TENSOR_PREFIX}centers": torch.from_numpy(self.centers),
                   f"{TENSOR_PREFIX}scales": torch.from_numpy(self.scales)}
        for index, (mean, precision) in enumerate(zip(self.means, self.precisions, strict=True)):
            tensors[f"{TENSOR_PREFIX}{index}.means"] = torch.from_numpy(mean)
            tensors[f"{TENSOR_PREFIX}{index}.precision"] = torch.from_numpy(precision)
        return tensors

    @classmethod
    def from_tensors(cls, settings: OodSettings, tensors: dict[str, torch.Tensor]) -> "OodGuard":
        layers = list(settings.layers)
        try:
            return cls(layers=layers,
                       means=[tensors[f"{TENSOR_PREFIX}{i}.means"].numpy() for i in range(len(layers))],
                       precisions=[tensors[f"{TENSOR_PREFIX}{i}.precision"].numpy() for i in range(len(layers))],
                       centers=tensors[f"{TENSOR_PREFIX}centers"].numpy(),
                       scales=tensors[f"{TENSOR_PREFIX}scales"].numpy(),
                       threshold=float(settings.threshold),
                       false_alarm_rate=float(settings.false_alarm_rate))
        except KeyError as missing:
            raise PneumoscanError(f"the bundle's out-of-distribution guard lacks tensor {missing}") from None


def fit_guard(model: nn.Module, layers: Sequence[str], normalize: Normalize, train_images: torch.Tensor,
              train_labels: np.ndarray, val_images: torch.Tensor, false_alarm_rate: float = 0.05) -> OodGuard:
    """Fit on the training images (not augmented) at the architecture's declared feature stages; threshold
    from the validation images."""
    layers = list(layers)
    if len(train_labels) > FIT_MAX_IMAGES:
        pick = np.sort(np.random.default_rng(0).choice(len(train_labels), FIT_MAX_IMAGES, replace=False))
        train_images, train_labels = take(train_images, torch.from_numpy(pick)), np.asarray(train_labels)[pick]
    train_features = stage_features(model, layers, train_images, normalize)
    # a stage whose map has shrunk to one pixel (a small input) has no spatial spread (its std is NaN): leave it out
    usable = [index for index, feature in enumerate(train_features) if np.isfinite(feature).all()]
    layers, train_features = [layers[i] for i in usable], [train_features[i] for i in usable]
    labels = np.asarray(train_labels).astype(int)
    means, precisions = [], []
    for feature in train_features:
        class_means = np.stack([feature[labels == c].mean(0) for c in np.unique(labels)])
        centered = feature - class_means[np.searchsorted(np.unique(labels), labels)]
        precisions.append(LedoitWolf(assume_centered=True).fit(centered).precision_.astype(np.float32))
        means.append(class_means.astype(np.float32))
    guard = OodGuard(layers, means, precisions, np.zeros(len(layers)), np.ones(len(layers)), 0.0, false_alarm_rate)
    distances = guard._distances(train_features)
    low, guard.centers, high = np.percentile(distances, [25, 50, 75], axis=0)
    guard.scales = np.maximum(high - low, 1e-6)
    # "higher": a validation score is never above the threshold more often than the stated rate
    guard.threshold = float(np.quantile(guard.score(model, val_images, normalize), 1.0 - false_alarm_rate,
                                        method="higher"))
    return guard
