"""A model's structure read from the model object itself: block type, output shape, parameters."""

from dataclasses import dataclass

import torch
from torch import nn

from pneumoscan.models.modes import eval_mode


@dataclass(frozen=True)
class BlockInfo:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    parameters: int


def _describe(module: nn.Module) -> str:
    leaves = [type(m).__name__ for m in module.modules() if not list(m.children())]
    if not leaves or leaves == [type(module).__name__]:
        return type(module).__name__
    return " > ".join(leaves)


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level children, with containers (Sequential, ModuleList) opened one level."""
    blocks: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            blocks.extend((f"{name}.{sub}", grandchild) for sub, grandchild in child.named_children())
        else:
            blocks.append((name, child))
    return blocks


@torch.no_grad()
def summarize(model: nn.Module, input_shape: tuple[int, ...]) -> list[BlockInfo]:
    """Run one dummy batch through the model and record each block's output (batch size 1)."""
    records: list[BlockInfo] = []
    hooks = []
    for name, block in _blocks(model):
        def hook(module: nn.Module, _inputs: object, output: torch.Tensor, name: str = name) -> None:
            records.append(BlockInfo(name, _describe(module), tuple(output.shape[1:]),
                                     sum(p.numel() for p in module.parameters())))
        hooks.append(block.register_forward_hook(hook))
    try:
        with eval_mode(model):
            model(torch.zeros((1, *input_shape)))
    finally:
        for handle in hooks:
            handle.remove()
    return records
