"""Training augmentation: named presets, seeded, shape- and range-preserving, flips only on request."""

from dataclasses import replace

import pytest
import torch

from pneumoscan.data.augment import (
    AUGMENT_PRESETS,
    AugmentConfig,
    RandomFraming,
    augment,
    augment_preset,
    build_augmentation,
)
from pneumoscan.errors import PneumoscanError


def test_presets_by_name() -> None:
    assert list(AUGMENT_PRESETS) == ["standard", "shift", "framing", "none"]
    assert AUGMENT_PRESETS["standard"] == AugmentConfig()
    assert AUGMENT_PRESETS["none"].enabled is False
    shift = AUGMENT_PRESETS["shift"]
    assert shift.gamma > 0 and shift.noise_std > 0 and shift.blur_sigma > 0 and shift.zoom > AugmentConfig().zoom
    assert not any(preset.hflip for preset in AUGMENT_PRESETS.values())


def test_augment_preset_adds_flips_only_when_asked() -> None:
    assert augment_preset("shift") == AUGMENT_PRESETS["shift"]
    assert augment_preset("shift", hflip=True) == replace(AUGMENT_PRESETS["shift"], hflip=True)
    assert augment_preset("none", hflip=True).hflip is True
    with pytest.raises(PneumoscanError, match="unknown augmentation preset 'sideways'; choose from standard, shift"):
        augment_preset("sideways")


def test_augmentation_is_seeded_and_keeps_shape_and_range() -> None:
    images = torch.rand(4, 1, 48, 48)
    module = build_augmentation(AugmentConfig())
    torch.manual_seed(1)
    a = augment(module, images.clone())
    torch.manual_seed(1)
    b = augment(module, images.clone())
    torch.manual_seed(2)
    c = augment(module, images.clone())
    assert a.shape == images.shape and torch.equal(a, b)
    assert not torch.allclose(a, images) and not torch.allclose(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_flip_is_off_by_default_and_augmentation_can_be_disabled() -> None:
    assert "RandomHorizontalFlip" not in repr(build_augmentation(AugmentConfig()))
    assert "RandomHorizontalFlip" in repr(build_augmentation(augment_preset("standard", hflip=True)))
    images = torch.rand(2, 1, 16, 16)
    assert torch.equal(augment(build_augmentation(augment_preset("none")), images.clone()), images)


def test_shift_preset_adds_exposure_noise_and_blur() -> None:
    module = build_augmentation(augment_preset("shift"))
    names = repr(module)
    assert all(name in names for name in ("RandomGamma", "RandomGaussianNoise", "RandomGaussianBlur"))
    assert "RandomGamma" not in repr(build_augmentation(augment_preset("standard")))
    torch.manual_seed(0)
    out = augment(module, torch.rand(8, 1, 40, 40))
    assert out.shape == (8, 1, 40, 40) and out.min() >= 0 and out.max() <= 1


def test_framing_preset_zooms_both_ways_and_pads_black_grey_or_edge() -> None:
    config = augment_preset("framing")
    assert config.framing_zoom == (0.7, 1.8) and config.gamma == AUGMENT_PRESETS["shift"].gamma
    framing = RandomFraming(zoom=(0.6, 0.6), aspect=0.0, rotation_deg=0.0, shift=0.0)  # always zoomed out
    images = torch.full((60, 1, 32, 32), 0.8)
    torch.manual_seed(0)
    out = framing(images)
    corners = out[:, 0, 0, 0]
    # each film's uncovered corner is black, mid-grey or its own edge (0.8), all three drawn
    assert {round(v, 3) for v in corners.tolist()} == {0.0, 0.5, 0.8}
    assert torch.allclose(out[:, 0, 16, 16], torch.full((60,), 0.8))  # the film itself is still in the middle
    torch.manual_seed(0)
    assert torch.equal(framing(images), out)  # seeded like every other step
    zoomed_in = RandomFraming(zoom=(1.5, 1.5), aspect=0.0, rotation_deg=0.0, shift=0.0)
    square = torch.zeros(1, 1, 32, 32)
    square[..., 8:24, 8:24] = 1.0
    assert zoomed_in(square).mean() > square.mean() * 2.0  # 1.5^2 = 2.25 x the area
