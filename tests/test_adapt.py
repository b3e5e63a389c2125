"""`pneumoscan adapt`: label-free adaptation (AdaBN, TENT, label-shift prior) on synthetic data with injected drift."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import quiet
from pneumoscan.cli.main import main
from pneumoscan.config import AdaptConfig, TrainConfig
from pneumoscan.data.loading import load_split
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.data.statistics import image_statistics
from pneumoscan.data.synthetic import SyntheticSource, SyntheticSpec
from pneumoscan.errors import PneumoscanError
from pneumoscan.evaluation.prior_shift import adapt_to_prior
from pneumoscan.metrics.thresholds import site_threshold, threshold_for_prior
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.inference import predict_probabilities
from pneumoscan.pipeline.adapt import adapt_bundle
from pneumoscan.pipeline.run import run_training
from pneumoscan.training.adaptation import adapt_model, recalibrate_batchnorm, tent

LOW_CONTRAST = 0.5  # the drift: every film's contrast halved around mid-grey (another machine's processing)


def _specificity_and_sensitivity(bundle_path: Path, data: Path) -> tuple[float, float]:
    bundle = load_bundle(bundle_path)
    images, _ = load_split(str(data), "test", bundle.preprocess.image_size, cache=False, console=quiet())
    called = predict_probabilities(bundle, images.images) >= bundle.manifest.threshold
    labels = images.labels.numpy().astype(bool)
    return float(np.mean(~called[~labels])), float(np.mean(called[labels]))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model trained on clean synthetic films; the test split drifted (labelled copy) and the same drifted films
    as one flat folder of unlabelled images (a site's export)."""
    root = tmp_path_factory.mktemp("adapt")
    clean = root / "clean"
    SyntheticSource(SyntheticSpec(n_per_class=80, size=64, seed=3, difficulty=0.0)).write(clean)
    config = TrainConfig(data=str(clean), arch="baseline", image_size=32, epochs=8, batch_size=16, val_fraction=0.25,
                         precision="fp32", augment="none")
    run_training(config, root / "model", quiet())
    drifted, flat = root / "drifted", root / "site"
    flat.mkdir()
    for name in ("NORMAL", "PNEUMONIA"):
        (drifted / "test" / name).mkdir(parents=True)
        for file in sorted((clean / "test" / name).iterdir()):
            pixels = np.asarray(Image.open(file).convert("L")).astype(np.float32) / 255.0
            changed = Image.fromarray((np.clip(0.5 + (pixels - 0.5) * LOW_CONTRAST, 0, 1) * 255).astype(np.uint8))
            changed.save(drifted / "test" / name / file.name)
            changed.save(flat / f"film-{name[0]}{file.stem}.png")  # no class folders: nothing to read a label from
    return {"clean": clean, "model": root / "model", "drifted": drifted, "flat": flat, "root": root}


@pytest.fixture(scope="module")
def adapted(site: dict[str, Path]):  # type: ignore[no-untyped-def]
    return adapt_bundle(site["model"], site["flat"], site["root"] / "adapted",
                        AdaptConfig(min_images=16, max_ood_share=1.0), quiet())


def test_the_drift_costs_specificity_and_adaptation_recovers_it(site: dict[str, Path], adapted) -> None:  # type: ignore[no-untyped-def]
    clean_spec, _ = _specificity_and_sensitivity(site["model"], site["clean"])
    drifted_spec, _ = _specificity_and_sensitivity(site["model"], site["drifted"])
    adapted_spec, adapted_sens = _specificity_and_sensitivity(adapted.out_dir, site["drifted"])
    assert clean_spec >= 0.95 and drifted_spec <= 0.7  # the injected drift hurts
    assert adapted_spec >= 0.95 and adapted_sens >= 0.9  # and is undone without a label


