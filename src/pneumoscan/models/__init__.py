"""Models: the architecture registry, the reference CNN, and model bundles (weights + manifest).

The architectures register themselves when first looked up (pneumoscan.models.registry), so importing this package,
or its torch-free modules (manifest, ood_statistics), does not import torch."""

from typing import Any

__all__ = ["create_model", "list_models", "register_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pneumoscan.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'pneumoscan.models' has no attribute '{name}'")
