"""Probabilities from a model, in float32 and in batches, preprocessed as its bundle says.

Test-time augmentation (`tta=True`) averages the probability over the image and four fixed,
mild views (zoom 0.93 and 1.07, shifts of 4 % left and right): a prediction that flips under a
small change of framing is not one to trust, and averaging smooths such flips.
"""

from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from pneumoscan.data.streaming import ImageBatchSource, iter_chunks
from pneumoscan.models.bundle import Bundle
from pneumoscan.models.modes import eval_mode

# (scale, horizontal shift) of each extra TTA view, in affine_grid's normalized coordinates
TTA_VIEWS = ((1 / 0.93, 0.0), (1 / 1.07, 0.0), (1.0, 0.08), (1.0, -0.08))


def tta_view(images: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    """One test-time view: the batch zoomed by `scale` and shifted by `shift` (border pixels repeated). The sampling
    grid is built for one image and shared by the batch, so an exported graph keeps a free batch size."""
    theta = torch.tensor([[[scale, 0.0, shift], [0.0, scale, 0.0]]], dtype=images.dtype, device=images.device)
    grid = F.affine_grid(theta, [1, *images.shape[1:]], align_corners=False)
    return F.grid_sample(images, grid.expand(images.shape[0], -1, -1, -1), padding_mode="border", align_corners=False)


@torch.inference_mode()
def predict_with(
    model: torch.nn.Module,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    images: ImageBatchSource,
    batch_size: int = 64,
    tta: bool = False,
) -> np.ndarray:
    """uint8 images (N, 1, S, S), in memory or streamed -> P(pneumonia) per image, shape (N,). Restores train/eval
    mode. Batches go to the model's device (a GPU while training there); the result is always on the CPU. A
    streamed set is read a batch at a time by worker processes, so scoring it needs no more memory than a batch."""
    chunks = []
    device = next(model.parameters(), torch.empty(0)).device
    with eval_mode(model):
        for pixels in iter_chunks(images, batch_size):
            batch = normalize(pixels.to(device))
            views = [batch, *(tta_view(batch, scale, shift) for scale, shift in TTA_VIEWS)] if tta else [batch]
            probabilities = [torch.sigmoid(model(v.contiguous(memory_format=torch.channels_last)).float().squeeze(1))
                             for v in views]
            chunks.append(torch.stack(probabilities).mean(0).cpu())
    return torch.cat(chunks).numpy() if chunks else np.zeros(0, dtype=np.float32)


def predict_probabilities(bundle: Bundle, images: torch.Tensor, batch_size: int = 64, tta: bool = False) -> np.ndarray:
    return predict_with(bundle.model, bundle.preprocess.normalize, images, batch_size, tta=tta)