def test_the_adapted_bundle_records_what_was_done(site: dict[str, Path], adapted) -> None:  # type: ignore[no-untyped-def]
    original = load_bundle(site["model"])
    bundle = load_bundle(adapted.out_dir)
    record = bundle.manifest.adaptation
    assert record == adapted.record
    images = len(list(site["flat"].iterdir()))
    assert (record.source, record.images, record.skipped) == (str(site["flat"]), images, 0)
    assert record.methods == ["batchnorm"] and record.batchnorm_layers == 3 and record.tent_steps == 0
    assert record.threshold_before == record.threshold_after == original.manifest.threshold == bundle.manifest.threshold
    assert record.adapted_from == original.manifest.weights_sha256 != bundle.manifest.weights_sha256
    assert record.estimated_prevalence is None and 0 < record.ood_share_before <= 1
    # only BatchNorm statistics changed
    changed = {k for k, v in bundle.model.state_dict().items() if not torch.equal(v, original.model.state_dict()[k])}
    assert changed and all("running" in k or "num_batches_tracked" in k for k in changed)
    # the training record and validation record of the unadapted model are kept
    assert bundle.manifest.training == original.manifest.training
    assert bundle.manifest.validation == original.manifest.validation


def test_the_guard_and_drift_reference_are_the_sites(site: dict[str, Path], adapted) -> None:  # type: ignore[no-untyped-def]
    bundle = load_bundle(adapted.out_dir)
    images, _ = load_split(str(site["drifted"]), "test", 32, cache=False, console=quiet())
    site_images = torch.cat([images.images])
    assert bundle.ood is not None and "refit on the adapted model's features" in bundle.manifest.adaptation.guard
    flagged = bundle.ood.score(bundle.model, site_images, bundle.preprocess.normalize) > bundle.ood.threshold
    assert flagged.mean() <= 0.25  # the site's own films are in distribution for the adapted guard
    expected = image_statistics(site_images)
    assert sorted(bundle.reference) == ["intensity_mean", "intensity_std", "scores", "sharpness"]
    assert np.isclose(np.sort(bundle.reference["intensity_mean"]), np.sort(expected["intensity_mean"]),
                      atol=1e-6).all()
    assert len(bundle.reference["scores"]) == len(site_images)


def test_class_folder_names_are_never_read(site: dict[str, Path], tmp_path: Path) -> None:
    labelled = tmp_path / "labelled"
    shutil.copytree(site["drifted"] / "test", labelled)
    renamed = tmp_path / "renamed"
    shutil.copytree(site["drifted"] / "test", renamed)
    (renamed / "NORMAL").rename(renamed / "a")  # same order when sorted, names that say nothing
    (renamed / "PNEUMONIA").rename(renamed / "b")
    config = AdaptConfig(min_images=16, max_ood_share=1.0)
    first = adapt_bundle(site["model"], labelled, tmp_path / "one", config, quiet()).bundle.model.state_dict()
    second = adapt_bundle(site["model"], renamed, tmp_path / "two", config, quiet()).bundle.model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_tent_and_the_prior_are_recorded(site: dict[str, Path], tmp_path: Path) -> None:
    config = AdaptConfig(min_images=16, max_ood_share=1.0, tent_steps=2, prior=True)
    record = adapt_bundle(site["model"], site["flat"], tmp_path / "tent", config, quiet()).record
    assert record.methods == ["batchnorm", "tent", "prior"] and record.tent_steps == 2
    assert record.tent_entropy_after is not None and record.tent_entropy_before is not None
    assert record.training_prevalence == pytest.approx(0.5, abs=0.02)
    assert 0.0 < record.estimated_prevalence < 1.0
    # fixed:0.5: the same decision on probabilities rescaled from the training prevalence to the site's
    r1 = record.estimated_prevalence / record.training_prevalence
    r0 = (1 - record.estimated_prevalence) / (1 - record.training_prevalence)
    assert record.threshold_after == pytest.approx(0.5 * r0 / (0.5 * r0 + 0.5 * r1), abs=1e-6)
    spec, sens = _specificity_and_sensitivity(tmp_path / "tent", site["drifted"])
    assert spec >= 0.9 and sens >= 0.85


@pytest.mark.parametrize(("threshold", "train_prior", "site_prior"), [(0.5, 0.74, 0.3), (0.7428, 0.74, 0.62),
                                                                       (0.2, 0.5, 0.9), (0.5, 0.5, 0.5)])
