"""Per-image statistics that describe how a film was acquired, without looking at the diagnosis.

Stored in a bundle for its validation images (the drift reference) and computed again for each
week of incoming films, so a shift in exposure, contrast, noise or resolution can be noticed
before any label arrives.
"""

import numpy as np
import torch

STATISTIC_NAMES = ("intensity_mean", "intensity_std", "sharpness")


def image_statistics(images: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image: mean and standard deviation of its pixels in [0, 1] (exposure, contrast), and the mean
    absolute difference of neighbouring pixels (sharpness: noise raises it, a coarser detector lowers it)."""
    pixels = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    flat = pixels.flatten(1)
    sharpness = (pixels[..., 1:, :] - pixels[..., :-1, :]).abs().flatten(1).mean(1) + (
        pixels[..., :, 1:] - pixels[..., :, :-1]).abs().flatten(1).mean(1)
    return {"intensity_mean": flat.mean(1).numpy(), "intensity_std": flat.std(1).numpy(),
            "sharpness": sharpness.numpy()}
