"""Batched training augmentation with kornia: one call per batch instead of per-image Python work.

Horizontal flip is off by default: a chest film is not left-right symmetric (the heart sits on
the patient's left), so a flipped film is an anatomy the model will never see at test time.
"""

from dataclasses import asdict, dataclass

import kornia.augmentation as K
import torch
from torch import nn


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    rotation_deg: float = 7.0
    shift: float = 0.06
    zoom: float = 0.08
    brightness: float = 0.15
    contrast: float = 0.15
    hflip: bool = False

    def to_dict(self) -> dict[str, float | bool]:
        return asdict(self)


def build_augmentation(config: AugmentConfig) -> nn.Module:
    """A module mapping float images in [0, 1] (N, C, H, W) to augmented ones of the same shape.

    It draws from torch's global generator, which the trainer seeds, so runs are repeatable.
    """
    if not config.enabled:
        return nn.Identity()
    layers: list[nn.Module] = [
        K.RandomAffine(
            degrees=config.rotation_deg,
            translate=(config.shift, config.shift),
            scale=(1.0 - config.zoom, 1.0 + config.zoom),
            padding_mode="border",
            p=1.0,
        ),
    ]
    if config.brightness > 0 or config.contrast > 0:
        layers.append(K.ColorJiggle(brightness=config.brightness, contrast=config.contrast, p=1.0))
    if config.hflip:
        layers.append(K.RandomHorizontalFlip(p=0.5))
    return nn.Sequential(*layers)


@torch.no_grad()
def augment(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return module(images).clamp_(0.0, 1.0)