def test_the_moved_threshold_makes_the_prior_corrected_decision(threshold: float, train_prior: float,
                                                                site_prior: float) -> None:
    p = np.linspace(0.001, 0.999, 999)
    r1, r0 = site_prior / train_prior, (1 - site_prior) / (1 - train_prior)
    corrected = r1 * p / (r1 * p + r0 * (1 - p))
    moved = threshold_for_prior(threshold, train_prior, site_prior)
    assert np.array_equal(p >= moved, corrected >= threshold - 1e-12) or \
        np.sum((p >= moved) != (corrected >= threshold)) <= 1  # one grid point may sit on the boundary
    if site_prior == train_prior:
        assert moved == pytest.approx(threshold)
    # EM's own rescaling agrees with the threshold move
    estimated, rescaled = adapt_to_prior(np.array([0.2, 0.9, 0.6, 0.95, 0.1]), train_prior)
    assert np.array_equal(rescaled >= threshold,
                          np.array([0.2, 0.9, 0.6, 0.95, 0.1]) >= threshold_for_prior(threshold, train_prior,
                                                                                       estimated))


def test_a_balanced_threshold_becomes_the_minimum_error_one_and_is_not_moved_twice(site: dict[str, Path],
                                                                                   tmp_path: Path) -> None:
    balanced = tmp_path / "balanced"
    shutil.copytree(site["model"], balanced)
    manifest = json.loads((balanced / "model.json").read_text())
    manifest["training"]["config"]["threshold"] = "balanced"
    manifest["threshold"] = 0.7
    (balanced / "model.json").write_text(json.dumps(manifest))
    config = AdaptConfig(min_images=16, max_ood_share=1.0, prior=True)
    first = adapt_bundle(balanced, site["flat"], tmp_path / "once", config, quiet()).record
    assert first.threshold_before == 0.7
    assert first.threshold_after == pytest.approx(
        threshold_for_prior(0.5, first.training_prevalence, first.estimated_prevalence), abs=1e-6)
    again = adapt_bundle(tmp_path / "once", site["flat"], tmp_path / "twice", config, quiet()).record
    assert again.threshold_before == 0.7  # from the threshold it was trained with, not the moved one
    assert again.threshold_after == pytest.approx(
        threshold_for_prior(0.5, again.training_prevalence, again.estimated_prevalence), abs=1e-6)


def test_site_threshold_rules() -> None:
    assert site_threshold("balanced", 0.74, 0.74, 0.74) == pytest.approx(0.5)
    assert site_threshold("fixed:0.3", 0.3, 0.5, 0.5) == pytest.approx(0.3)
    assert site_threshold("youden", 0.62, 0.7, 0.4) == pytest.approx(threshold_for_prior(0.62, 0.7, 0.4))
    assert site_threshold("fixed:0.5", 0.5, 0.5, 0.8) < 0.5  # more pneumonia expected: a lower bar


@pytest.mark.parametrize(("config", "message"), [
    (AdaptConfig(min_images=500, max_ood_share=1.0), "readable images; adapting needs at least 500"),
    (AdaptConfig(min_images=16, max_ood_share=0.05), "out-of-distribution guard flags"),
])
def test_too_few_or_foreign_images_are_refused(site: dict[str, Path], tmp_path: Path, config: AdaptConfig,
                                               message: str) -> None:
    with pytest.raises(PneumoscanError, match=message):
        adapt_bundle(site["model"], site["flat"], tmp_path / "out", config, quiet())
    assert not (tmp_path / "out").exists()


