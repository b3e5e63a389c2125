"""Architectures by name, each registered with the facts other tools need about it.

As timm's model configs do, every architecture states at registration: its first convolution
(where pretrained RGB kernels are folded to one channel), its classifier head (left at its fresh
initialisation when `--weights` are loaded), its feature stages in order (the out-of-distribution
guard summarises each), the layer Grad-CAM explains by default, how foreign checkpoint names
(torchvision, timm) map onto its own, and (like timm's `input_size`, `mean`, `std`) the input side it is
built for when none is given and the normalisation its inputs get. Nothing downstream discovers these by
running the model.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from pneumoscan.config import DEFAULT_IMAGE_SIZE
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.errors import PneumoscanError

ModelFactory = Callable[..., nn.Module]
KeyMap = Callable[[str], str]


def _same_name(key: str) -> str:
    return key


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: ModelFactory
    first_conv: str  # module name of the first convolution
    head: str  # module name (prefix) of the classifier head
    feature_stages: tuple[str, ...]  # modules ending each resolution stage, input side first
    gradcam_layer: str = ""  # default Grad-CAM layer; empty: the last feature stage
    key_map: KeyMap = _same_name  # foreign checkpoint key -> this model's key
    # for a model assembled from a bundle's arch_kwargs (an ensemble): its facts from those kwargs
    derive: Callable[[dict[str, Any]], "ModelSpec"] | None = None
    # the input it is built for when no size is given, and the (pixel - mean) / std its inputs get: the
    # Preprocess defaults (0.5 / 0.25 maps [0, 1] pixels to about [-2, 2]) for every network trained here
    input_size: int = DEFAULT_IMAGE_SIZE
    mean: float = Preprocess.mean
    std: float = Preprocess.std

    @property
    def preprocess(self) -> Preprocess:
        """The declared input as a Preprocess (no intensity step, crop or field of view: a run adds those)."""
        return Preprocess(image_size=self.input_size, mean=self.mean, std=self.std)

    @property
    def explained_layer(self) -> str:
        return self.gradcam_layer or self.feature_stages[-1]

    def is_head(self, key: str) -> bool:
        return key == self.head or key.startswith(self.head + ".")


_MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, *, first_conv: str, head: str, feature_stages: tuple[str, ...],
                   gradcam_layer: str = "", key_map: KeyMap = _same_name,
                   derive: Callable[[dict[str, Any]], ModelSpec] | None = None,
                   input_size: int = DEFAULT_IMAGE_SIZE, mean: float = Preprocess.mean, std: float = Preprocess.std
                   ) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: `@register_model("name", first_conv=..., head=..., feature_stages=(...))` on a factory
    taking (in_channels, image_size, **kwargs) and returning a model that maps (N, C, S, S) to (N, 1) logits.
    `input_size`, `mean` and `std` declare the input it expects (defaults: DEFAULT_IMAGE_SIZE, Preprocess's)."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is already registered")
        if not feature_stages:
            raise ValueError(f"model '{name}' must declare at least one feature stage")
        _MODELS[name] = ModelSpec(name, factory, first_conv, head, tuple(feature_stages), gradcam_layer, key_map,
                                  derive, input_size=input_size, mean=mean, std=std)
        return factory

    return decorate


BUILT_IN = ("baseline", "compact", "ensemble", "monai_nets")  # the modules that register pneumoscan's architectures


def _registered() -> None:
    """Import the built-in architectures' modules (each registers itself) on the first lookup, not when the package
    is imported: reading a bundle's manifest or answering through ONNX Runtime needs no network code, nor torch."""
    import importlib

    for module in BUILT_IN:
        importlib.import_module(f"pneumoscan.models.{module}")


def list_models() -> list[str]:
    """The architectures a run can train (an ensemble is assembled from trained bundles instead)."""
    _registered()
    return sorted(name for name, spec in _MODELS.items() if spec.derive is None)


def model_spec(name: str) -> ModelSpec:
    _registered()
    try:
        return _MODELS[name]
    except KeyError:
        raise PneumoscanError(f"unknown architecture '{name}'; available: {', '.join(list_models())}") from None


def bundle_spec(name: str, arch_kwargs: dict[str, Any] | None = None) -> ModelSpec:
    """The facts of a model as a bundle built it: the registered ones, or those derived from its kwargs."""
    spec = model_spec(name)
    return spec.derive(arch_kwargs or {}) if spec.derive is not None else spec


def create_model(name: str, *, in_channels: int = 1, image_size: int | None = None, **kwargs: Any) -> nn.Module:
    """Build an architecture; every model maps (N, in_channels, S, S) to one logit per image (N, 1). Without
    `image_size` it is built for the size its registration declares (`model_spec(name).input_size`)."""
    spec = model_spec(name)
    return spec.factory(in_channels=in_channels, image_size=spec.input_size if image_size is None else image_size,
                        **kwargs)
