import pytest
import torch

from pneumoscan.errors import PneumoscanError
from pneumoscan.evaluation.architecture import summarize
from pneumoscan.models import create_model, list_models


def test_baseline_is_the_reference_design() -> None:
    model = create_model("baseline", in_channels=1, image_size=150)
    # conv 1->32, 32->64, 64->128 (3x3 + bias), three BatchNorms, Linear 128*18*18->256, Linear 256->1
    expected = (9 * 32 + 32) + (9 * 32 * 64 + 64) + (9 * 64 * 128 + 128) + 2 * (32 + 64 + 128) \
        + (128 * 18 * 18 * 256 + 256) + (256 + 1)
    assert expected == 10_710_465
    assert sum(p.numel() for p in model.parameters()) == expected
    kinds = [type(m).__name__ for m in model.features[0]]
    assert kinds == ["Conv2d", "ReLU", "BatchNorm2d", "MaxPool2d"]
    dropout = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropout) == 1 and dropout[0].p == 0.5


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize(("channels", "size"), [(1, 64), (3, 96)])
def test_every_model_maps_a_batch_to_one_logit(name: str, channels: int, size: int) -> None:
    model = create_model(name, in_channels=channels, image_size=size).eval()
    assert model(torch.zeros(3, channels, size, size)).shape == (3, 1)


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(PneumoscanError, match="baseline"):
        create_model("no-such-net")


def test_architecture_summary_comes_from_the_model() -> None:
    blocks = summarize(create_model("baseline"), (1, 150, 150))
    assert [b.output_shape for b in blocks[:3]] == [(32, 75, 75), (64, 37, 37), (128, 18, 18)]
    assert blocks[-1].output_shape == (1,)
    assert sum(b.parameters for b in blocks) == 10_710_465


def test_test_time_augmentation_averages_mild_views() -> None:
    from pneumoscan.data.preprocess import Preprocess
    from pneumoscan.evaluation.inference import _view, predict_with

    torch.manual_seed(0)
    model = create_model("compact").eval()
    images = torch.randint(0, 256, (3, 1, 48, 48), dtype=torch.uint8)
    plain = predict_with(model, Preprocess().normalize, images)
    averaged = predict_with(model, Preprocess().normalize, images, tta=True)
    assert averaged.shape == plain.shape == (3,)
    assert not torch.allclose(torch.from_numpy(averaged), torch.from_numpy(plain))
    x = torch.rand(1, 1, 16, 16)
    assert torch.allclose(_view(x, 1.0, 0.0), x, atol=1e-5)  # the identity view leaves the image alone
    assert not torch.allclose(_view(x, 1.0, 0.08), x)
