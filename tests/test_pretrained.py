"""--weights: a locally produced checkpoint in another library's naming, mapped onto our models."""

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import TINY, quiet
from pneumoscan.config import TrainConfig
from pneumoscan.errors import PneumoscanError
from pneumoscan.models import create_model
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.monai_nets import densenet_from_torchvision, efficientnet_b0_from_timm_or_torchvision
from pneumoscan.models.pretrained import LoadReport, load_pretrained
from pneumoscan.pipeline.train import run_training


def _as_torchvision_densenet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        key = key.replace(".layers.", ".")
        key = key.replace("class_layers.out.", "classifier.")
        renamed[key] = value
    return renamed


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_rgb_torchvision_densenet_loads_into_one_channel_model(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    rgb = create_model("densenet121", in_channels=3)
    state = _as_torchvision_densenet(rgb.state_dict())
    assert any(re.search(r"denselayer\d+\.norm1\.weight$", k) for k in state)  # really torchvision naming
    path = tmp_path / f"densenet121{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))

    gray = create_model("densenet121", in_channels=1)
    report = load_pretrained(gray, "densenet121", path)
    assert report.loaded >= 0.99 * report.model_tensors
    loaded = gray.state_dict()
    original = rgb.state_dict()
    assert torch.allclose(loaded["features.conv0.weight"], original["features.conv0.weight"].sum(1, keepdim=True))
    key = "features.denseblock2.denselayer3.layers.conv2.weight"
    assert torch.equal(loaded[key], original[key])
    # a gray image through the folded conv equals the RGB model on the same image in all three channels
    gray.eval(), rgb.eval()
    x = torch.rand(1, 1, 64, 64)
    assert torch.allclose(gray.features.conv0(x), rgb.features.conv0(x.repeat(1, 3, 1, 1)), atol=1e-5)


_B0_STARTS = (0, 1, 3, 5, 8, 11, 15)
_TIMM_NAMES = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
               "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
               "_bn2": "bn3"}
_TIMM_FIRST_STAGE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                     "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TORCHVISION_NAMES = {"_expand_conv": "0.0", "_bn0": "0.1", "_depthwise_conv": "1.0", "_bn1": "1.1",
                      "_se_reduce": "2.fc1", "_se_expand": "2.fc2", "_project_conv": "3.0", "_bn2": "3.1"}
_TORCHVISION_FIRST_STAGE = {"_depthwise_conv": "0.0", "_bn1": "0.1", "_se_reduce": "1.fc1", "_se_expand": "1.fc2",
                            "_project_conv": "2.0", "_bn2": "2.1"}