def test_bad_targets_are_refused(site: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(PneumoscanError, match="not a folder of images"):
        adapt_bundle(site["model"], site["flat"] / "missing", tmp_path / "out", AdaptConfig(min_images=16), quiet())
    with pytest.raises(PneumoscanError, match="a dataset root with train/ and test/; give the folder"):
        adapt_bundle(site["model"], site["clean"], tmp_path / "out", AdaptConfig(min_images=16), quiet())
    with pytest.raises(PneumoscanError, match="not over the one it adapts"):
        adapt_bundle(site["model"], site["flat"], site["model"], AdaptConfig(min_images=16), quiet())
    with pytest.raises(PneumoscanError, match="min_images must be at least 16"):
        AdaptConfig(min_images=3)


def test_adabn_stores_the_exact_statistics_of_the_images() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(1))
    preprocess = Preprocess(image_size=16)
    images = torch.randint(0, 256, (64, 1, 16, 16), dtype=torch.uint8)
    model(preprocess.normalize(images[:2]))
    layers = recalibrate_batchnorm(model, images, preprocess, batch_size=64)
    with torch.no_grad():
        features = model[0](preprocess.normalize(images))
    assert layers == 1 and not model.training
    assert torch.allclose(model[1].running_mean, features.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(model[1].running_var, features.var(dim=(0, 2, 3), unbiased=True), atol=1e-4)
    assert model[1].momentum == 0.1  # restored


def test_adabn_averages_batches_in_a_random_order_not_the_folder_order() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    preprocess = Preprocess(image_size=8)
    dark = torch.randint(0, 60, (64, 1, 8, 8), dtype=torch.uint8)
    bright = torch.randint(190, 256, (64, 1, 8, 8), dtype=torch.uint8)
    images = torch.cat([dark, bright])  # one class folder after the other
    recalibrate_batchnorm(model, images, preprocess, batch_size=16, seed=0)
    with torch.no_grad():
        population = model[0](preprocess.normalize(images)).var(dim=(0, 2, 3))
    ratio = model[1].running_var / population
    assert bool((ratio > 0.8).all()) and bool((ratio < 1.2).all())  # one-class batches would give ~0.1


def test_tent_moves_only_batchnorm_scales_and_shifts() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 1))
    preprocess = Preprocess(image_size=16)
    images = torch.randint(0, 256, (64, 1, 16, 16), dtype=torch.uint8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first, last = tent(model, images, preprocess, steps=5, lr=1e-2)
    after = model.state_dict()
    assert not torch.equal(before["1.weight"], after["1.weight"]) and not torch.equal(before["1.bias"], after["1.bias"])
    assert torch.equal(before["0.weight"], after["0.weight"]) and torch.equal(before["4.weight"], after["4.weight"])
    assert last < first  # entropy minimised
    assert all(p.requires_grad for p in model.parameters())  # restored
    steps = adapt_model(model, images, preprocess, tent_steps=1)
    assert steps.tent_steps == 1 and steps.batchnorm_layers == 1


def test_cli_adapt_then_evaluate_side_by_side(site: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "adapted"
    assert main(["adapt", "--model", str(site["model"]), "--data", str(site["flat"]), "--out", str(out),
                 "--min-images", "16", "--max-ood-share", "1", "--prior"]) == 0
    printed = capsys.readouterr().err
    assert "methods" in printed and "batchnorm, prior" in printed
    assert main(["evaluate", "--model", str(site["model"]), "--model", str(out), "--data", str(site["drifted"]),
                 "--bootstrap", "200", "--weeks", "2", "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().err
    comparison = json.loads((tmp_path / "eval" / "comparison.json").read_text())
    names = [model["name"] for model in comparison["models"]]
    assert names == ["model", "adapted"]
    assert comparison["models"][0]["adaptation"] == "unadapted"
    assert comparison["models"][1]["adaptation"].startswith("adapted (batchnorm, prior) on")
    assert comparison["models"][1]["specificity"] > comparison["models"][0]["specificity"]
    for name in names:
        assert (tmp_path / "eval" / name / "metrics.json").is_file()
    card = (tmp_path / "eval" / "adapted" / "MODEL_CARD.md").read_text()
    assert f"**Adapted without labels** to {len(list(site['flat'].iterdir()))} images of `{site['flat']}`" in card
    assert "Adapted without labels" not in (tmp_path / "eval" / "model" / "MODEL_CARD.md").read_text()
    assert "side by side" in printed
    assert main(["adapt", "--model", str(site["model"]), "--data", str(site["flat"]), "--out",
                 str(tmp_path / "few")]) == 2  # fewer than the default 100 images
    assert "adapting needs at least 100" in capsys.readouterr().err
