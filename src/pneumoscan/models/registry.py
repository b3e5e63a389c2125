"""Architectures by name, so the trainer, bundles and CLI never import a model class directly."""

from collections.abc import Callable
from typing import Any

from torch import nn

from pneumoscan.errors import PneumoscanError

ModelFactory = Callable[..., nn.Module]
_MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: `@register_model("name")` on a factory taking (in_channels, image_size, **kwargs)."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is already registered")
        _MODELS[name] = factory
        return factory

    return decorate


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, *, in_channels: int = 1, image_size: int = 150, **kwargs: Any) -> nn.Module:
    """Build an architecture; every model maps (N, in_channels, S, S) to one logit per image (N, 1)."""
    try:
        factory = _MODELS[name]
    except KeyError:
        raise PneumoscanError(f"unknown architecture '{name}'; available: {', '.join(list_models())}") from None
    return factory(in_channels=in_channels, image_size=image_size, **kwargs)
