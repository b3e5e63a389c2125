"""Models: the architecture registry, the reference CNN, and model bundles (weights + manifest)."""

from pneumoscan.models import baseline as _baseline  # noqa: F401  (registers its architecture)
from pneumoscan.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
