"""The site-shift proxy (held-out acquisition series, per-series specificity) and the recipe settings searched on
it: intensity equalisation and border crop in the bundle's preprocessing, mixup, label smoothing, random erasing."""

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import TINY, quiet
from pneumoscan.config import TrainConfig
from pneumoscan.data.augment import augment, augment_preset, build_augmentation
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.data.synthetic import SyntheticSource, SyntheticSpec
from pneumoscan.errors import PneumoscanError
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.inference import predict_probabilities
from pneumoscan.pipeline.train import run_training
from pneumoscan.training.loop import soften
from pneumoscan.training.prepare import prepare_data

# --- preprocessing steps ------------------------------------------------------------------------------------------


def _gradient_images() -> torch.Tensor:
    ramp = torch.linspace(0.05, 0.95, 64)
    image = (ramp[None, :] * 0.7 + ramp[:, None] * 0.3).clamp(0, 1)
    noisy = image + 0.05 * torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    return noisy.clamp(0, 1).repeat(2, 1, 1, 1)


def test_equalisation_undoes_a_change_of_exposure() -> None:
    images = _gradient_images()
    equalize = Preprocess(image_size=64, intensity="equalize")
    exposed = images.pow(0.6)  # a brighter, differently processed film: a monotone change of every pixel
    plain = Preprocess(image_size=64)
    assert (plain.standardize(images) - plain.standardize(exposed)).abs().mean() > 0.05
    assert (equalize.standardize(images) - equalize.standardize(exposed)).abs().mean() < 0.01
    flat = equalize.standardize(images).flatten()
    assert abs(float(flat.mean()) - 0.5) < 0.03  # an equalised histogram is about uniform


def test_clahe_is_applied_and_stays_in_range() -> None:
    images = _gradient_images()
    out = Preprocess(image_size=64, intensity="clahe").standardize(images)
    assert out.shape == images.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.allclose(out, images, atol=0.02)


def test_border_crop_removes_what_sits_at_the_edges() -> None:
    image = torch.zeros(1, 1, 100, 100)
    image[..., :6, :] = 1.0  # a burnt-in marker strip along the top edge
    image[..., 40:60, 40:60] = 0.5
    cropped = Preprocess(image_size=100, border_crop=0.1).standardize(image)
    assert cropped.shape == image.shape
    assert float(cropped[..., :10, :].max()) < 0.01  # the strip is gone
    assert float(cropped[..., 50, 50]) == pytest.approx(0.5, abs=1e-3)  # the centre is kept, zoomed


def test_normalize_applies_the_steps_then_the_scale() -> None:
    images = (_gradient_images() * 255).to(torch.uint8)
    steps = Preprocess(image_size=64, intensity="equalize", border_crop=0.05, mean=0.4, std=0.2)
    assert torch.allclose(steps.normalize(images), (steps.standardize(images) - 0.4) / 0.2)
    with pytest.raises(ValueError, match="intensity 'gamma'"):
        Preprocess(intensity="gamma")
    with pytest.raises(ValueError, match="border_crop must be in"):
        Preprocess(border_crop=0.3)


def test_the_training_config_carries_the_steps_into_the_model_bundle(tiny_synthetic: Path, tmp_path: Path) -> None:
    config = TrainConfig(data=str(tiny_synthetic), **{**TINY, "epochs": 1}, intensity="clahe", border_crop=0.05)
    assert config.preprocess == Preprocess(image_size=32, intensity="clahe", border_crop=0.05)
    run_training(config, tmp_path / "run", quiet())
    assert load_bundle(tmp_path / "run").preprocess == config.preprocess


# --- mixup, label smoothing, erasing ------------------------------------------------------------------------------


def test_soften_is_the_identity_when_off() -> None:
    pixels, labels = torch.rand(4, 1, 8, 8), torch.tensor([0.0, 1.0, 1.0, 0.0])
    out_pixels, targets = soften(pixels, labels, TrainConfig())
    assert out_pixels is pixels and targets is labels


def test_label_smoothing_moves_targets_off_zero_and_one() -> None:
    labels = torch.tensor([0.0, 1.0])
    _, targets = soften(torch.rand(2, 1, 8, 8), labels, TrainConfig(label_smoothing=0.1))
    assert torch.allclose(targets, torch.tensor([0.05, 0.95]))


def test_mixup_blends_images_and_targets_alike() -> None:
    torch.manual_seed(0)
    pixels = torch.stack([torch.full((1, 4, 4), float(i)) for i in range(6)])
    labels = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    mixed, targets = soften(pixels, labels, TrainConfig(mixup=0.4))
    for image in mixed:
        value = float(image[0, 0, 0])
        assert torch.allclose(image, torch.full_like(image, value))  # a convex blend of two flat images
    # target = w*y_i + (1-w)*y_j and pixel = w*i + (1-w)*j share one weight w per batch
    torch.manual_seed(0)
    weight = float(torch.distributions.Beta(0.4, 0.4).sample())
    partner = torch.randperm(6)
    assert torch.allclose(targets, weight * labels + (1 - weight) * labels[partner])
    assert torch.allclose(mixed[:, 0, 0, 0], weight * torch.arange(6.0) + (1 - weight) * torch.arange(6.0)[partner])


