"""Run a model in eval mode for a block and put it back as it was, even if the block raises."""

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """BatchNorm and dropout in inference behaviour inside the block; the caller's mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
