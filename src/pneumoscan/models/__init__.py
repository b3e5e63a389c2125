"""Models: the architecture registry, the reference CNN, and model bundles (weights + manifest)."""

from pneumoscan.models import baseline, compact, ensemble, monai_nets  # noqa: F401  (each registers its architectures)
from pneumoscan.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
