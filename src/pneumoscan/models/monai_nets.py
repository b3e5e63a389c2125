"""Stronger backbones from MONAI, built for 2-D, one input channel and one logit.

MONAI is imported inside each factory: it takes seconds to import and only these models need it.
The names follow the torchvision/timm families they implement, and each registration says how
those libraries' checkpoint names map onto MONAI's, so `--weights` files from them load.
"""

import re

from torch import nn

from pneumoscan.config import DEFAULT_IMAGE_SIZE
from pneumoscan.models.registry import register_model


def densenet_from_torchvision(key: str) -> str:
    """torchvision/timm `denselayer1.norm1.weight` (or legacy `norm.1`) -> MONAI `denselayer1.layers.norm1`."""
    key = re.sub(r"(denselayer\d+)\.(norm|relu|conv)\.?(\d)", r"\1.\2\3", key)
    return re.sub(r"(denselayer\d+)\.(?!layers\.)", r"\1.layers.", key)


_B0_STAGE_START = (0, 1, 3, 5, 8, 11, 15)  # EfficientNet-B0 blocks per stage: 1, 2, 2, 3, 3, 4, 1
_TIMM_EFFICIENTNET_BLOCK = {  # timm layer name -> MONAI's, for blocks with / without an expansion conv
    True: {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
           "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand", "conv_pwl": "_project_conv",
           "bn3": "_bn2"},
    False: {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "se.conv_reduce": "_se_reduce",
            "se.conv_expand": "_se_expand", "conv_pw": "_project_conv", "bn2": "_bn2"},
}
_TORCHVISION_EFFICIENTNET_BLOCK = {  # torchvision `block.N` position -> MONAI's, with / without expansion
    True: {"0.0": "_expand_conv", "0.1": "_bn0", "1.0": "_depthwise_conv", "1.1": "_bn1", "2.fc1": "_se_reduce",
           "2.fc2": "_se_expand", "3.0": "_project_conv", "3.1": "_bn2"},
    False: {"0.0": "_depthwise_conv", "0.1": "_bn1", "1.fc1": "_se_reduce", "1.fc2": "_se_expand",
            "2.0": "_project_conv", "2.1": "_bn2"},
}
_EFFICIENTNET_STEMS = {"conv_stem.": "_conv_stem.", "bn1.": "_bn0.", "conv_head.": "_conv_head.", "bn2.": "_bn1.",
                       "features.0.0.": "_conv_stem.", "features.0.1.": "_bn0.", "features.8.0.": "_conv_head.",
                       "features.8.1.": "_bn1."}


def efficientnet_b0_from_timm_or_torchvision(key: str) -> str:
    """timm (`blocks.1.0.conv_pw`) or torchvision (`features.2.0.block.0.0`) names -> MONAI's
    (`_blocks.1.1._expand_conv`): MONAI numbers blocks by stage and by global position."""
    for prefix, monai in _EFFICIENTNET_STEMS.items():
        if key.startswith(prefix):
            return monai + key[len(prefix):]
    for pattern, offset, table in ((r"blocks\.(\d)\.(\d+)\.(.+)\.(\w+)$", 0, _TIMM_EFFICIENTNET_BLOCK),
                                   (r"features\.([1-7])\.(\d+)\.block\.(.+)\.(\w+)$", 1,
                                    _TORCHVISION_EFFICIENTNET_BLOCK)):
        found = re.match(pattern, key)
        if found:
            stage, index, layer, tensor = int(found[1]) - offset, int(found[2]), found[3], found[4]
            monai = table[stage > 0].get(layer)
            return f"_blocks.{stage}.{_B0_STAGE_START[stage] + index}.{monai}.{tensor}" if monai else key
    return key


@register_model("resnet18", first_conv="conv1", head="fc",
                feature_stages=("maxpool", "layer1", "layer2", "layer3", "layer4"))
def resnet18(in_channels: int = 1, image_size: int = DEFAULT_IMAGE_SIZE) -> nn.Module:
    """torchvision's ResNet-18 layout: MONAI's default stem has stride 1, which quadruples the work of
    every later layer (21 instead of 5 training GFLOP per 160 px image) and does not match the
    stride-2 stem that torchvision/timm weights were trained with. `image_size` is ignored: adaptive pooling
    takes any input size."""
    from monai.networks.nets import resnet18 as monai_resnet18

    return monai_resnet18(spatial_dims=2, n_input_channels=in_channels, num_classes=1, conv1_t_stride=2)


@register_model("densenet121", first_conv="features.conv0", head="class_layers.out",
                feature_stages=("features.pool0", "features.transition1", "features.transition2",
                                "features.transition3", "features.norm5"),
                gradcam_layer="class_layers.relu", key_map=densenet_from_torchvision)
def densenet121(in_channels: int = 1, image_size: int = DEFAULT_IMAGE_SIZE, dropout: float = 0.0) -> nn.Module:
    """CheXNet's backbone (Rajpurkar et al. 2017). `image_size` is ignored: adaptive pooling takes any size."""
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=1, dropout_prob=dropout)


@register_model("efficientnet_b0", first_conv="_conv_stem", head="_fc",
                feature_stages=("_bn0", "_blocks.1", "_blocks.2", "_blocks.4", "_bn1"),
                key_map=efficientnet_b0_from_timm_or_torchvision)
def efficientnet_b0(in_channels: int = 1, image_size: int = DEFAULT_IMAGE_SIZE) -> nn.Module:
    """`image_size` is ignored: adaptive pooling takes any input size."""
    from monai.networks.nets import EfficientNetBN

    return EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=in_channels,
                          num_classes=1)
