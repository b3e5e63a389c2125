"""Per-image statistics that describe how a film was acquired, without looking at the diagnosis.

Stored in a bundle for its validation images (the drift reference) and computed again for each
week of incoming films, so a shift in exposure, contrast, noise or resolution can be noticed
before any label arrives.
"""

import numpy as np
import torch

from pneumoscan.data.streaming import ImageBatchSource, iter_chunks

STATISTIC_NAMES = ("intensity_mean", "intensity_std", "sharpness")
BATCH = 64  # images per step: the float copy stays near 70 MB even at 512 px


def _batch_statistics(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pixels = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    flat = pixels.flatten(1)
    sharpness = (pixels[..., 1:, :] - pixels[..., :-1, :]).abs().flatten(1).mean(1) + (
        pixels[..., :, 1:] - pixels[..., :, :-1]).abs().flatten(1).mean(1)
    return flat.mean(1), flat.std(1), sharpness


def image_statistics(images: ImageBatchSource, batch_size: int = BATCH) -> dict[str, np.ndarray]:
    """Per image: mean and standard deviation of its pixels in [0, 1] (exposure, contrast), and the mean
    absolute difference of neighbouring pixels (sharpness: noise raises it, a coarser detector lowers it).

    Computed a batch at a time (each image's figures do not depend on the others), so a large or streamed
    set never becomes one float copy (20,000 images at 512 px would be 21 GB of float32)."""
    parts = [_batch_statistics(batch) for batch in iter_chunks(images, batch_size)]
    if not parts:
        return {name: np.zeros(0, dtype=np.float32) for name in STATISTIC_NAMES}
    columns = zip(*parts, strict=True)
    return {name: torch.cat(column).numpy() for name, column in zip(STATISTIC_NAMES, columns, strict=True)}
