"""Probabilities from a model, in float32 and in batches, preprocessed as its bundle says."""

from collections.abc import Callable

import numpy as np
import torch

from pneumoscan.models.bundle import Bundle


@torch.inference_mode()
def predict_with(
    model: torch.nn.Module,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int = 64,
) -> np.ndarray:
    """uint8 images (N, 1, S, S) -> P(pneumonia) per image, shape (N,). Restores train/eval mode."""
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = normalize(images[start : start + batch_size]).contiguous(memory_format=torch.channels_last)
        chunks.append(torch.sigmoid(model(batch).float().squeeze(1)))
    model.train(was_training)
    return torch.cat(chunks).numpy() if chunks else np.zeros(0, dtype=np.float32)


def predict_probabilities(bundle: Bundle, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    return predict_with(bundle.model, bundle.preprocess.normalize, images, batch_size)