def _as_other_library(state: dict[str, torch.Tensor], library: str) -> dict[str, torch.Tensor]:
    """Rename a MONAI EfficientNet-B0 state dict the way timm or torchvision name the same tensors."""
    top = {"timm": {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                    "_fc": "classifier"},
           "torchvision": {"_conv_stem": "features.0.0", "_bn0": "features.0.1", "_conv_head": "features.8.0",
                           "_bn1": "features.8.1", "_fc": "classifier.1"}}[library]
    renamed = {}
    for key, value in state.items():
        block = re.match(r"_blocks\.(\d)\.(\d+)\.(\w+)\.(\w+)$", key)
        if block:
            stage, index, layer, tensor = int(block[1]), int(block[2]) - _B0_STARTS[int(block[1])], block[3], block[4]
            if library == "timm":
                name = (_TIMM_NAMES if stage else _TIMM_FIRST_STAGE)[layer]
                renamed[f"blocks.{stage}.{index}.{name}.{tensor}"] = value
            else:
                name = (_TORCHVISION_NAMES if stage else _TORCHVISION_FIRST_STAGE)[layer]
                renamed[f"features.{stage + 1}.{index}.block.{name}.{tensor}"] = value
        else:
            layer, tensor = key.split(".", 1)
            renamed[f"{top[layer]}.{tensor}"] = value
    return renamed


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_rgb_efficientnet_b0_in_timm_or_torchvision_naming_loads(tmp_path: Path, library: str) -> None:
    torch.manual_seed(0)
    rgb = create_model("efficientnet_b0", in_channels=3)
    for module in rgb.modules():  # fresh BatchNorms are all alike; make each distinct so a mix-up shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5), module.bias.data.normal_(0, 0.1)
            module.running_mean.normal_(0, 0.1), module.running_var.uniform_(0.5, 1.5)
    state = _as_other_library(rgb.state_dict(), library)
    literal = {"timm": ["conv_stem.weight", "blocks.0.0.conv_dw.weight", "blocks.1.0.conv_pw.weight",
                        "blocks.6.0.conv_pwl.weight", "bn2.running_var"],
               "torchvision": ["features.0.0.weight", "features.1.0.block.0.0.weight",
                               "features.2.0.block.0.0.weight", "features.7.0.block.3.0.weight"]}[library]
    assert all(name in state for name in literal)  # the names each library really uses
    path = tmp_path / f"efficientnet_b0_{library}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))

    gray = create_model("efficientnet_b0", in_channels=1)
    report = load_pretrained(gray, "efficientnet_b0", path)
    assert report.loaded >= 0.99 * report.model_tensors
    for model in (gray, rgb):
        model._fc = torch.nn.Identity()  # compare the pooled backbone features: every block must be mapped
        model.eval()
    x = torch.rand(2, 1, 64, 64)
    assert torch.allclose(gray(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-4)


def test_resnet18_names_match_directly(tmp_path: Path) -> None:
    source = create_model("resnet18", in_channels=3)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    target = create_model("resnet18")
    report = load_pretrained(target, "resnet18", path)
    body = [k for k in target.state_dict() if not k.startswith("fc.")]
    tracked = sum(k.endswith("num_batches_tracked") for k in body)
    # every backbone tensor filled (BatchNorm counters are copied but not counted); fc.weight and fc.bias skipped
    assert report == LoadReport(loaded=len(body) - tracked, model_tensors=len(body) - tracked, skipped=2)
    assert torch.equal(target.state_dict()["layer3.1.conv2.weight"], source.state_dict()["layer3.1.conv2.weight"])


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "baseline.pth"
    torch.save(create_model("baseline").state_dict(), path)
    with pytest.raises(PneumoscanError, match="same architecture"):
        load_pretrained(create_model("resnet18"), "resnet18", path)


def test_unreadable_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(PneumoscanError, match="junk.pth"):
        load_pretrained(create_model("compact"), "compact", path)


def test_training_starts_from_local_weights(tiny_synthetic: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    start = create_model("baseline", image_size=32).state_dict()
    path = tmp_path / "baseline.safetensors"
    save_file({f"model.{k}": v for k, v in start.items()}, str(path))  # wrapped names, as some trainers save
    config = TrainConfig(data=str(tiny_synthetic), weights=str(path), optimizer="sgd", lr=1e-12, momentum=0.0,
                         **{**TINY, "epochs": 1})
    run_training(config, tmp_path / "run", quiet())
    bundle = load_bundle(tmp_path / "run")
    assert bundle.manifest.training.config.weights == str(path)  # type: ignore[union-attr]
    trained = bundle.model.state_dict()
    # a learning rate of 1e-12 leaves the loaded backbone where the file put it; the head starts fresh
    assert torch.allclose(trained["features.0.0.weight"], start["features.0.0.weight"], atol=1e-9)
    assert torch.allclose(trained["features.2.0.weight"], start["features.2.0.weight"], atol=1e-9)
    torch.manual_seed(0)
    fresh = create_model("baseline", image_size=32).state_dict()
    assert not torch.allclose(trained["features.0.0.weight"], fresh["features.0.0.weight"])
    assert torch.allclose(trained["classifier.4.weight"], fresh["classifier.4.weight"], atol=1e-9)


def test_a_missing_weights_file_stops_the_run_before_anything_is_written(tiny_synthetic: Path,
                                                                          tmp_path: Path) -> None:
    config = TrainConfig(data=str(tiny_synthetic), weights=str(tmp_path / "nope.pt"), **TINY)
    with pytest.raises(PneumoscanError, match="nope.pt: no such weights file"):
        run_training(config, tmp_path / "run", quiet())
    assert not (tmp_path / "run").exists()


def test_key_maps_of_other_libraries() -> None:
    assert densenet_from_torchvision("features.denseblock1.denselayer2.norm1.weight") == \
        "features.denseblock1.denselayer2.layers.norm1.weight"
    assert densenet_from_torchvision("features.denseblock1.denselayer2.conv.2.weight") == \
        "features.denseblock1.denselayer2.layers.conv2.weight"  # legacy torchvision names
    assert densenet_from_torchvision("features.denseblock1.denselayer2.layers.norm1.weight") == \
        "features.denseblock1.denselayer2.layers.norm1.weight"  # MONAI names stay
    assert densenet_from_torchvision("features.conv0.weight") == "features.conv0.weight"
    b0 = efficientnet_b0_from_timm_or_torchvision
    assert b0("conv_stem.weight") == "_conv_stem.weight" and b0("bn2.running_var") == "_bn1.running_var"
    assert b0("blocks.0.0.conv_dw.weight") == "_blocks.0.0._depthwise_conv.weight"
    assert b0("blocks.1.0.conv_pw.weight") == "_blocks.1.1._expand_conv.weight"
    assert b0("blocks.6.0.conv_pwl.weight") == "_blocks.6.15._project_conv.weight"
    assert b0("features.2.0.block.0.0.weight") == "_blocks.1.1._expand_conv.weight"
    assert b0("features.1.0.block.1.fc1.bias") == "_blocks.0.0._se_reduce.bias"
    assert b0("features.8.1.weight") == "_bn1.weight" and b0("classifier.1.weight") == "classifier.1.weight"
    assert b0("blocks.1.0.unknown.weight") == "blocks.1.0.unknown.weight"
