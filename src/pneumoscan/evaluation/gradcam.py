"""Grad-CAM heatmaps (Selvaraju et al. 2017) through MONAI, for any single-logit model in the registry.

The gradient is that of the one pneumonia logit. The target layer is found by running the model
once and taking the module that last produced a spatial feature map (for `compact` its residual
stages, for `resnet18` layer4, for `densenet121` the final activation before pooling); a module
used more than once in a forward pass (a shared activation) is skipped, because its hook would
see the wrong call. `target_layer` overrides it with any module name.
"""

import numpy as np
import torch
from torch import nn

from pneumoscan.errors import PneumoscanError
from pneumoscan.models.feature_maps import spatial_outputs


def find_target_layer(model: nn.Module, input_shape: tuple[int, int, int]) -> str:
    """The name of the last module whose output is a feature map with more than one pixel."""
    found = spatial_outputs(model, input_shape)
    if not found:
        raise PneumoscanError(f"{type(model).__name__}: no module produces a spatial feature map for Grad-CAM")
    return found[-1][0]


def _scale_each(maps: torch.Tensor) -> torch.Tensor:
    """Each map to [0, 1] by its own maximum (MONAI's default normalizer flips maps, high becomes low)."""
    peak = maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, *([1] * (maps.dim() - 1)))
    return maps / peak


class GradCam:
    """Heatmaps in [0, 1] at the input's size, one per image, for the model's pneumonia logit."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int], target_layer: str | None = None) -> None:
        from monai.visualize import GradCAM  # imported here: MONAI takes seconds to import

        names = dict(model.named_modules())
        self.target_layer = target_layer or find_target_layer(model, input_shape)
        if self.target_layer not in names:
            raise PneumoscanError(f"Grad-CAM target layer '{self.target_layer}' is not a module of this model")
        self.model = model
        self._cam = GradCAM(nn_module=model, target_layers=self.target_layer, postprocessing=_scale_each)

    def __call__(self, inputs: torch.Tensor) -> np.ndarray:
        """Normalized model inputs (N, C, H, W) -> heatmaps (N, H, W), each scaled to [0, 1]."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                maps = self._cam(inputs.float().clone().requires_grad_(True), class_idx=0)
        finally:
            self.model.train(was_training)
        return maps[:, 0].detach().numpy()


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of a heatmap's total mass that falls inside a mask (the localisation score of a test)."""
    total = float(heatmap.sum())
    return float(heatmap[mask].sum()) / total if total > 0 else 0.0