def test_random_erasing_blanks_a_rectangle() -> None:
    torch.manual_seed(0)
    module = build_augmentation(replace(augment_preset("none"), erasing=1.0))
    out = augment(module, torch.ones(8, 1, 32, 32))
    blanked = (out == 0).flatten(1).float().mean(1)
    assert bool((blanked > 0.01).all()) and bool((blanked < 0.2).all())
    assert isinstance(build_augmentation(augment_preset("none")), torch.nn.Identity)
    assert TrainConfig(erasing=0.25).augmentation.erasing == 0.25


@pytest.mark.parametrize(("changes", "message"), [
    ({"erasing": 1.5}, "erasing must be in [0, 1]"), ({"label_smoothing": 0.5}, "label_smoothing in [0, 0.5)"),
    ({"border_crop": 0.25}, "border_crop in [0, 0.25)"), ({"mixup": -0.1}, "mixup a finite number at least 0"),
    ({"intensity": "gamma"}, "intensity 'gamma': choose from none, equalize, clahe"),
])
def test_bad_recipe_settings_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(PneumoscanError) as info:
        TrainConfig(**changes)
    assert message in str(info.value)


# --- the held-out series ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic films in the Kaggle layout where half the normal patients are renamed into a second acquisition
    series, NORMAL2-IM-*, as in the Kermany data."""
    root = tmp_path_factory.mktemp("series") / "data"
    SyntheticSource(SyntheticSpec(n_per_class=40, size=48, seed=5, difficulty=0.0)).write(root)
    for split in ("train", "test"):
        for file in sorted((root / split / "NORMAL").iterdir()):
            if int(file.name.split("-")[1]) % 2 == 0:
                shutil.move(file, file.with_name("NORMAL2-" + file.name))
    return root


def test_holding_out_a_series_removes_its_normals_from_training_and_validation(two_series: Path) -> None:
    base = TrainConfig(data=str(two_series), **TINY)
    plain = prepare_data(base, quiet())
    held = prepare_data(replace(base, hold_out_series="normal2"), quiet())
    assert plain.held_out is None and plain.summary.held_out is None
    assert held.held_out is not None and len(held.held_out) > 5
    assert {(r.series, r.label) for r in held.held_out.records} == {("NORMAL2", 0)}
    assert not any(r.series == "NORMAL2" for r in held.train.records + held.val.records)
    everything = {r.source for r in plain.train.records + plain.val.records}
    assert {r.source for r in held.train.records + held.val.records + held.held_out.records} == everything
    # the carve is the same: validation keeps its patients, minus the held-out films
    assert {r.source for r in held.val.records} == {r.source for r in plain.val.records if r.series != "NORMAL2"}
    assert held.summary.held_out.images == len(held.held_out) == held.summary.held_out.normal
    assert "normals of series NORMAL2 held out" in held.summary.validation
    rows = held.split_csv().splitlines()
    assert sum(row.endswith(",held_out") for row in rows) == len(held.held_out)
    with pytest.raises(PneumoscanError, match=r"no normal film of that series .* \(series of its normals: IM, NORMAL2"):
        prepare_data(replace(base, hold_out_series="NORMAL9"), quiet())


def test_the_run_records_per_series_specificity_and_the_held_out_proxy(two_series: Path, tmp_path: Path) -> None:
    config = TrainConfig(data=str(two_series), **{**TINY, "epochs": 2}, hold_out_series="NORMAL2",
                         threshold_policy="fixed:0.6")
    data = prepare_data(config, quiet())
    result = run_training(config, tmp_path / "run", quiet(), data=data)
    bundle = load_bundle(tmp_path / "run")
    validation = bundle.manifest.validation
    assert validation == result.validation
    val_probabilities = predict_probabilities(bundle, data.val.images)
    normals = [(r.series, p) for r, p in zip(data.val.records, val_probabilities, strict=True) if r.label == 0]
    assert validation.series_specificity == {"IM": pytest.approx(np.mean([p < 0.6 for _, p in normals]), abs=1e-6)}
    held = predict_probabilities(bundle, data.held_out.images)
    shift = validation.shift
    assert shift is not None and (shift.series, shift.images) == ("NORMAL2", len(held))
    assert shift.specificity == pytest.approx(float(np.mean(held < 0.6)), abs=1e-6)
    assert shift.specificity_at_half == pytest.approx(float(np.mean(held < 0.5)), abs=1e-6)
    assert shift.mean_probability == pytest.approx(float(np.mean(held)), abs=1e-6)
    pneumonia = val_probabilities[data.val.labels.numpy() == 1]
    expected_auc = roc_auc_score(np.r_[np.zeros(len(held)), np.ones(len(pneumonia))], np.r_[held, pneumonia])
    assert shift.roc_auc == pytest.approx(expected_auc, abs=1e-6)
    assert bundle.manifest.training.data.held_out.images == len(held)
