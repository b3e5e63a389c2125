"""Grad-CAM: the declared layer, the right sign, maps scaled to [0, 1], and one figure per explained image."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import TinyRun, quiet, write_image
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.errors import PneumoscanError
from pneumoscan.evaluation.gradcam import GradCam, default_layer, mass_inside
from pneumoscan.models import create_model, list_models
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.registry import model_spec
from pneumoscan.serving.explain import write_explanations
from pneumoscan.serving.predict import load_inputs, predict_images
from pneumoscan.serving.torch_engine import TorchEngine


def _brightness_model(weight: float) -> nn.Module:
    """A model whose logit is `weight` times the mean of a ReLU'd 1x1 convolution of the image."""
    conv = nn.Conv2d(1, 1, 1)
    nn.init.ones_(conv.weight), nn.init.zeros_(conv.bias)
    linear = nn.Linear(1, 1)
    nn.init.constant_(linear.weight, weight), nn.init.zeros_(linear.bias)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)


def _patch_image() -> torch.Tensor:
    image = torch.zeros(1, 1, 32, 32)
    image[..., 4:12, 20:28] = 1.0
    return image


def test_default_layer_is_the_declared_one_unless_overridden() -> None:
    for arch in list_models():
        assert default_layer(arch) == model_spec(arch).explained_layer
        assert default_layer(arch, "some.layer") == "some.layer"
    with pytest.raises(PneumoscanError, match="unknown architecture"):
        default_layer("no-such-net")


@pytest.mark.parametrize("arch", list_models())
def test_every_architecture_gets_heatmaps_of_the_input_size_in_zero_one(arch: str) -> None:
    torch.manual_seed(0)
    model = create_model(arch, image_size=64)
    maps = GradCam(model, default_layer(arch))(torch.randn(2, 1, 64, 64))
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    assert model.training  # the caller's mode is restored


def test_heat_sits_on_what_raises_the_logit() -> None:
    """A model whose logit grows with brightness: the heat must peak on the bright patch, and nowhere else."""
    image = _patch_image()
    heatmap = GradCam(_brightness_model(1.0), target_layer="1")(image)[0]
    inside = image[0, 0].numpy() > 0
    assert np.unravel_index(heatmap.argmax(), heatmap.shape) in set(zip(*np.nonzero(inside), strict=True))
    assert mass_inside(heatmap, inside) > 0.9
    assert heatmap.max() == pytest.approx(1.0)  # scaled by its own peak
    two = torch.cat([_patch_image(), 0.25 * _patch_image()])
    assert GradCam(_brightness_model(1.0), target_layer="1")(two).max(axis=(1, 2)) == pytest.approx([1.0, 1.0])


def test_what_lowers_the_logit_gets_no_heat() -> None:
    """The same model with a negative weight: brightness lowers the pneumonia score, so no region is red
    (a normalizer that flipped the map would paint the patch instead)."""
    heatmap = GradCam(_brightness_model(-1.0), target_layer="1")(_patch_image())[0]
    assert np.allclose(heatmap, 0.0)


def test_an_unknown_target_layer_is_refused() -> None:
    with pytest.raises(PneumoscanError, match="Grad-CAM target layer 'stages.9' is not a module of this model"):
        GradCam(create_model("compact"), target_layer="stages.9")


def test_mass_inside() -> None:
    heatmap = np.array([[1.0, 3.0], [0.0, 4.0]])
    mask = np.array([[True, False], [False, True]])
    assert mass_inside(heatmap, mask) == pytest.approx(5 / 8)
    assert mass_inside(np.zeros((2, 2)), mask) == 0.0


def test_explanations_write_one_figure_per_image_with_unique_names(tiny_run: TinyRun, tiny_synthetic: Path,
                                                                   tmp_path: Path) -> None:
    bundle = load_bundle(tiny_run.out_dir)
    png = next((tiny_synthetic / "test" / "PNEUMONIA").glob("*.png"))
    copies = [tmp_path / "a" / "xray.jpeg", tmp_path / "b" / "xray.jpeg"]
    for copy in copies:
        copy.parent.mkdir()
        Image.open(png).convert("RGB").save(copy)
    write_image(tmp_path / "c" / "other.png", value=90, size=(64, 64))
    files, images = load_inputs(bundle.preprocess.image_size, [png, *copies, tmp_path / "c"], strict=False,
                                console=quiet())
    predictions = predict_images(TorchEngine(bundle), files, images)
    written = write_explanations(bundle, predictions, torch.from_numpy(images), tmp_path / "cam", batch_size=2)
    assert [p.name for p in written] == [f"{png.stem}.gradcam.png", "xray.gradcam.png", "xray-2.gradcam.png",
                                         "other.gradcam.png"]
    for path in written:
        with Image.open(path) as figure:
            assert min(figure.size) > 300
    first = torch.from_numpy(images[:1])
    again = write_explanations(bundle, predictions[:1], first, tmp_path / "cam2", target_layer="features.1")
    assert [p.name for p in again] == [f"{png.stem}.gradcam.png"]
    with pytest.raises(PneumoscanError, match="not a module"):
        write_explanations(bundle, predictions[:1], first, tmp_path / "cam3", target_layer="nope")


def test_heatmaps_of_a_cropped_input_are_put_back_on_the_whole_film() -> None:
    from pneumoscan.evaluation.gradcam import explained_boxes, to_image_frame

    maps = np.zeros((1, 50, 50), dtype=np.float32)
    maps[0, 0, 0] = 1.0  # the top-left corner of what the model saw
    films = torch.full((1, 1, 50, 50), 128, dtype=torch.uint8)
    boxes = explained_boxes(Preprocess(image_size=50, border_crop=0.1), films)
    assert boxes.tolist() == [pytest.approx([0.1, 0.9, 0.1, 0.9])]
    framed = to_image_frame(maps, boxes)
    assert framed.shape == (1, 50, 50)
    assert float(framed[0, :5].max()) == 0.0 and float(framed[0, :, :5].max()) == 0.0  # the cut border is empty
    peak = np.unravel_index(np.argmax(framed[0]), (50, 50))
    assert 5 <= peak[0] <= 6 and 5 <= peak[1] <= 6  # the corner lands where the crop began
    assert to_image_frame(maps, explained_boxes(Preprocess(image_size=50), films)) is maps


def test_heatmaps_of_a_lung_field_crop_land_on_the_lungs() -> None:
    from pneumoscan.evaluation.gradcam import explained_boxes, to_image_frame
    from test_field_of_view import chest_film

    films = chest_film(64)
    boxes = explained_boxes(Preprocess(image_size=64, fov="lungs"), films)
    maps = np.ones((1, 64, 64), dtype=np.float32)  # evidence everywhere the model looked
    framed = to_image_frame(maps, boxes)
    top, bottom, left, right = boxes[0]
    assert framed[0, : int(top * 64) - 1].max() == 0.0 and framed[0, :, : int(left * 64) - 1].max() == 0.0
    assert framed[0, 40, 20] == 1.0 and framed[0, 40, 44] == 1.0  # both lung fields are covered
