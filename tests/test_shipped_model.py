"""The model shipped inside the package: `--model default` works with no training and no network."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import quiet, write_image
from pneumoscan.cli.main import main
from pneumoscan.config import TrainConfig
from pneumoscan.models.bundle import load_bundle, resolve_bundle
from pneumoscan.models.ensemble import MemberSpec
from pneumoscan.models.ood import CALIBRATION_VIEWS, FRAMING_GROUPS
from pneumoscan.serving.predict import load_inputs, predict_images
from pneumoscan.serving.torch_engine import TorchEngine

# (scale, horizontal shift) of the four extra test-time views in affine_grid's coordinates:
# zoom 0.93 and 1.07, and shifts of 4 % of the width to either side
TTA_VIEWS = ((1 / 0.93, 0.0), (1 / 1.07, 0.0), (1.0, 0.08), (1.0, -0.08))


def test_shipped_bundle_is_small_and_documents_itself() -> None:
    """An ensemble of two `compact` members (issue 19: framing augmentation, padding trimmed), each member's recipe
    recorded in the manifest, validated on one patient-grouped carve, with its framing-swap proxy."""
    folder = resolve_bundle("default")
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 20 * 1024 * 1024
    manifest = load_bundle("default").manifest
    assert manifest.arch == "ensemble" and manifest.preprocess.image_size == 128
    members = [MemberSpec.from_dict(m) for m in manifest.arch_kwargs["members"]]
    assert [(m.arch, m.preprocess.image_size, m.preprocess.fov) for m in members] == [("compact", 128, "trim")] * 2
    assert [m.command.split(" --out ")[0] for m in members] == [
        f"pneumoscan train --config configs/{name}.toml" for name in ("default-model", "default-member-seed1")]
    configs = [TrainConfig.from_dict(m.config or {}) for m in members]
    assert {(c.split_seed, c.val_fraction, c.hold_out_series, c.threshold_policy, c.augment) for c in configs} == {
        (0, 0.15, "none", "balanced", "framing")}  # one carve, validated on by every member and the ensemble
    assert [c.seed for c in configs] == [0, 1]
    validation = manifest.validation
    assert validation is not None and validation.metrics.roc_auc >= 0.99  # type: ignore[operator]
    assert validation.metrics.accuracy >= 0.95  # type: ignore[operator]
    assert manifest.threshold == validation.metrics.threshold
    framing = validation.framing
    assert framing is not None and framing.images == validation.metrics.n_images == 745
    assert framing.robust_balanced_accuracy >= 0.9 and framing.framing_gap <= 0.06
    assert framing.seen_families == ["zoom_in", "zoom_out"]  # the marker swap is the family training never made


def test_the_model_card_names_the_members_field_of_view() -> None:
    from pneumoscan.evaluation.model_card import _field_of_view

    assert _field_of_view(load_bundle("default").manifest).startswith("of every member `trim` (padding trimmed")


def test_predict_with_the_default_model_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = write_image(tmp_path / "xray.jpeg", value=120, size=(300, 260), mode="RGB")
    monkeypatch.chdir(tmp_path)
    bundle = load_bundle("default")
    files, images = load_inputs(bundle.preprocess.image_size, [image], strict=False, console=quiet())
    assert images.shape == (1, 1, 128, 128) and images.dtype == np.uint8
    (prediction,) = predict_images(TorchEngine(bundle), files, images)
    assert prediction.file == str(image) and 0.0 <= prediction.probability <= 1.0
    assert prediction.label == ("PNEUMONIA" if prediction.probability >= bundle.manifest.threshold else "NORMAL")


def _views(images: torch.Tensor) -> list[torch.Tensor]:
    views = [images]
    for scale, shift in TTA_VIEWS:
        theta = torch.tensor([[[scale, 0.0, shift], [0.0, scale, 0.0]]]).expand(len(images), 2, 3)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        views.append(F.grid_sample(images, grid, padding_mode="border", align_corners=False))
    return views


def test_test_time_augmentation_is_the_mean_of_the_five_views(tiny_synthetic: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    xray = next((tiny_synthetic / "test" / "PNEUMONIA").glob("*.png"))
    assert main(["predict", str(xray), "--tta", "--format", "json"]) == 0
    with_tta = json.loads(capsys.readouterr().out)[0]["probability"]
    assert main(["predict", str(xray), "--format", "json"]) == 0
    without = json.loads(capsys.readouterr().out)[0]["probability"]

    bundle = load_bundle("default")
    _, images = load_inputs(bundle.preprocess.image_size, [xray], strict=False, console=quiet())
    with torch.no_grad():
        normalized = bundle.preprocess.normalize(torch.from_numpy(images))
        per_view = [torch.sigmoid(bundle.model(view)).item() for view in _views(normalized)]
    assert without == pytest.approx(per_view[0], abs=1e-5)
    assert with_tta == pytest.approx(float(np.mean(per_view)), abs=1e-5)
    assert abs(with_tta - without) > 1e-4  # the views do move the score
    (python,) = predict_images(TorchEngine(bundle, tta=True), [xray], images)
    assert python.probability == pytest.approx(with_tta, abs=1e-6)


def test_shipped_model_carries_its_guard_and_drift_reference_and_flags_a_blank_image(tmp_path: Path) -> None:
    bundle = load_bundle("default")
    assert bundle.ood is not None and bundle.reference is not None
    assert bundle.manifest.ood is not None and bundle.ood.layers == bundle.manifest.ood.layers
    # the framing-robust guard of issue 20: a mean per class and framing group, thresholded over framings
    assert bundle.ood.views == list(CALIBRATION_VIEWS)
    assert all(len(means) == 2 * len(FRAMING_GROUPS) for means in bundle.ood.means)
    assert len(bundle.reference["scores"]) == 745  # the shared validation carve's films
    assert set(bundle.reference) == {"intensity_mean", "intensity_std", "sharpness", "scores"}
    blank = write_image(tmp_path / "blank.png", value=255, size=(400, 400))
    files, images = load_inputs(bundle.preprocess.image_size, [blank], strict=False, console=quiet())
    (prediction,) = predict_images(TorchEngine(bundle), files, images)
    assert prediction.in_distribution is False and prediction.ood_score > bundle.ood.threshold  # type: ignore[operator]
