"""Which modules of a network produce spatial feature maps: found by running it once, for any architecture."""

import torch
from torch import nn


def spatial_outputs(model: nn.Module, input_shape: tuple[int, int, int]) -> list[tuple[str, tuple[int, int]]]:
    """(name, (height, width)) of every module whose output is a feature map larger than one pixel, in the
    order the modules finish (a parent after its children). Modules called more than once in a forward
    pass (a shared activation) are left out: a hook on them would not know which call it saw."""
    finished: list[tuple[str, tuple[int, int]]] = []
    calls: dict[str, int] = {}

    def record(name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and output.dim() == 4 and min(output.shape[-2:]) > 1:
                finished.append((name, (int(output.shape[-2]), int(output.shape[-1]))))
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules() if name]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [(name, size) for name, size in finished if calls[name] == 1]
