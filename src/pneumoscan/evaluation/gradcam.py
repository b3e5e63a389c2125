"""Grad-CAM heatmaps (Selvaraju et al. 2017) through MONAI, for any single-logit model in the registry.

The gradient is that of the one pneumonia logit. The layer explained is the one the architecture
declares at registration (its last feature stage: `compact`'s last residual stage, `resnet18`'s layer4,
`densenet121`'s final activation before pooling); `target_layer` overrides it with any module name.
"""

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pneumoscan.data.field_of_view import field_of_view_box
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.errors import PneumoscanError
from pneumoscan.models.modes import eval_mode
from pneumoscan.models.registry import bundle_spec

if TYPE_CHECKING:
    from pneumoscan.models.bundle import Manifest


def _scale_each(maps: torch.Tensor) -> torch.Tensor:
    """Each map to [0, 1] by its own maximum (MONAI's default normalizer flips maps, high becomes low)."""
    peak = maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, *([1] * (maps.dim() - 1)))
    return maps / peak


def default_layer(arch: str, target_layer: str | None = None, arch_kwargs: dict[str, Any] | None = None) -> str:
    """`target_layer` if given, else the layer the architecture declares for explanations."""
    return target_layer or bundle_spec(arch, arch_kwargs).explained_layer


class GradCam:
    """Heatmaps in [0, 1] at the input's size, one per image, for the model's pneumonia logit."""

    def __init__(self, model: nn.Module, target_layer: str) -> None:
        from monai.visualize import GradCAM  # imported here: MONAI takes seconds to import

        names = dict(model.named_modules())
        self.target_layer = target_layer
        if self.target_layer not in names:
            raise PneumoscanError(f"Grad-CAM target layer '{self.target_layer}' is not a module of this model")
        self.model = model
        self._cam = GradCAM(nn_module=model, target_layers=self.target_layer, postprocessing=_scale_each)

    def __call__(self, inputs: torch.Tensor) -> np.ndarray:
        """Normalized model inputs (N, C, H, W) -> heatmaps (N, H, W), each scaled to [0, 1]."""
        with eval_mode(self.model), torch.enable_grad():
            maps = self._cam(inputs.float().clone().requires_grad_(True), class_idx=0)
        return maps[:, 0].detach().numpy()


def explained_preprocess(manifest: "Manifest") -> Preprocess:
    """The preprocessing of the input the explained layer sees: the bundle's own, or for an ensemble (whose
    explained layer sits in its first member) that member's."""
    members = manifest.arch_kwargs.get("members") or []
    if members:
        return Preprocess(**members[0]["preprocess"])
    return manifest.preprocess


def explained_boxes(preprocess: Preprocess, images: torch.Tensor) -> np.ndarray:
    """(N, 4) boxes (top, bottom, left, right as fractions of each film) of what the model saw of uint8 films
    (N, 1, S, S): the field of view, then the border crop inside it."""
    pixels = images.float() / 255.0
    box = field_of_view_box(pixels, preprocess.fov).clone()
    cut = preprocess.border_crop
    if cut > 0:
        height, width = box[:, 1] - box[:, 0], box[:, 3] - box[:, 2]
        box = torch.stack([box[:, 0] + cut * height, box[:, 1] - cut * height,
                           box[:, 2] + cut * width, box[:, 3] - cut * width], 1)
    return box.numpy()


def to_image_frame(heatmaps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Heatmaps (N, H, W) computed on each film's cropped input, put back where they lie on the whole film:
    resized into the film's box (N, 4: top, bottom, left, right as fractions) and zero outside it, so an overlay
    lines up with the image."""
    height, width = heatmaps.shape[-2:]
    if np.allclose(boxes, [0.0, 1.0, 0.0, 1.0]):
        return heatmaps
    framed = np.zeros((len(heatmaps), height, width), dtype=np.float32)
    for index, (top, bottom, left, right) in enumerate(np.asarray(boxes, dtype=np.float64)):
        r0, r1 = max(0, round(top * height)), min(height, round(bottom * height))
        c0, c1 = max(0, round(left * width)), min(width, round(right * width))
        if r1 - r0 < 1 or c1 - c0 < 1:
            continue
        heatmap = torch.from_numpy(np.asarray(heatmaps[index], dtype=np.float32))[None, None]
        framed[index, r0:r1, c0:c1] = torch.nn.functional.interpolate(heatmap, size=(r1 - r0, c1 - c0),
                                                                       mode="bilinear", align_corners=False)[0, 0]
    return framed


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of a heatmap's total mass that falls inside a mask (the localisation score of a test)."""
    total = float(heatmap.sum())
    return float(heatmap[mask].sum()) / total if total > 0 else 0.0
