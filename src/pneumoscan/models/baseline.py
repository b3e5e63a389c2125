"""The reference CNN of the original project, kept by name as `baseline` for comparison."""

import torch
from torch import nn

from pneumoscan.config import DEFAULT_IMAGE_SIZE
from pneumoscan.models.registry import register_model


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding="same"),
        nn.ReLU(inplace=True),
        nn.BatchNorm2d(out_channels),
        nn.MaxPool2d(2),
    )


class BaselineCNN(nn.Module):
    """Conv 32 -> 64 -> 128 (each ReLU, BatchNorm, MaxPool) -> Dense 256 -> Dropout 0.5 -> 1 logit."""

    def __init__(self, in_channels: int = 1, image_size: int = DEFAULT_IMAGE_SIZE, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(in_channels, 32), _conv_block(32, 64), _conv_block(64, 128)
        )
        side = image_size // 2 // 2 // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * side * side, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("baseline", first_conv="features.0.0", head="classifier",
                feature_stages=("features.0", "features.1", "features.2"))
def baseline(in_channels: int = 1, image_size: int = DEFAULT_IMAGE_SIZE, dropout: float = 0.5) -> nn.Module:
    """`image_size` sizes the flattened classifier: the model takes only inputs of that side."""
    return BaselineCNN(in_channels=in_channels, image_size=image_size, dropout=dropout)
