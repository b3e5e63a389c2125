"""The out-of-distribution guard: fitted at the declared stages, carried in the bundle, used by predict."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TinyRun, quiet
from pneumoscan.data.framing_swaps import zoom_in
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.data.synthetic import SyntheticSource, SyntheticSpec
from pneumoscan.evaluation.ood_probes import GENERATED, probe_images
from pneumoscan.models import create_model
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.ood import CALIBRATION_VIEWS, FRAMING_GROUPS, fit_guard, stage_features
from pneumoscan.models.registry import model_spec
from pneumoscan.serving.predict import load_inputs, predict_images
from pneumoscan.serving.torch_engine import TorchEngine


def test_the_bundle_carries_the_guard_at_the_declared_stages(tiny_run: TinyRun) -> None:
    manifest = json.loads((tiny_run.out_dir / "model.json").read_text())
    assert manifest["ood"]["layers"] == list(model_spec("baseline").feature_stages)
    assert manifest["ood"]["false_alarm_rate"] == 0.05
    bundle = load_bundle(tiny_run.out_dir)
    assert bundle.ood is not None and bundle.ood.threshold == manifest["ood"]["threshold"]
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    again = load_bundle(tiny_run.out_dir)
    assert np.array_equal(bundle.ood.score(bundle.model, images, bundle.preprocess.normalize),
                          again.ood.score(again.model, images, again.preprocess.normalize))  # type: ignore[union-attr]


def test_validation_false_alarms_stay_within_the_stated_rate_in_every_framing(tiny_run: TinyRun) -> None:
    """The threshold is the highest of the 95th percentiles over the validation films as they are and in each
    calibration framing (zoomed in, zoomed out onto black), so none of those views is flagged more often."""
    bundle = load_bundle(tiny_run.out_dir)
    guard, val = bundle.ood, tiny_run.data.val
    assert guard is not None and guard.views == list(CALIBRATION_VIEWS)
    quantiles = []
    for view in CALIBRATION_VIEWS.values():
        scores = guard.score(bundle.model, view(val.images), bundle.preprocess.normalize)
        assert np.mean(scores > guard.threshold) <= guard.false_alarm_rate
        quantiles.append(float(np.quantile(scores, 0.95, method="higher")))
    assert guard.threshold == pytest.approx(max(quantiles), rel=1e-6)
    assert json.loads((tiny_run.out_dir / "model.json").read_text())["ood"]["views"] == list(CALIBRATION_VIEWS)


def test_a_guard_fitted_on_framing_groups_flags_fewer_zoomed_films() -> None:
    """Fitted on the films as they are only, a guard flags zoomed-in films of its own kind; fitted with one mean
    per framing group (the default) it flags far fewer, and still flags non-X-rays."""
    torch.manual_seed(0)
    source = SyntheticSource(SyntheticSpec(n_per_class=40, size=64, seed=3))
    records = source.splits["train"]
    images = torch.from_numpy(np.stack([source.read(r, 64) for r in records]))[:, None]
    labels = np.array([r.label for r in records])
    model = create_model("baseline", image_size=64)
    preprocess = Preprocess(image_size=64)
    layers = list(model_spec("baseline").feature_stages)
    fit, val = images[::2], images[1::2]
    plain = fit_guard(model, layers, preprocess.normalize, fit, labels[::2], val, framing_groups=(1.0,))
    reframed = fit_guard(model, layers, preprocess.normalize, fit, labels[::2], val)
    assert len(reframed.means[0]) == 2 * len(FRAMING_GROUPS)  # a mean per class and framing group
    zoomed = zoom_in(val, 1.4)

    def flagged(guard, films):  # type: ignore[no-untyped-def]
        return float(np.mean(guard.score(model, films, preprocess.normalize) > guard.threshold))

    assert plain.views == ["as they are"]
    assert flagged(reframed, zoomed) <= 0.05 < flagged(plain, zoomed)
    noise = torch.randint(0, 256, (20, 1, 64, 64), dtype=torch.uint8)
    assert flagged(reframed, noise) == 1.0


def test_predict_flags_noise_text_and_flat_images_but_not_xrays(tiny_run: TinyRun, tiny_synthetic: Path,
                                                                tmp_path: Path) -> None:
    xrays = sorted((tiny_synthetic / "test").rglob("*.png"))
    stacked = np.stack([np.asarray(Image.open(p).convert("L").resize((64, 64))) for p in xrays])
    probes = probe_images(stacked, per_kind=3, seed=1)
    for kind in ("uniform noise", "text", "flat"):
        for index, image in enumerate(probes[kind]):
            Image.fromarray(image).save(tmp_path / f"{kind.replace(' ', '_')}{index}.png")
    bundle = load_bundle(tiny_run.out_dir)
    files, images = load_inputs(bundle.preprocess.image_size, [tmp_path, *xrays], strict=False, console=quiet())
    predictions = predict_images(TorchEngine(bundle), files, images)
    generated = [p for p in predictions if Path(p.file).parent == tmp_path]
    real = [p for p in predictions if Path(p.file).parent != tmp_path]
    assert len(generated) == 9 and len(real) == 16
    assert all(p.in_distribution is False for p in generated)  # every generated non-X-ray is flagged
    assert np.mean([p.in_distribution is False for p in real]) <= 0.25  # few (synthetic) X-rays are
    for p in predictions:
        assert p.in_distribution == (p.ood_score <= bundle.ood.threshold)  # type: ignore[operator,union-attr]


def test_probes_are_seeded_and_cover_every_kind() -> None:
    xrays = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    first, second = probe_images(xrays, per_kind=2, seed=4), probe_images(xrays, per_kind=2, seed=4)
    assert set(first) == set(GENERATED) | {"inverted X-ray", "rotated X-ray (90/180/270)"}
    for kind, images in first.items():
        assert images.dtype == np.uint8 and images.shape == (2, 48, 48), kind
        assert np.array_equal(images, second[kind])
    assert all(any(np.array_equal(255 - inverted, x) for x in xrays) for inverted in first["inverted X-ray"])


def _random_images(count: int, size: int, seed: int) -> torch.Tensor:
    return torch.randint(40, 200, (count, 1, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


@pytest.mark.filterwarnings(r"ignore:std\(\).\sdegrees of freedom:UserWarning")
def test_stages_shrunk_to_one_pixel_are_left_out() -> None:
    """compact at 32 px: its last stage is 1 x 1, where a per-channel spread does not exist."""
    torch.manual_seed(0)
    model = create_model("compact", image_size=32)
    normalize = Preprocess(image_size=32).normalize
    labels = np.array([0, 1] * 20)
    guard = fit_guard(model, model_spec("compact").feature_stages, normalize, _random_images(40, 32, 0), labels,
                      _random_images(20, 32, 1))
    assert guard.layers == ["stem", "stages.0", "stages.1", "stages.2"]
    assert len(guard.means) == len(guard.precisions) == len(guard.centers) == 4
    assert np.isfinite(guard.score(model, _random_images(5, 32, 2), normalize)).all()


def test_the_guard_standardizes_each_stage_on_the_training_images() -> None:
    """Without reframed copies (framing_groups=(1.0,)), the standardization is over the training films exactly."""
    torch.manual_seed(0)
    model = create_model("baseline", image_size=32)
    normalize = Preprocess(image_size=32).normalize
    train, val = _random_images(40, 32, 0), _random_images(20, 32, 1)
    labels = np.array([0, 1] * 20)
    guard = fit_guard(model, model_spec("baseline").feature_stages, normalize, train, labels, val,
                      false_alarm_rate=0.1, framing_groups=(1.0,))
    assert guard.means[0].shape == (2, 64)  # two classes; mean and std of 32 channels
    distances = guard._distances(stage_features(model, guard.layers, train, normalize))
    assert np.allclose(np.median((distances - guard.centers) / guard.scales, axis=0), 0.0, atol=1e-6)
    assert guard.threshold == float(np.quantile(guard.score(model, val, normalize), 0.9, method="higher"))
    assert guard.false_alarm_rate == 0.1 and model.training  # the caller's mode is restored


def test_one_pass_gives_the_same_label_and_guard_score_as_two(tiny_run) -> None:  # type: ignore[no-untyped-def]
    from pneumoscan.models.bundle import load_bundle
    from pneumoscan.models.inference import predict_probabilities

    bundle = load_bundle(tiny_run.out_dir)
    images = tiny_run.data.val.images
    assert bundle.ood is not None
    probabilities, scores = bundle.ood.score_and_predict(bundle.model, images, bundle.preprocess.normalize)
    np.testing.assert_allclose(probabilities, predict_probabilities(bundle, images), atol=1e-6)
    np.testing.assert_allclose(scores, bundle.ood.score(bundle.model, images, bundle.preprocess.normalize), atol=1e-6)
