"""Batches of training images in a given order: the one place the training loop fetches pixels.

The loop decides the order (seeded, per epoch, sharded per rank when distributed); this module
only turns an order into (index, uint8 images) pairs, so an in-memory tensor and a streamed,
larger-than-memory image set look the same to the loop.
"""

from collections.abc import Iterator

import torch


def iter_batches(images: torch.Tensor, order: torch.Tensor, batch_size: int,
                 min_batch: int = 2) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (index, images[index]) for consecutive slices of `order`; a final batch smaller than `min_batch`
    is dropped (BatchNorm cannot train on a single image)."""
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        if len(index) < min_batch:
            continue
        yield index, images[index]
