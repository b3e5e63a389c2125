"""Load backbone weights from a local file (`--weights PATH`); pneumoscan never downloads weights.

Accepted: safetensors, or a PyTorch checkpoint read with `weights_only=True` (a bare state dict,
or one under "state_dict"/"model"), in torchvision, timm or MONAI naming. Keys are mapped onto the
registry's model; an RGB first convolution is folded to one channel by summing over its input
channels (a gray image fed as R=G=B gives the same response); the classifier head, which has a
different number of outputs, is left at its fresh initialisation.
"""

import pickle
import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from pneumoscan.errors import PneumoscanError

_WRAPPER_PREFIXES = ("module.", "model.", "backbone.", "encoder.")
_HEAD_NAMES = re.compile(r"^(fc|classifier|head|_fc|class_layers)\.")


def _densenet_from_torchvision(key: str) -> str:
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


def _efficientnet_b0_from_timm_or_torchvision(key: str) -> str:
    """timm (`blocks.1.0.conv_pw`) or torchvision (`features.2.0.block.0.0`) names -> MONAI's
    (`_blocks.1.1._expand_conv`): MONAI numbers blocks by stage and by global position."""
    stems = {"conv_stem.": "_conv_stem.", "bn1.": "_bn0.", "conv_head.": "_conv_head.", "bn2.": "_bn1.",
             "features.0.0.": "_conv_stem.", "features.0.1.": "_bn0.", "features.8.0.": "_conv_head.",
             "features.8.1.": "_bn1."}
    for prefix, monai in stems.items():
        if key.startswith(prefix):
            return monai + key[len(prefix):]
    timm = re.match(r"blocks\.(\d)\.(\d+)\.(.+)\.(\w+)$", key)
    if timm:
        stage, index, layer, tensor = int(timm[1]), int(timm[2]), timm[3], timm[4]
        monai = _TIMM_EFFICIENTNET_BLOCK[stage > 0].get(layer)
        return f"_blocks.{stage}.{_B0_STAGE_START[stage] + index}.{monai}.{tensor}" if monai else key
    vision = re.match(r"features\.([1-7])\.(\d+)\.block\.(.+)\.(\w+)$", key)
    if vision:
        stage, index, layer, tensor = int(vision[1]) - 1, int(vision[2]), vision[3], vision[4]
        monai = _TORCHVISION_EFFICIENTNET_BLOCK[stage > 0].get(layer)
        return f"_blocks.{stage}.{_B0_STAGE_START[stage] + index}.{monai}.{tensor}" if monai else key
    return key


KEY_MAPS: dict[str, Callable[[str], str]] = {
    "densenet121": _densenet_from_torchvision,
    "efficientnet_b0": _efficientnet_b0_from_timm_or_torchvision,
}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise PneumoscanError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, OSError, ValueError, EOFError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PneumoscanError(f"{path}: not a readable weights file ({reason})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PneumoscanError(f"{path}: expected a state dict of tensors")
    return state


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def _fit_channels(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """Fold an RGB conv kernel to the model's input channels; None if the shapes cannot be reconciled."""
    if source.shape == target.shape:
        return source
    if source.dim() == 4 and source.shape[0] == target.shape[0] and source.shape[2:] == target.shape[2:]:
        if target.shape[1] == 1:
            return source.sum(dim=1, keepdim=True)
    return None


def load_pretrained(model: nn.Module, arch: str, path: Path) -> dict[str, int]:
    """Copy matching tensors from `path` into `model`; returns counts of loaded and skipped tensors.

    Raises when less than 90 % of the model's non-head tensors could be filled: a file for another
    architecture should fail loudly, not train from a mostly random start.
    """
    mapper = KEY_MAPS.get(arch, lambda key: key)
    source = {mapper(_strip_wrappers(k)): v for k, v in read_state_dict(path).items()}
    target = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if key in target and not _HEAD_NAMES.match(key):
            fitted = _fit_channels(value, target[key])
            if fitted is not None:
                loaded[key] = fitted.to(target[key].dtype)
    body = [k for k in target if not _HEAD_NAMES.match(k) and not k.endswith("num_batches_tracked")]
    filled = sum(k in loaded for k in body)
    if filled < 0.9 * len(body):
        missing = [k for k in body if k not in loaded][:3]
        raise PneumoscanError(
            f"{path}: only {filled} of {len(body)} '{arch}' tensors found (e.g. missing {', '.join(missing)}); "
            "is this a checkpoint of the same architecture?"
        )
    model.load_state_dict(loaded, strict=False)
    return {"loaded": len(loaded), "model_tensors": len(body), "skipped": len(source) - len(loaded)}
