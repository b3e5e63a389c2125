"""Load backbone weights from a local file (`--weights PATH`); pneumoscan never downloads weights.

Accepted: safetensors, or a PyTorch checkpoint read with `weights_only=True` (a bare state dict,
or one under "state_dict"/"model"), in torchvision, timm or MONAI naming, or another pneumoscan
bundle's weights (e.g. a model pre-trained on synthetic data). Keys are mapped onto the model by the
key map its registration declares; the RGB kernel of the first convolution (the one the registration
names) is folded to one channel by summing over its input channels (a gray image fed as R=G=B gives
the same response); the classifier head, which has a different number of outputs, is left at its
fresh initialisation.
"""

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from pneumoscan.errors import PneumoscanError
from pneumoscan.models.registry import ModelSpec, model_spec

_WRAPPER_PREFIXES = ("module.", "model.", "backbone.", "encoder.")


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
        if str(error).startswith("Weights only load failed"):  # torch's first line would advise weights_only=False
            blocked = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), "")
            reason = ("it holds Python objects, not only tensors, and pneumoscan never runs code from a weights "
                      f"file{': ' + blocked if blocked else ''}; save a plain state dict or a safetensors file")
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


def _fit_channels(key: str, source: torch.Tensor, target: torch.Tensor, spec: ModelSpec) -> torch.Tensor | None:
    """The tensor as it fits the model: the first conv's RGB kernel folded to one channel; None if it cannot fit."""
    if source.shape == target.shape:
        return source
    if (key == f"{spec.first_conv}.weight" and source.dim() == 4 and target.shape[1] == 1
            and source.shape[0] == target.shape[0] and source.shape[2:] == target.shape[2:]):
        return source.sum(dim=1, keepdim=True)
    return None


@dataclass(frozen=True)
class LoadReport:
    loaded: int
    model_tensors: int
    skipped: int


def load_pretrained(model: nn.Module, arch: str, path: Path) -> LoadReport:
    """Copy matching tensors from `path` into `model`; returns counts of loaded and skipped tensors.

    Raises when less than 90 % of the model's non-head tensors could be filled: a file for another
    architecture should fail loudly, not train from a mostly random start.
    """
    spec = model_spec(arch)
    source = {spec.key_map(_strip_wrappers(k)): v for k, v in read_state_dict(path).items()}
    target = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if key in target and not spec.is_head(key):
            fitted = _fit_channels(key, value, target[key], spec)
            if fitted is not None:
                loaded[key] = fitted.to(target[key].dtype)
    body = [k for k in target if not spec.is_head(k) and not k.endswith("num_batches_tracked")]
    filled = sum(k in loaded for k in body)
    if filled < 0.9 * len(body):
        missing = [k for k in body if k not in loaded][:3]
        raise PneumoscanError(
            f"{path}: only {filled} of {len(body)} '{arch}' tensors found (e.g. missing {', '.join(missing)}); "
            "is this a checkpoint of the same architecture?"
        )
    model.load_state_dict(loaded, strict=False)
    return LoadReport(loaded=filled, model_tensors=len(body), skipped=len(source) - len(loaded))
