import pytest
import torch

from pneumoscan.data.drift import Perturbation
from pneumoscan.errors import PneumoscanError


@pytest.fixture()
def pixels() -> torch.Tensor:
    ramp = torch.linspace(0.05, 0.95, 64)
    return (ramp[None, :] * torch.ones(64, 1))[None, None].repeat(2, 1, 1, 1)


def test_each_perturbation_moves_the_image_the_named_way(pixels: torch.Tensor) -> None:
    assert Perturbation.parse("exposure:0.5")(pixels).mean() > pixels.mean() + 0.05
    assert Perturbation.parse("exposure:-0.5")(pixels).mean() < pixels.mean() - 0.05
    assert Perturbation.parse("contrast:0.5")(pixels).std().item() == pytest.approx(0.5 * pixels.std().item(), rel=1e-3)
    noisy = Perturbation.parse("noise:0.1")(pixels)
    assert (noisy - pixels).std().item() == pytest.approx(0.1, rel=0.15)
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None, :]).remainder(2).float()[None, None]
    assert Perturbation.parse("resolution:0.5")(checker).std() < 0.2 * checker.std()  # fine detail is lost


def test_strength_zero_is_identity_and_the_seed_fixes_the_noise(pixels: torch.Tensor) -> None:
    for name in ("exposure", "contrast", "noise", "resolution"):
        assert torch.allclose(Perturbation.parse(f"{name}:0")(pixels), pixels, atol=1e-5), name
    noise = Perturbation.parse("noise:0.2")
    assert torch.equal(noise(pixels, seed=3), noise(pixels, seed=3))
    assert not torch.equal(noise(pixels, seed=3), noise(pixels, seed=4))


def test_bad_perturbations_are_refused_with_the_reason() -> None:
    for text, reason in (("blur:0.2", "unknown"), ("noise:lots", "number"), ("resolution:1.5", "must lie")):
        with pytest.raises(PneumoscanError, match=reason):
            Perturbation.parse(text)
    assert str(Perturbation.parse("exposure:-0.4")) == "exposure:-0.4"
