"""Score a model on the framing swaps of labelled films: the proxy every run, study and evaluation reports.

The swaps (pneumoscan.data.framing_swaps) run on the decoded uint8 films at the model's input size, a chunk
at a time, then through the model's own preprocessing (its field of view included), so the proxy sees
exactly what the model would see of a film framed that way. pneumoscan.metrics.framing turns the scores
into the record stored in the bundle.
"""

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from pneumoscan.data.augment import AugmentConfig
from pneumoscan.data.framing_swaps import FRAMING_SWAPS, FramingSwap
from pneumoscan.data.streaming import ImageBatchSource
from pneumoscan.metrics.framing import FramingRecord, SwappedScores, framing_record
from pneumoscan.models.inference import predict_with

if TYPE_CHECKING:
    from pneumoscan.models.bundle import Manifest

CHUNK = 256  # films swapped at a time: the swapped copies never take more memory than this many


def seen_families(augmentation: AugmentConfig | None) -> list[str]:
    """The swap families a training augmentation produces: the wide framing zoom makes zoomed-in and
    zoomed-out-on-padding films; no augmentation pastes markers. None (no augmentation known): none."""
    if augmentation is None or not augmentation.enabled or augmentation.framing_zoom is None:
        return []
    low, high = augmentation.framing_zoom
    families = []
    if high >= max(f.factor for f in FRAMING_SWAPS if f.family == "zoom_in"):
        families.append("zoom_in")
    if low <= min(f.factor for f in FRAMING_SWAPS if f.family == "zoom_out"):
        families.append("zoom_out")
    return families


def bundle_seen_families(manifest: "Manifest") -> list[str]:
    """The swap families a bundle's training produced: its own training config's, or for an ensemble the union
    over its members' recorded configs (a family any member saw is seen)."""
    from pneumoscan.config import TrainConfig

    if manifest.training is not None:
        return seen_families(manifest.training.config.augmentation)
    configs = [TrainConfig.from_dict(member["config"]) for member in manifest.arch_kwargs.get("members") or []
               if member.get("config")]
    return sorted({family for config in configs for family in seen_families(config.augmentation)})


def _swapped_probabilities(model: torch.nn.Module, normalize: Callable[[torch.Tensor], torch.Tensor],
                           images: ImageBatchSource, positions: np.ndarray, swap: FramingSwap,
                           seed: int) -> np.ndarray:
    scores = []
    for start in range(0, len(positions), CHUNK):
        chunk = images[torch.as_tensor(positions[start:start + CHUNK])]
        scores.append(predict_with(model, normalize, swap.apply(chunk, seed=seed + start)))
    return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)


def swapped_scores(model: torch.nn.Module, normalize: Callable[[torch.Tensor], torch.Tensor],
                   images: ImageBatchSource, labels: np.ndarray, swaps: Sequence[FramingSwap] = FRAMING_SWAPS,
                   seed: int = 0) -> list[SwappedScores]:
    """Each swap's probabilities on the films of its target class (averaging these over models scores an
    ensemble's proxy)."""
    labels = np.asarray(labels).astype(int)
    return [SwappedScores(swap.name, swap.family, swap.target,
                          _swapped_probabilities(model, normalize, images, np.flatnonzero(labels == swap.target),
                                                 swap, seed))
            for swap in swaps]


def score_framing(model: torch.nn.Module, normalize: Callable[[torch.Tensor], torch.Tensor],
                  images: ImageBatchSource, labels: np.ndarray, probabilities: np.ndarray, threshold: float,
                  seen: Sequence[str] = (), swaps: Sequence[FramingSwap] = FRAMING_SWAPS,
                  resamples: int = 1000, seed: int = 0) -> FramingRecord | None:
    """The framing-swap proxy of `model` on labelled uint8 films (N, 1, S, S) whose clean probabilities are
    already known (every caller has scored them), at the model's threshold; None unless both classes are there
    (a specificity or sensitivity of no films is not a number to store)."""
    if len(np.unique(np.asarray(labels).astype(int))) < 2:
        return None
    swapped = swapped_scores(model, normalize, images, labels, swaps, seed)
    return framing_record(labels, probabilities, swapped, threshold, seen_families=seen, resamples=resamples,
                          seed=seed)
