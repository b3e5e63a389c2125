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


KEY_MAPS: dict[str, Callable[[str], str]] = {"densenet121": _densenet_from_torchvision}


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
