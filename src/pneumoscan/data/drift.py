"""Named, seeded image perturbations that imitate what changes between X-ray sites and devices.

A validation split carved from one hospital's training data shares its exposure, processing and
resolution, so it cannot show how a model behaves elsewhere. Re-scoring validation images under
these perturbations is a label-honest stand-in (the labels stay true) used to compare recipes
and thresholds, and to inject drift in the monitoring simulation.

Each is written `name:strength` and works on float pixels in [0, 1], shape N x C x H x W:
- exposure:s    gamma exp(-s): s > 0 brightens the mid-tones (an over-exposed or differently
                processed film), s < 0 darkens them
- contrast:s    pulls each image towards its own mean by a share s (s < 0 stretches it)
- noise:s       adds Gaussian noise of standard deviation s (quantum noise, low dose)
- resolution:s  downsamples to a share (1 - s) of the side and back (a lower-resolution detector)
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from pneumoscan.errors import PneumoscanError


def _exposure(pixels: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    return pixels.clamp(1e-6, 1.0).pow(float(torch.tensor(-strength).exp()))


def _contrast(pixels: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    mean = pixels.mean(dim=(-2, -1), keepdim=True)
    return mean + (pixels - mean) * (1.0 - strength)


def _noise(pixels: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    return pixels + strength * torch.randn(pixels.shape, generator=generator)


def _resolution(pixels: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    size = pixels.shape[-2:]
    small = [max(4, round(side * (1.0 - strength))) for side in size]
    low = F.interpolate(pixels, size=small, mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(low, size=size, mode="bilinear", align_corners=False)


PERTURBATIONS: dict[str, tuple[Callable[[torch.Tensor, float, torch.Generator], torch.Tensor], float, float]] = {
    # name: (function, lowest strength, highest strength)
    "exposure": (_exposure, -2.0, 2.0),
    "contrast": (_contrast, -1.0, 0.95),
    "noise": (_noise, 0.0, 1.0),
    "resolution": (_resolution, 0.0, 0.9),
}


@dataclass(frozen=True)
class Perturbation:
    name: str
    strength: float

    @classmethod
    def parse(cls, text: str) -> "Perturbation":
        name, _, value = text.partition(":")
        if name not in PERTURBATIONS:
            raise PneumoscanError(f"unknown perturbation '{text}'; choose from {', '.join(PERTURBATIONS)} "
                                  "written as name:strength")
        low, high = PERTURBATIONS[name][1:]
        try:
            strength = float(value)
        except ValueError:
            raise PneumoscanError(f"perturbation '{text}': strength must be a number") from None
        if not low <= strength <= high:
            raise PneumoscanError(f"perturbation '{text}': strength must lie in [{low:g}, {high:g}]")
        return cls(name, strength)

    def __str__(self) -> str:
        return f"{self.name}:{self.strength:g}"

    def __call__(self, pixels: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Float pixels in [0, 1] in, perturbed float pixels in [0, 1] out; the same seed gives the same noise."""
        generator = torch.Generator().manual_seed(seed)
        return PERTURBATIONS[self.name][0](pixels, self.strength, generator).clamp(0.0, 1.0)
