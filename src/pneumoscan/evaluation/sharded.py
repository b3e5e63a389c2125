"""A split's films scored on every process of a torchrun launch: rank r scores the batches r, r+W, r+2W, ... and
rank 0 gathers the probabilities back into the films' order, so the evaluation it then computes alone is the one a
single process would compute (each batch is scored exactly as one process scores it)."""

from collections.abc import Callable

import numpy as np
import torch

from pneumoscan.data.streaming import ImageBatchSource, iter_chunks
from pneumoscan.training.distributed import Distributed

BATCH = 64  # the engines' own batch, so a batch scored on any rank is the batch one process scores


def scored_in_shards(score: Callable[[torch.Tensor], np.ndarray], images: ImageBatchSource, ranks: Distributed,
                     batch_size: int = BATCH) -> np.ndarray | None:
    """P(pneumonia) per film in input order on rank 0; None on the other ranks (their shares went to rank 0)."""
    mine = {number: np.asarray(score(chunk), dtype=np.float32)
            for number, chunk in enumerate(iter_chunks(images, batch_size))
            if number % ranks.world_size == ranks.rank}
    parts = ranks.gather_objects(mine)
    if not ranks.is_main:
        return None
    batches: dict[int, np.ndarray] = {}
    for part in parts:
        batches.update(part)  # type: ignore[call-overload]
    if not batches:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([batches[number] for number in sorted(batches)])
