"""Batches of training images in a given order: the one place the training loop fetches pixels.

The loop decides the order (seeded, per epoch, sharded per rank when distributed); this module
only turns an order into (index, uint8 images) pairs, so an in-memory tensor and a streamed,
larger-than-memory image set look the same to the loop. A streamed set is read by DataLoader
worker processes a few batches ahead, in exactly the given order, so the batches (and the run)
are bit-identical to the in-memory path's.
"""

from collections.abc import Iterator

import torch

from pneumoscan.data.streaming import ImageBatchSource, StreamedImages


def iter_batches(images: ImageBatchSource, order: torch.Tensor, batch_size: int,
                 min_batch: int = 2) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (index, images[index]) for consecutive slices of `order`; a final batch smaller than `min_batch`
    is dropped (BatchNorm cannot train on a single image)."""
    indices = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    indices = [index for index in indices if len(index) >= min_batch]
    if isinstance(images, StreamedImages):
        yield from zip(indices, images.batches(indices), strict=True)
        return
    for index in indices:
        yield index, images[index]
