"""The architecture registry: what each architecture declares, the reference CNN, seeding, inference."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pneumoscan.config import DEFAULT_IMAGE_SIZE, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, TrainConfig
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.errors import PneumoscanError
from pneumoscan.evaluation.architecture import summarize
from pneumoscan.models import create_model, list_models, register_model, registry
from pneumoscan.models.inference import predict_with
from pneumoscan.models.modes import eval_mode
from pneumoscan.models.registry import bundle_spec, model_spec

ARCHS = ["baseline", "compact", "densenet121", "efficientnet_b0", "resnet18"]


def test_the_registered_architectures() -> None:
    assert list_models() == ARCHS


def test_baseline_is_the_reference_design() -> None:
    model = create_model("baseline", in_channels=1, image_size=150)
    # conv 1->32, 32->64, 64->128 (3x3 + bias), three BatchNorms, Linear 128*18*18->256, Linear 256->1
    expected = (9 * 32 + 32) + (9 * 32 * 64 + 64) + (9 * 64 * 128 + 128) + 2 * (32 + 64 + 128) \
        + (128 * 18 * 18 * 256 + 256) + (256 + 1)
    assert expected == 10_710_465
    assert sum(p.numel() for p in model.parameters()) == expected
    for block, channels in zip(model.features, (32, 64, 128), strict=True):
        assert [type(m).__name__ for m in block] == ["Conv2d", "ReLU", "BatchNorm2d", "MaxPool2d"]
        assert block[0].out_channels == channels and block[0].kernel_size == (3, 3)
    assert [type(m).__name__ for m in model.classifier] == ["Flatten", "Linear", "ReLU", "Dropout", "Linear"]
    assert (model.classifier[1].in_features, model.classifier[1].out_features) == (128 * 18 * 18, 256)
    assert model.classifier[3].p == 0.5 and model.classifier[4].out_features == 1
    assert create_model("baseline", dropout=0.2).classifier[3].p == 0.2


def test_architecture_summary_comes_from_the_model() -> None:
    blocks = summarize(create_model("baseline"), (1, 150, 150))
    assert [b.name for b in blocks[:3]] == ["features.0", "features.1", "features.2"]
    assert [b.output_shape for b in blocks[:3]] == [(32, 75, 75), (64, 37, 37), (128, 18, 18)]
    assert blocks[3].kind == "Flatten" and blocks[-1].output_shape == (1,)
    assert sum(b.parameters for b in blocks) == 10_710_465


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize(("channels", "size"), [(1, 64), (3, 96)])
def test_every_model_maps_a_batch_to_one_logit(name: str, channels: int, size: int) -> None:
    model = create_model(name, in_channels=channels, image_size=size).eval()
    assert model(torch.zeros(3, channels, size, size)).shape == (3, 1)


@pytest.mark.parametrize("name", ARCHS)
def test_the_seed_decides_the_initial_weights(name: str) -> None:
    def init(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return create_model(name, image_size=64).state_dict()

    first, again, other = init(0), init(0), init(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    first_conv = model_spec(name).first_conv + ".weight"
    assert not torch.equal(first[first_conv], other[first_conv])


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(PneumoscanError, match="unknown architecture 'no-such-net'; available: baseline, compact"):
        create_model("no-such-net")


# --- declared facts --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHS)
def test_declared_modules_exist_and_are_what_they_claim(name: str) -> None:
    spec = model_spec(name)
    model = create_model(name, in_channels=1, image_size=64)
    modules = dict(model.named_modules())
    first_conv = modules[spec.first_conv]
    assert isinstance(first_conv, nn.Conv2d) and first_conv.in_channels == 1
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0] is first_conv  # the first convolution, the one pretrained RGB kernels fold into
    head = modules[spec.head]
    linears = [head] if isinstance(head, nn.Linear) else [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert linears and linears[-1].out_features == 1  # the head ends in the one logit
    head_keys = [k for k in model.state_dict() if spec.is_head(k)]
    assert head_keys and all(k.startswith(spec.head + ".") for k in head_keys)
    assert len(head_keys) < len(model.state_dict()) / 2
    for stage in spec.feature_stages:
        assert stage in modules, stage
    assert spec.explained_layer in modules
    assert spec.explained_layer == (spec.gradcam_layer or spec.feature_stages[-1])


@pytest.mark.parametrize("name", ARCHS)
def test_feature_stages_are_spatial_maps_of_non_increasing_resolution_in_forward_order(name: str) -> None:
    spec = model_spec(name)
    model = create_model(name, image_size=64).eval()
    modules = dict(model.named_modules())
    seen: list[tuple[str, tuple[int, ...]]] = []
    hooks = [modules[stage].register_forward_hook(
        lambda module, inputs, output, stage=stage: seen.append((stage, tuple(output.shape))))
        for stage in spec.feature_stages]
    with torch.no_grad():
        model(torch.zeros(2, 1, 64, 64))
    for hook in hooks:
        hook.remove()
    assert [stage for stage, _ in seen] == list(spec.feature_stages)  # each runs once, in the declared order
    sides = []
    for stage, shape in seen:
        assert len(shape) == 4 and shape[0] == 2 and shape[2] > 1 and shape[3] > 1, (stage, shape)
        sides.append(shape[2])
    assert sides == sorted(sides, reverse=True) and sides[0] > sides[-1], sides


def test_declared_layers_of_each_architecture() -> None:
    assert model_spec("baseline").feature_stages == ("features.0", "features.1", "features.2")
    assert model_spec("compact").explained_layer == "stages.3"
    assert model_spec("resnet18").explained_layer == "layer4"
    assert model_spec("densenet121").explained_layer == "class_layers.relu"
    assert model_spec("efficientnet_b0").explained_layer == "_bn1"
    spec = model_spec("baseline")
    assert spec.is_head("classifier") and spec.is_head("classifier.4.weight")
    assert not spec.is_head("classifierx.weight") and not spec.is_head("features.0.0.weight")


# --- declared input (issue 21) --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*registry.list_models(), "ensemble"])
def test_every_registered_model_declares_its_input_size_and_normalisation(name: str) -> None:
    spec = model_spec(name)
    assert isinstance(spec.input_size, int) and MIN_IMAGE_SIZE <= spec.input_size <= MAX_IMAGE_SIZE
    assert isinstance(spec.mean, float) and isinstance(spec.std, float) and spec.std > 0
    assert (spec.preprocess.image_size, spec.preprocess.mean, spec.preprocess.std) == (spec.input_size, spec.mean,
                                                                                        spec.std)


@pytest.mark.parametrize("name", ARCHS)
def test_a_model_built_without_a_size_takes_its_declared_input(name: str) -> None:
    spec = model_spec(name)
    # every trainable architecture expects what a training run feeds it by default
    assert (spec.input_size, spec.mean, spec.std) == (DEFAULT_IMAGE_SIZE, TrainConfig().preprocess.mean,
                                                      TrainConfig().preprocess.std)
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, spec.input_size, spec.input_size)).shape == (2, 1)


def test_an_ensemble_declares_its_largest_member_size_and_passes_pixels_through() -> None:
    from pneumoscan.models.ensemble import PASS_THROUGH

    members = [{"arch": "compact", "preprocess": {"image_size": size}, "threshold": 0.5} for size in (96, 128)]
    spec = bundle_spec("ensemble", {"members": members})
    assert (spec.input_size, spec.mean, spec.std) == (128, PASS_THROUGH["mean"], PASS_THROUGH["std"])
    assert (model_spec("ensemble").mean, model_spec("ensemble").std) == (PASS_THROUGH["mean"], PASS_THROUGH["std"])


def test_registering_an_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    registry.list_models()  # the built-in architectures registered first
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    @register_model("tiny", first_conv="0", head="3", feature_stages=("1",))
    def tiny(in_channels: int = 1, image_size: int = 150, width: int = 4) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Sequential(nn.Flatten(), nn.Linear(width, 1)))

    assert "tiny" in list_models()
    assert (model_spec("tiny").input_size, model_spec("tiny").mean, model_spec("tiny").std) == (
        DEFAULT_IMAGE_SIZE, Preprocess().mean, Preprocess().std)
    register_model("tiny64", first_conv="0", head="3", feature_stages=("1",), input_size=64, mean=0.4, std=0.2)(tiny)
    assert (model_spec("tiny64").input_size, model_spec("tiny64").mean, model_spec("tiny64").std) == (64, 0.4, 0.2)
    assert create_model("tiny", width=6)[0].out_channels == 6
    assert model_spec("tiny").explained_layer == "1" and model_spec("tiny").key_map("a.b") == "a.b"
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny", first_conv="0", head="3", feature_stages=("1",))(tiny)
    with pytest.raises(ValueError, match="at least one feature stage"):
        register_model("stageless", first_conv="0", head="3", feature_stages=())(tiny)


# --- inference --------------------------------------------------------------------------------------------------------


def _view(images: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    theta = torch.tensor([[[scale, 0.0, shift], [0.0, scale, 0.0]]]).expand(len(images), 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="border", align_corners=False)


def test_test_time_augmentation_is_the_mean_over_the_image_and_four_views() -> None:
    torch.manual_seed(0)
    model = create_model("compact").eval()
    normalize = Preprocess().normalize
    images = torch.randint(0, 256, (3, 1, 48, 48), dtype=torch.uint8)
    x = normalize(images)
    with torch.no_grad():
        views = [x, *(_view(x, s, t) for s, t in ((1 / 0.93, 0.0), (1 / 1.07, 0.0), (1.0, 0.08), (1.0, -0.08)))]
        by_hand = torch.stack([torch.sigmoid(model(v)).squeeze(1) for v in views]).mean(0)
        plain_by_hand = torch.sigmoid(model(x)).squeeze(1)
    averaged = predict_with(model, normalize, images, tta=True)
    plain = predict_with(model, normalize, images)
    assert averaged.shape == plain.shape == (3,)
    assert torch.allclose(torch.from_numpy(averaged), by_hand, atol=1e-6)
    assert torch.allclose(torch.from_numpy(plain), plain_by_hand, atol=1e-6)
    assert not torch.allclose(torch.from_numpy(averaged), torch.from_numpy(plain), atol=1e-4)


def test_prediction_is_batched_and_restores_the_mode() -> None:
    torch.manual_seed(0)
    model = create_model("baseline", image_size=32).train()
    images = torch.randint(0, 256, (5, 1, 32, 32), dtype=torch.uint8)
    whole = predict_with(model, Preprocess(image_size=32).normalize, images)
    in_twos = predict_with(model, Preprocess(image_size=32).normalize, images, batch_size=2)
    assert model.training and whole.dtype == "float32"
    assert torch.allclose(torch.from_numpy(whole), torch.from_numpy(in_twos), atol=1e-6)
    assert ((whole > 0) & (whole < 1)).all()
    assert predict_with(model, Preprocess().normalize, images[:0]).shape == (0,)


def test_eval_mode_restores_the_callers_mode_even_on_error() -> None:
    model = create_model("baseline", image_size=32).train()
    with eval_mode(model) as inside:
        assert inside is model and not model.training
    assert model.training
    model.eval()
    with pytest.raises(RuntimeError), eval_mode(model):
        model.train()
        raise RuntimeError("boom")
    assert not model.training
