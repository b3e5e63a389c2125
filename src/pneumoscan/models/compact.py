"""`compact`: a small residual CNN designed for CPU training and inference.

Plain 3x3 convolutions (oneDNN runs them far better on a CPU than depthwise ones), a stride-2
stem and a stride-2 first conv in every stage so most work happens at low resolution, and global
average pooling instead of a large dense layer: under a million parameters, a ~3 MB bundle.
"""

import torch
from torch import nn

from pneumoscan.config import DEFAULT_IMAGE_SIZE
from pneumoscan.models.registry import register_model


def _conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class ResidualStage(nn.Module):
    """Two 3x3 convs with a projected shortcut; the first conv downsamples."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(in_channels, out_channels, stride=2), nn.ReLU(inplace=True), _conv_bn(out_channels, out_channels)
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.shortcut(x))


class CompactNet(nn.Module):
    def __init__(
        self, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128, 192), dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(in_channels, 24, stride=2), nn.ReLU(inplace=True))
        channels = [24, *widths]
        self.stages = nn.Sequential(*(ResidualStage(a, b) for a, b in zip(channels, channels[1:], strict=False)))
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(widths[-1], 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


@register_model("compact", first_conv="stem.0.0", head="head",
                feature_stages=("stem", "stages.0", "stages.1", "stages.2", "stages.3"))
def compact(in_channels: int = 1, image_size: int = DEFAULT_IMAGE_SIZE, dropout: float = 0.2) -> nn.Module:
    """`image_size` is ignored: global pooling makes the network take any input size (the registry's uniform
    factory signature passes it to every architecture)."""
    return CompactNet(in_channels=in_channels, dropout=dropout)
