"""`pneumoscan pretrain`: SimCLR on the training images without labels, loadable with `train --weights`."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import TINY, quiet
from pneumoscan.cli.main import main
from pneumoscan.config import PretrainConfig, TrainConfig
from pneumoscan.errors import PneumoscanError
from pneumoscan.models.pretrained import load_pretrained
from pneumoscan.models.registry import create_model, model_spec
from pneumoscan.pipeline.pretrain import WEIGHTS_NAME, run_pretraining
from pneumoscan.training.prepare import prepare_data
from pneumoscan.training.self_supervised import nt_xent, pretrain

SMALL = {"arch": "compact", "image_size": 32, "epochs": 2, "batch_size": 8, "val_fraction": 0.25, "precision": "fp32"}


def test_nt_xent_is_the_cross_entropy_of_finding_each_views_pair() -> None:
    torch.manual_seed(0)
    z = torch.randn(6, 5)
    loss, accuracy = nt_xent(z, temperature=0.5)
    unit = F.normalize(z, dim=1)
    expected, found = 0.0, 0
    for i in range(6):
        pair = (i + 3) % 6
        logits = torch.tensor([float(unit[i] @ unit[j]) / 0.5 for j in range(6) if j != i])
        others = [j for j in range(6) if j != i]
        expected += -float(torch.log_softmax(logits, 0)[others.index(pair)])
        found += others[int(logits.argmax())] == pair  # is the most similar other view the pair?
    assert float(loss) == pytest.approx(expected / 6, rel=1e-5)
    assert accuracy == pytest.approx(found / 6)


def test_nt_xent_accuracy_is_the_share_of_views_nearest_their_pair() -> None:
    """Views 0..3 and their pairs 4..7: pairs 0-4 and 1-5 match; 2 and 3 sit beside 6 and 7 swapped,
    so views 2, 3, 6 and 7 find the wrong neighbour: 4 of 8 views find their pair."""
    basis = torch.eye(4)
    views = torch.cat([basis, basis[[0, 1, 3, 2]] + 0.1 * basis])
    loss, accuracy = nt_xent(views, temperature=0.5)
    assert accuracy == 0.5
    _, all_found = nt_xent(torch.cat([basis, basis + 0.1 * basis]), temperature=0.5)
    assert all_found == 1.0


def test_nt_xent_rewards_matching_views() -> None:
    basis = torch.eye(4)
    matched, accuracy = nt_xent(torch.cat([basis, basis]), temperature=0.1)
    assert accuracy == 1.0 and float(matched) < 0.01
    shuffled, none_found = nt_xent(torch.cat([basis, basis[[1, 2, 3, 0]]]), temperature=0.1)
    assert float(shuffled) > 5.0 and none_found == 0.0  # each view's twin is another image's view


def test_pretraining_learns_without_labels_and_repeats(tiny_synthetic: Path) -> None:
    config = PretrainConfig(data=str(tiny_synthetic), **SMALL)
    images = prepare_data(config.data_config(), quiet()).train.images
    model, history = pretrain(images, config, quiet())
    again, _ = pretrain(images, config, quiet())
    assert len(history) == 2 and all(math.isfinite(h.loss) and h.loss > 0 for h in history)
    assert history[-1].lr == pytest.approx(0.0, abs=1e-9)  # cosine schedule ends at zero
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key  # float32: the same seed gives the same weights
    fresh = create_model("compact", image_size=32)
    assert not torch.equal(fresh.state_dict()["stem.0.0.weight"], model.state_dict()["stem.0.0.weight"])


def test_the_weights_file_loads_as_a_backbone(tiny_synthetic: Path, tmp_path: Path) -> None:
    config = PretrainConfig(data=str(tiny_synthetic), **SMALL)
    result = run_pretraining(config, tmp_path / "pt", quiet(), command="pytest")
    assert result.weights == tmp_path / "pt" / WEIGHTS_NAME
    tensors = load_file(str(result.weights))
    spec = model_spec("compact")
    assert tensors and not any(spec.is_head(key) for key in tensors)
    target = create_model("compact", image_size=32)
    report = load_pretrained(target, "compact", result.weights)
    assert report.loaded == report.model_tensors
    for key, value in tensors.items():
        assert torch.equal(target.state_dict()[key], value), key
    record = json.loads((tmp_path / "pt" / "pretrain.json").read_text())
    assert record["command"] == "pytest" and record["method"].startswith("SimCLR")
    assert record["images"] == result.images == len(prepare_data(config.data_config(), quiet()).train)
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert (tmp_path / "pt" / "pretrain_curve.png").stat().st_size > 5_000


def test_pretraining_never_sees_a_validation_film(tiny_synthetic: Path) -> None:
    config = PretrainConfig(data=str(tiny_synthetic), **SMALL)
    data = prepare_data(config.data_config(), quiet())
    trained = prepare_data(TrainConfig(data=str(tiny_synthetic), **TINY), quiet())
    assert [r.source for r in data.train.records] == [r.source for r in trained.train.records]
    assert not {r.patient for r in data.train.records} & {r.patient for r in data.val.records}


@pytest.mark.parametrize(("changes", "message"), [
    ({"epochs": 0}, "epochs must be at least 1"), ({"batch_size": 2}, "batch_size at least 4"),
    ({"temperature": 0.0}, "temperature in (0, 10]"), ({"lr": -1.0}, "lr must be positive"),
    ({"image_size": 8}, "image_size must be at least 32"),
])
def test_bad_pretraining_settings_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(PneumoscanError) as info:
        PretrainConfig(**changes)
    assert message in str(info.value)


def test_cli_pretrain_then_train_from_its_weights(tiny_synthetic: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pt"
    assert main(["pretrain", "--data", str(tiny_synthetic), "--image-size", "32", "--epochs", "1", "--batch-size", "8",
                 "--val-fraction", "0.25", "--precision", "fp32", "--out", str(out)]) == 0
    assert "backbone weights in" in capsys.readouterr().err
    assert main(["train", "--data", str(tiny_synthetic), "--arch", "compact", "--image-size", "32", "--epochs", "1",
                 "--batch-size", "8", "--val-fraction", "0.25", "--precision", "fp32",
                 "--weights", str(out / WEIGHTS_NAME), "--out", str(tmp_path / "run")]) == 0
    printed = " ".join(capsys.readouterr().err.split())
    assert "loaded" in printed and "backbone tensors" in printed
