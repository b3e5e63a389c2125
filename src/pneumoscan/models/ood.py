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

The guard must judge the film, not its framing (issue 20): a paediatric film zoomed in, or shrunk onto a black
border, is in scope; an adult film is not. A guard fitted on the films as they are flagged 57 % of validation
films zoomed in by 1.33. Widening one Gaussian per class with reframed copies would accept them, but also
loosen the guard for everything else (on synthetic adults: half flagged). So each class gets one Gaussian
mean per framing group instead: the training films as they are and zoomed by each factor of FRAMING_GROUPS
(in by 1.15 / 1.3 / 1.5; out onto black by 0.87 / 0.75 / 0.65), with one covariance shared by all groups of
the within-group spread, and a film is scored against the nearest mean. The framing moves the means, not
the covariance, so the covariance stays as tight as on films of one framing (synthetic adults: 93 % flagged,
children 0-5 % in every framing; tests/test_guard_scope.py). The threshold is the highest of the
(1 - false-alarm rate) quantiles over the validation films as they are and in each CALIBRATION_VIEWS framing,
so no one of those views is flagged more often than the stated rate. The bundle's field of view (padding
trimmed) runs before the features, as it does before the prediction.
"""

from collections.abc import Callable, Sequence

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import nn

from pneumoscan.data.framing_swaps import zoom_in, zoom_out
from pneumoscan.data.streaming import ImageBatchSource, iter_chunks, take
from pneumoscan.models.modes import eval_mode
from pneumoscan.models.ood_statistics import (  # noqa: F401  (re-exported)
    METHOD,
    TENSOR_PREFIX,
    GuardStatistics,
    OodSettings,
)

# a covariance of a few hundred features needs thousands of images, not millions: beyond this the guard is fitted
# on a fixed sample of the training images, so its memory stays bounded on a dataset larger than memory
FIT_MAX_IMAGES = 20_000
SCORE_CHUNK = 1024  # films whose features are held at once when scoring (a multiple of the feature batch, 64)
Normalize = Callable[[torch.Tensor], torch.Tensor]
# the framing groups the guard's means are fitted on: 1 the films as they are, above 1 zoomed in, below 1 shrunk
# onto black (each a pass over the training films; 7 groups flagged as many synthetic adults as 10 did)
FRAMING_GROUPS = (1.0, 1.15, 1.3, 1.5, 0.87, 0.75, 0.65)
CALIBRATION_VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "as they are": lambda films: films,
    "zoomed in 1.25": lambda films: zoom_in(films, 1.25),
    "zoomed in 1.5": lambda films: zoom_in(films, 1.5),
    "zoomed out 0.75 onto black": lambda films: zoom_out(films, 0.75),
}


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


class OodGuard(GuardStatistics):
    """The guard as the bundle loads it: GuardStatistics (the numbers and the scoring, torch-free) plus the ways
    to compute the statistics it scores from a PyTorch model."""

    def score(self, model: nn.Module, images: ImageBatchSource, normalize: Normalize,
              chunk: int = SCORE_CHUNK) -> np.ndarray:
        """One score per image; above `threshold` means out of distribution. When every watched layer lies in
        one member of an ensemble, only that member runs (the same features, at a fraction of the cost). Scored
        `chunk` films at a time, so the features (and their float64 distances) never span a whole large set."""
        model, layers, normalize = _narrowed(model, self.layers, normalize)
        parts = [self.score_features(stage_features(model, layers, take(images, slice(start, start + chunk)),
                                                    normalize))
                 for start in range(0, len(images), chunk)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def score_and_predict(self, model: nn.Module, images: torch.Tensor,
                          normalize: Normalize) -> tuple[np.ndarray, np.ndarray]:
        """(P(pneumonia), guard score) per image from one forward pass: half the cost of predicting and scoring
        apart (for an ensemble, whose guard watches its first member, the whole ensemble runs once)."""
        features, probabilities = features_and_probabilities(model, self.layers, images, normalize)
        return probabilities, self.score_features(features)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(values) for name, values in self.to_arrays().items()}


def framed(films: torch.Tensor, zoom: float) -> torch.Tensor:
    """uint8 films as they are (zoom 1), zoomed in (above 1) or shrunk onto black (below 1): a framing group."""
    if zoom == 1.0:
        return films
    return zoom_in(films, zoom) if zoom > 1.0 else zoom_out(films, zoom)


def _viewed(normalize: Normalize, view: Callable[[torch.Tensor], torch.Tensor]) -> Normalize:
    return lambda batch: normalize(view(batch))


def fit_guard(model: nn.Module, layers: Sequence[str], normalize: Normalize, train_images: torch.Tensor,
              train_labels: np.ndarray, val_images: torch.Tensor, false_alarm_rate: float = 0.05,
              framing_groups: Sequence[float] = FRAMING_GROUPS) -> OodGuard:
    """Fit on the training images (not augmented) at the architecture's declared feature stages: one mean per class
    and framing group (`framing_groups`; (1.0,) fits the films as they are only), one shared covariance.
    Threshold from the validation images: the highest quantile over CALIBRATION_VIEWS of them, or over the
    films as they are when only that group is fitted."""
    layers = list(layers)
    if len(train_labels) > FIT_MAX_IMAGES:
        pick = np.sort(np.random.default_rng(0).choice(len(train_labels), FIT_MAX_IMAGES, replace=False))
        train_images, train_labels = take(train_images, torch.from_numpy(pick)), np.asarray(train_labels)[pick]
    narrowed_model, narrowed_layers, narrowed_normalize = _narrowed(model, layers, normalize)
    labels = np.asarray(train_labels).astype(int)
    classes = np.unique(labels)
    groups = [stage_features(narrowed_model, narrowed_layers, train_images,
                             _viewed(narrowed_normalize, lambda films, zoom=zoom: framed(films, zoom)))
              for zoom in framing_groups]
    # a stage whose map has shrunk to one pixel (a small input) has no spatial spread (its std is NaN): leave it out
    usable = [index for index in range(len(layers)) if all(np.isfinite(group[index]).all() for group in groups)]
    layers = [layers[i] for i in usable]
    means, precisions, fitted = [], [], []
    for index in usable:
        cluster_means, residuals = [], []
        for group in groups:
            for label in classes:
                members = group[index][labels == label]
                cluster_means.append(members.mean(0))
                residuals.append(members - cluster_means[-1])
        precisions.append(LedoitWolf(assume_centered=True).fit(np.concatenate(residuals)).precision_.astype(np.float32))
        means.append(np.stack(cluster_means).astype(np.float32))
        fitted.append(np.concatenate([group[index] for group in groups]))
    guard = OodGuard(layers, means, precisions, np.zeros(len(layers)), np.ones(len(layers)), 0.0, false_alarm_rate)
    distances = guard._distances(fitted)
    low, guard.centers, high = np.percentile(distances, [25, 50, 75], axis=0)
    guard.scales = np.maximum(high - low, 1e-6)
    views = (CALIBRATION_VIEWS if tuple(framing_groups) != (1.0,)
             else {"as they are": CALIBRATION_VIEWS["as they are"]})
    # "higher": a validation score is never above the threshold more often than the stated rate, in any view
    guard.threshold = max(float(np.quantile(guard.score(model, val_images, _viewed(normalize, view)),
                                            1.0 - false_alarm_rate, method="higher")) for view in views.values())
    guard.views = list(views)
    return guard
