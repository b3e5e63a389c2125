"""Stronger backbones from MONAI, built for 2-D, one input channel and one logit.

MONAI is imported inside each factory: it takes seconds to import and only these models need it.
The names follow the torchvision/timm families they implement, so `--weights` files from those
libraries can be mapped onto them (see pneumoscan.models.pretrained).
"""

from torch import nn

from pneumoscan.models.registry import register_model


@register_model("resnet18")
def resnet18(in_channels: int = 1, image_size: int = 150) -> nn.Module:
    """torchvision's ResNet-18 layout: MONAI's default stem has stride 1, which quadruples the work of
    every later layer (21 instead of 5 training GFLOP per 160 px image) and does not match the
    stride-2 stem that torchvision/timm weights were trained with."""
    from monai.networks.nets import resnet18 as monai_resnet18

    return monai_resnet18(spatial_dims=2, n_input_channels=in_channels, num_classes=1, conv1_t_stride=2)


@register_model("densenet121")
def densenet121(in_channels: int = 1, image_size: int = 150, dropout: float = 0.0) -> nn.Module:
    """CheXNet's backbone (Rajpurkar et al. 2017)."""
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=1, dropout_prob=dropout)


@register_model("efficientnet_b0")
def efficientnet_b0(in_channels: int = 1, image_size: int = 150) -> nn.Module:
    from monai.networks.nets import EfficientNetBN

    return EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=in_channels,
                          num_classes=1)
