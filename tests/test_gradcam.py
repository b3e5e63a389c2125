"""Grad-CAM: the right layer, the right sign, and heat where the synthetic opacity was planted."""

from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from pneumoscan.cli.main import main
from pneumoscan.data.synthetic import SyntheticSource, SyntheticSpec
from pneumoscan.evaluation.gradcam import GradCam, find_target_layer, mass_inside
from pneumoscan.models import create_model, list_models
from pneumoscan.models.bundle import load_bundle
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.prepare import prepare_data
from pneumoscan.training.trainer import fit

EXPECTED_LAYERS = {"baseline": "features", "compact": "stages", "resnet18": "layer4",
                   "densenet121": "class_layers.relu", "efficientnet_b0": "_bn1"}


@pytest.mark.parametrize("arch", list_models())
def test_every_architecture_gets_its_last_feature_map_and_heatmaps_of_the_input_size(arch: str) -> None:
    model = create_model(arch, image_size=64)
    assert find_target_layer(model, (1, 64, 64)) == EXPECTED_LAYERS[arch]
    maps = GradCam(model, (1, 64, 64))(torch.randn(2, 1, 64, 64))
    assert maps.shape == (2, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    assert model.training  # the caller's mode is restored


def test_heat_sits_on_what_raises_the_logit_not_the_reverse() -> None:
    """A model whose logit is the mean brightness: the heat must peak on the bright patch."""
    conv = nn.Conv2d(1, 1, 1)
    nn.init.ones_(conv.weight), nn.init.zeros_(conv.bias)
    linear = nn.Linear(1, 1)
    nn.init.ones_(linear.weight), nn.init.zeros_(linear.bias)
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)
    image = torch.zeros(1, 1, 32, 32)
    image[..., 4:12, 20:28] = 1.0
    heatmap = GradCam(model, (1, 32, 32), target_layer="1")(image)[0]
    assert np.unravel_index(heatmap.argmax(), heatmap.shape) in {(r, c) for r in range(4, 12) for c in range(20, 28)}
    assert mass_inside(heatmap, image[0, 0].numpy() > 0) > 0.9


def test_an_unknown_target_layer_is_refused() -> None:
    from pneumoscan.errors import PneumoscanError

    with pytest.raises(PneumoscanError, match="not a module"):
        GradCam(create_model("compact"), (1, 64, 64), target_layer="stages.9")


def test_heatmaps_of_a_trained_model_concentrate_on_the_planted_opacity(tmp_path: Path) -> None:
    spec = SyntheticSpec(n_per_class=120, size=128, seed=3, difficulty=0.0)
    config = TrainConfig(arch="compact", image_size=128, epochs=15, val_fraction=0.25, cache=False)
    console = Console(quiet=True)
    fit(prepare_data("synthetic:n_per_class=120,size=128,seed=3,difficulty=0", config, console), config, tmp_path,
        console)
    bundle = load_bundle(tmp_path)
    source = SyntheticSource(spec)
    images, masks = zip(*(source.render(r) for r in source.splits["test"] if r.label == 1), strict=True)
    inputs = bundle.preprocess.normalize(torch.from_numpy(np.stack(images))[:, None])
    # stages.2 (16 x 16 at 128 px): the last stage's 4 x 4 map is too coarse for blobs a tenth of the image wide
    heatmaps = GradCam(bundle.model, (1, 128, 128), target_layer="stages.2")(inputs)
    inside = np.array([mass_inside(h, m) for h, m in zip(heatmaps, masks, strict=True)])
    area = np.array([m.mean() for m in masks])
    assert np.mean(inside > 2 * area) >= 0.8  # the opacity holds over twice its share of the heat
    assert inside.mean() > 3 * area.mean()


def test_explain_and_predict_explain_write_one_figure_per_image(tiny_synthetic: Path, tmp_path: Path) -> None:
    from PIL import Image

    png = next((tiny_synthetic / "test" / "PNEUMONIA").glob("*.png"))
    jpeg = tmp_path / "xray.jpeg"
    Image.open(png).convert("RGB").save(jpeg)
    assert main(["explain", "--model", "default", str(png), str(jpeg), "--out", str(tmp_path / "cam")]) == 0
    assert sorted(p.name for p in (tmp_path / "cam").iterdir()) == [f"{png.stem}.gradcam.png", "xray.gradcam.png"]
    assert main(["predict", str(jpeg), "--explain", str(tmp_path / "cam2")]) == 0
    assert (tmp_path / "cam2" / "xray.gradcam.png").stat().st_size > 10_000
    assert main(["explain", str(jpeg), "--out", str(tmp_path / "x"), "--target-layer", "nope"]) == 2
