"""Batched training augmentation with kornia: one call per batch instead of per-image Python work.

Horizontal flip is off by default: a chest film is not left-right symmetric (the heart sits on
the patient's left), so a flipped film is an anatomy the model will never see at test time.

Presets are named (AUGMENT_PRESETS) and a run stores the name it used, so a model card can say
which one without guessing: `standard`, `shift` (adds what differs between hospitals and machines
rather than between patients: exposure (gamma), sensor noise, blur and a wider zoom range), `framing` (issue
19: `shift`'s photometric steps with a wide zoom in both directions, 0.7-1.8, aspect jitter, and the
uncovered area padded with black, mid-grey or the replicated edge, so how tightly a film is framed carries
no label) and `none`.
"""

import math

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

from pneumoscan.data.augment_presets import AUGMENT_PRESETS, AugmentConfig, augment_preset  # noqa: F401

PAD_FILLS = ("black", "grey", "edge")  # what a zoomed-out film is padded with, one drawn per image


class RandomFraming(nn.Module):
    """Reframe each film: a zoom drawn log-uniformly from `zoom` (above 1 enlarges: the lungs fill more of the
    frame; below 1 shrinks the film onto padding), an aspect ratio from [1/(1+aspect), 1+aspect], a rotation up
    to `rotation_deg` and a shift up to `shift` of the side; padding black, mid-grey or the replicated edge
    (PAD_FILLS, drawn per image). Draws from torch's global generator, like kornia's modules."""

    def __init__(self, zoom: tuple[float, float], aspect: float, rotation_deg: float, shift: float) -> None:
        super().__init__()
        self.zoom, self.aspect, self.rotation_deg, self.shift = zoom, aspect, rotation_deg, shift

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        count = images.shape[0]

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(count, dtype=torch.float32)

        scale = torch.exp(uniform(math.log(self.zoom[0]), math.log(self.zoom[1])))
        ratio = torch.exp(uniform(-math.log1p(self.aspect), math.log1p(self.aspect)))
        angle = torch.deg2rad(uniform(-self.rotation_deg, self.rotation_deg))
        # affine_grid maps output coordinates to input ones: a zoom s samples 1/s of the input
        sx, sy = 1.0 / (scale * ratio.sqrt()), 1.0 / (scale / ratio.sqrt())
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([sx * cos, -sx * sin, uniform(-2 * self.shift, 2 * self.shift)], 1),
                             torch.stack([sy * sin, sy * cos, uniform(-2 * self.shift, 2 * self.shift)], 1)], 1)
        fill_kind = torch.randint(len(PAD_FILLS), (count,))
        theta = theta.to(images.device, images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        fill = torch.where(fill_kind == 1, 0.5, 0.0).to(images.device, images.dtype)[:, None, None, None]
        padded = F.grid_sample(images - fill, grid, padding_mode="zeros", align_corners=False) + fill
        edge = F.grid_sample(images, grid, padding_mode="border", align_corners=False)
        return torch.where((fill_kind == 2).to(images.device)[:, None, None, None], edge, padded)


def build_augmentation(config: AugmentConfig) -> nn.Module:
    """A module mapping float images in [0, 1] (N, C, H, W) to augmented ones of the same shape.

    It draws from torch's global generator, which the trainer seeds, so runs are repeatable.
    """
    if not config.enabled:
        if config.erasing > 0:
            return nn.Sequential(K.RandomErasing(scale=(0.02, 0.15), ratio=(0.3, 3.3), value=0.0, p=config.erasing))
        return nn.Identity()
    layers: list[nn.Module] = [
        RandomFraming(config.framing_zoom, config.aspect, config.rotation_deg, config.shift)
        if config.framing_zoom is not None else
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
    if config.gamma > 0:
        layers.append(K.RandomGamma(gamma=(1.0 - config.gamma, 1.0 + config.gamma), p=1.0))
    if config.blur_sigma > 0:
        layers.append(K.RandomGaussianBlur(kernel_size=(5, 5), sigma=(0.1, config.blur_sigma), p=1 / 3))
    if config.noise_std > 0:
        layers.append(K.RandomGaussianNoise(mean=0.0, std=config.noise_std, p=0.5))
    if config.hflip:
        layers.append(K.RandomHorizontalFlip(p=0.5))
    if config.erasing > 0:
        layers.append(K.RandomErasing(scale=(0.02, 0.15), ratio=(0.3, 3.3), value=0.0, p=config.erasing))
    return nn.Sequential(*layers)


@torch.no_grad()
def augment(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return module(images).clamp_(0.0, 1.0)
