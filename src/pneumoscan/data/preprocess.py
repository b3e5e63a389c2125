"""The one preprocessing every tool shares: uint8 pixels to the normalized float tensor a model sees.

Its settings travel in each model bundle, so training, evaluation and prediction never disagree.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Preprocess:
    image_size: int = 150
    channels: int = 1
    mean: float = 0.5
    std: float = 0.25

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 1, H, W) or float in [0, 1] to the model's input scale."""
        if pixels.dtype == torch.uint8:
            pixels = pixels.float().div_(255.0)
        return (pixels - self.mean) / self.std
