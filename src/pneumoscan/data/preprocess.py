"""The one preprocessing every tool shares: uint8 pixels to the normalized float tensor a model sees.

Its settings travel in each model bundle, so training, evaluation and prediction never disagree.
Two optional steps target acquisition differences between sites (issue: the official test split's
normal films from another acquisition series were called pneumonia far more often):

- `intensity`: per-image histogram equalisation (`equalize`) or contrast-limited adaptive
  equalisation (`clahe`, kornia), so exposure and contrast curves that differ between machines
  reach the network as one intensity distribution. Any monotone change of exposure is undone
  exactly by `equalize`.
- `border_crop`: a share of each side cut away (and the centre resized back), which removes the
  burnt-in markers, collimation edges and text that sit near a film's border.

- `fov`: a canonical field of view (pneumoscan.data.field_of_view): padding trimmed (`trim`), or the film
  cropped to its lung fields (`lungs`), so the film's framing (how tightly the lungs fill it, markers and
  text at its edges) no longer reaches the network (issue 19).

In training they run after augmentation, on every batch, exactly as at inference; the field of view first,
on the film as it arrives, then the border crop and the intensity step.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pneumoscan.data.modes import FOV_MODES, INTENSITY_MODES, PORTABLE_OPS

if TYPE_CHECKING:  # torch is imported where pixels are touched, so settings can be read without it
    import torch
LEVEL_TOLERANCE = 1e-3  # in 8-bit levels: far above float32 rounding at 255, far below a level
CLAHE_CLIP_LIMIT = 2.0
CLAHE_GRID = (8, 8)
_PORTABLE = PORTABLE_OPS


@contextlib.contextmanager
def portable_ops() -> Iterator[None]:
    """Inside, histogram equalisation uses only comparisons, sums and products (no scatter, no asserts), which
    every mobile runtime lowers; the result is the same. Outside, kornia's faster version runs. The padding trim's
    exact sums run in float32 inside (TFLite has no float64 sum), in float64 outside."""
    token = _PORTABLE.set(True)
    try:
        yield
    finally:
        _PORTABLE.reset(token)


def equalize_levels_portable(levels: "torch.Tensor") -> "torch.Tensor":
    """kornia's (and PIL's) histogram equalisation of integer 8-bit levels (N, C, H, W), as [0, 1] output, with
    one-hot counting instead of scatter. Memory grows with pixels x 256: for export at batch 1, not training."""
    import torch

    shape = levels.shape
    flat = levels.flatten(0, 1).flatten(1)  # (planes, pixels)
    bins = torch.arange(256, dtype=flat.dtype, device=flat.device)
    onehot = (flat[..., None] == bins).to(flat.dtype)  # (planes, pixels, 256)
    histogram = onehot.sum(1)
    last = torch.where(histogram > 0, bins, torch.zeros_like(bins)).amax(1, keepdim=True)
    last_count = (histogram * (bins == last).to(flat.dtype)).sum(1, keepdim=True)
    step = torch.div(histogram.sum(1, keepdim=True) - last_count, 255, rounding_mode="trunc")
    lut = torch.div(histogram.cumsum(1) + torch.div(step, 2, rounding_mode="trunc"), step.clamp(min=1),
                    rounding_mode="trunc")
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut[:, :-1]], 1).clamp(0, 255)
    mapped = (onehot @ lut[..., None]).squeeze(-1)
    result = torch.where(step == 0, flat + 0.5, mapped)  # a flat plane is left as it is (as kornia leaves it)
    return (result / 255.0).reshape(shape)


@dataclass(frozen=True)
class Preprocess:
    image_size: int = 150
    channels: int = 1
    mean: float = 0.5
    std: float = 0.25
    intensity: str = "none"
    border_crop: float = 0.0  # share of the side removed at each edge
    fov: str = "none"  # canonical field of view: none, trim (padding) or lungs (FOV_MODES)

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"intensity '{self.intensity}': choose from {', '.join(INTENSITY_MODES)}")
        if not 0.0 <= self.border_crop < 0.25:
            raise ValueError(f"border_crop must be in [0, 0.25), got {self.border_crop}")
        if self.fov not in FOV_MODES:
            raise ValueError(f"fov '{self.fov}': choose from {', '.join(FOV_MODES)}")

    def standardize(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """uint8 or [0, 1] float (N, C, H, W) to [0, 1] float after the field of view, border crop and intensity
        steps, in that order."""
        import torch
        import torch.nn.functional as F

        from pneumoscan.data.field_of_view import canonical_field_of_view

        if pixels.dtype == torch.uint8:
            pixels = pixels.float().div_(255.0)
        if self.fov != "none":
            pixels = canonical_field_of_view(pixels, self.fov)
        if self.border_crop > 0:
            height, width = pixels.shape[-2:]
            top, left = round(height * self.border_crop), round(width * self.border_crop)
            centre = pixels[..., top : height - top, left : width - left]
            pixels = F.interpolate(centre, size=(height, width), mode="bilinear", align_corners=False)
        if self.intensity == "equalize":
            import kornia.enhance

            # kornia bins each pixel at floor(255 x). A flat region of 8-bit level k sits at 255 x = k up to a
            # rounding error, so the last bit of arithmetic (another runtime, an exported graph) could move the
            # whole region one bin down. Snap to the level's centre first: the same bins, robust to rounding.
            levels = torch.floor(pixels.clamp(0.0, 1.0) * 255.0 + LEVEL_TOLERANCE).clamp(max=255.0)
            equalized = (equalize_levels_portable(levels) if _PORTABLE.get()
                         else kornia.enhance.equalize((levels + 0.5) / 255.0))
            pixels = equalized.clamp(0.0, 1.0)
        elif self.intensity == "clahe":
            import kornia.enhance

            pixels = kornia.enhance.equalize_clahe(pixels.clamp(0.0, 1.0), clip_limit=CLAHE_CLIP_LIMIT,
                                                   grid_size=CLAHE_GRID)
        return pixels

    def normalize(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """uint8 (N, 1, H, W) or float in [0, 1] to the model's input scale."""
        return (self.standardize(pixels) - self.mean) / self.std
