"""The out-of-distribution guard's numbers and its scoring, without torch (pneumoscan.models.ood fits the guard and
computes its statistics from a PyTorch model; an exported ONNX graph returns the same statistics, so the ONNX
Runtime engine scores the guard with this module alone)."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pneumoscan.errors import PneumoscanError

TENSOR_PREFIX = "ood."
METHOD = ("Mahalanobis distance of per-stage channel statistics to the nearest of one mean per class and framing "
          "group, tied Ledoit-Wolf covariance of the within-group spread; threshold the highest over validation views")


@dataclass(frozen=True)
class OodSettings:
    """What the manifest says about the guard; its tensors travel in the weights file."""

    layers: list[str]
    threshold: float
    false_alarm_rate: float
    method: str = METHOD
    views: list[str] = field(default_factory=list)  # validation views the threshold holds for (empty: as they are)


@dataclass
class GuardStatistics:
    """One mean per class and framing group and one shared precision per watched layer, with the standardisation
    of each layer's distance and the threshold: everything the guard needs to score features."""

    layers: list[str]
    means: list[np.ndarray]  # per layer: (clusters, D), one per class and framing group
    precisions: list[np.ndarray]  # per layer: (D, D)
    centers: np.ndarray  # per layer: median training distance
    scales: np.ndarray  # per layer: spread (IQR) of training distances
    threshold: float
    false_alarm_rate: float
    views: list[str] = field(default_factory=list)

    def _distances(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """(N, layers): each layer's distance to its nearest class mean."""
        columns = []
        for feature, means, precision in zip(features, self.means, self.precisions, strict=True):
            per_class = [np.sum(((feature - mean) @ precision) * (feature - mean), axis=1) for mean in means]
            columns.append(np.sqrt(np.maximum(np.min(per_class, axis=0), 0.0)))
        return np.stack(columns, axis=1)

    def score_features(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """Per image, the largest standardised distance over the watched layers (above `threshold`: out of
        distribution); `features`: per layer, (N, 2 * channels) channel means and standard deviations."""
        return np.max((self._distances(features) - self.centers) / self.scales, axis=1)

    def settings(self) -> OodSettings:
        return OodSettings(layers=list(self.layers), threshold=self.threshold, false_alarm_rate=self.false_alarm_rate,
                           views=list(self.views))

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"{TENSOR_PREFIX}centers": self.centers, f"{TENSOR_PREFIX}scales": self.scales}
        for index, (mean, precision) in enumerate(zip(self.means, self.precisions, strict=True)):
            arrays[f"{TENSOR_PREFIX}{index}.means"] = mean
            arrays[f"{TENSOR_PREFIX}{index}.precision"] = precision
        return arrays

    @classmethod
    def from_tensors(cls, settings: OodSettings, tensors: Mapping[str, Any]) -> "Any":
        """From the weights file's `ood.*` entries, as torch tensors or numpy arrays."""
        layers = list(settings.layers)

        def array(name: str) -> np.ndarray:
            value = tensors[f"{TENSOR_PREFIX}{name}"]
            return value.numpy() if hasattr(value, "numpy") else np.asarray(value)

        try:
            return cls(layers=layers, means=[array(f"{i}.means") for i in range(len(layers))],
                       precisions=[array(f"{i}.precision") for i in range(len(layers))],
                       centers=array("centers"), scales=array("scales"), threshold=float(settings.threshold),
                       false_alarm_rate=float(settings.false_alarm_rate), views=list(settings.views))
        except KeyError as missing:
            raise PneumoscanError(f"the bundle's out-of-distribution guard lacks tensor {missing}") from None
