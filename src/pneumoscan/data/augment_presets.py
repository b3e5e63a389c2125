"""The augmentation settings and their named presets, torch-free, so a recipe can be read and checked without
importing torch (pneumoscan.data.augment builds the modules that apply them)."""

from dataclasses import dataclass, replace

from pneumoscan.errors import PneumoscanError


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    rotation_deg: float = 7.0
    shift: float = 0.06
    zoom: float = 0.08
    brightness: float = 0.15
    contrast: float = 0.15
    hflip: bool = False
    gamma: float = 0.0  # exposure: gamma drawn from [1 - gamma, 1 + gamma]
    noise_std: float = 0.0  # Gaussian sensor noise (on [0, 1] pixels), applied to half the images
    blur_sigma: float = 0.0  # Gaussian blur up to this sigma (pixels), applied to a third of the images
    erasing: float = 0.0  # share of images with one random rectangle (2-15 % of the area) blanked
    framing_zoom: tuple[float, float] | None = None  # wide zoom range (log-uniform) with aspect jitter and padding;
    # when set, RandomFraming replaces the affine step (its rotation and shift are used, `zoom` is not)
    aspect: float = 0.25  # with framing_zoom: width/height ratio drawn log-uniformly from [1/(1+a), 1+a]


AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "standard": AugmentConfig(),
    "shift": AugmentConfig(zoom=0.15, brightness=0.2, contrast=0.25, gamma=0.35, noise_std=0.03, blur_sigma=1.2),
    "framing": AugmentConfig(zoom=0.15, brightness=0.2, contrast=0.25, gamma=0.35, noise_std=0.03, blur_sigma=1.2,
                             framing_zoom=(0.7, 1.8)),
    "none": AugmentConfig(enabled=False),
}


def augment_preset(name: str, hflip: bool = False) -> AugmentConfig:
    """A named preset, with horizontal flips added if asked."""
    if name not in AUGMENT_PRESETS:
        raise PneumoscanError(f"unknown augmentation preset '{name}'; choose from {', '.join(AUGMENT_PRESETS)}")
    return replace(AUGMENT_PRESETS[name], hflip=hflip)
