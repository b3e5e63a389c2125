"""TrainConfig, EvalConfig and DemoConfig: defaults, validation, what they resolve to, stored form."""

from dataclasses import asdict

import pytest
import torch

from pneumoscan.config import DEFAULT_LR, IMBALANCE_MODES, DemoConfig, EvalConfig, TrainConfig
from pneumoscan.data.augment import AUGMENT_PRESETS, augment_preset
from pneumoscan.errors import PneumoscanError


def test_the_defaults_of_a_training_run() -> None:
    config = TrainConfig()
    assert (config.data, config.arch, config.optimizer, config.lr, config.epochs, config.batch_size) == (
        "", "baseline", "adam", None, 30, 32)
    assert (config.image_size, config.val_fraction, config.augment, config.hflip, config.threshold_policy) == (
        150, 0.15, "standard", False, "fixed:0.5")
    assert (config.imbalance, config.precision, config.cache, config.measure_train_gap) == ("none", "auto", True, False)
    assert IMBALANCE_MODES == ("none", "weighted", "sampler", "focal")
    assert DEFAULT_LR == {"adam": 1e-3, "sgd": 1e-2}


@pytest.mark.parametrize(("changes", "message"), [
    ({"threshold_policy": "median"}, "threshold policy 'median'"),
    ({"optimizer": "rmsprop"}, "optimizer 'rmsprop': choose from adam, sgd"),
    ({"precision": "fp64"}, "precision 'fp64': choose from auto, bf16, fp16, fp32"),
    ({"val_source": "test"}, "val_source 'test': choose from carve, official"),
    ({"augment": "sideways"}, "augment 'sideways': choose from standard, shift, framing, none"),
    ({"imbalance": "oversample"}, "imbalance 'oversample'"),
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"batch_size": 1}, "batch_size at least 2"),
    ({"train_fraction": 0.0}, "train_fraction must be in (0, 1]"),
    ({"train_fraction": 1.5}, "train_fraction must be in (0, 1]"),
    ({"image_size": 31}, "image_size must be at least 32 pixels, got 31"),
    ({"lr": -1.0}, "lr must be a positive number, got -1.0"),
    ({"lr": 0.0}, "lr must be a positive number"),
    ({"lr": float("nan")}, "lr must be a positive number, got nan"),
    ({"lr_factor": 1.0}, "lr_factor must be in (0, 1), got 1.0"),
    ({"lr_factor": 0.0}, "lr_factor must be in (0, 1)"),
    ({"momentum": -0.1}, "momentum and weight_decay must be in [0, 1)"),
    ({"weight_decay": -1e-4}, "momentum and weight_decay must be in [0, 1)"),
    ({"patience": 0}, "patience must be at least 1"),
    ({"lr_patience": -1}, "lr_patience at least 0"),
    ({"val_fraction": 0.0}, "val_fraction must be in (0, 1), got 0.0"),
    ({"val_fraction": 1.0}, "val_fraction must be in (0, 1)"),
])
def test_invalid_training_settings_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(PneumoscanError) as info:
        TrainConfig(**changes)
    assert message in str(info.value)


def test_boundary_values_are_accepted() -> None:
    TrainConfig(epochs=1, batch_size=2, train_fraction=1.0, image_size=32)
    TrainConfig(train_fraction=0.01)
    TrainConfig(lr=1e-9, lr_factor=0.99, momentum=0.0, weight_decay=0.0, patience=1, lr_patience=0,
                val_fraction=0.01)


@pytest.mark.parametrize(("changes", "message"), [
    ({"optimizers": "adam,rmsprop"}, "optimizers 'adam,rmsprop': give one or more of adam, sgd"),
    ({"optimizers": " , "}, "give one or more of adam, sgd"),
    ({"seeds": 0}, "the demo needs seeds >= 1"),
    ({"difficulty": 1.5}, "difficulty must be in [0, 1], got 1.5"),
    ({"image_size": 16}, "image_size must be at least 32 pixels"),
    ({"precision": "fp64"}, "precision 'fp64'"),
])
def test_invalid_demo_settings_are_refused_before_anything_is_written(changes: dict, message: str) -> None:
    with pytest.raises(PneumoscanError) as info:
        DemoConfig(**changes)
    assert message in str(info.value)


def test_demo_optimizer_names_are_trimmed_and_deduplicated() -> None:
    assert DemoConfig(optimizers=" sgd, adam,sgd ").optimizer_names == ("sgd", "adam")


def test_learning_rate_defaults_per_optimizer() -> None:
    assert TrainConfig().learning_rate == 1e-3
    assert TrainConfig(optimizer="sgd").learning_rate == 1e-2
    assert TrainConfig(optimizer="sgd", lr=0.3).learning_rate == 0.3


def test_precision_setting() -> None:
    assert TrainConfig(precision="fp32").use_bf16 is False
    assert TrainConfig(precision="bf16").use_bf16 is True
    native = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    assert TrainConfig(precision="auto").use_bf16 is native
    assert TrainConfig(precision="fp16").autocast_dtype == torch.float16
    assert TrainConfig(precision="fp32").autocast_dtype is None
    assert TrainConfig(precision="auto", device="cpu").autocast_dtype == (torch.bfloat16 if native else None)


def test_fp16_training_needs_a_gpu(tiny_synthetic) -> None:
    from conftest import quiet
    from pneumoscan.training.loop import train
    from pneumoscan.training.prepare import prepare_data

    config = TrainConfig(data=str(tiny_synthetic), image_size=32, epochs=1, precision="fp16", device="cpu")
    with pytest.raises(PneumoscanError, match="precision fp16 needs a CUDA GPU"):
        train(prepare_data(config, quiet()), config, quiet())


def test_device_setting_resolves_and_refuses_a_missing_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert TrainConfig().device == "auto" and TrainConfig().torch_device == torch.device("cpu")
    assert TrainConfig(device="cpu").to_dict()["resolved"]["device"] == "cpu"
    with pytest.raises(PneumoscanError, match="device cuda: PyTorch sees no GPU here"):
        _ = TrainConfig(device="cuda").torch_device
    with pytest.raises(PneumoscanError, match="device 'tpu': choose from auto, cpu, cuda"):
        TrainConfig(device="tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert TrainConfig().torch_device == torch.device("cuda")
    assert TrainConfig(device="cpu").torch_device == torch.device("cpu")


def test_augmentation_resolves_the_preset_name() -> None:
    assert TrainConfig().augmentation == AUGMENT_PRESETS["standard"]
    assert TrainConfig(augment="none").augmentation.enabled is False
    assert TrainConfig(augment="shift", hflip=True).augmentation == augment_preset("shift", hflip=True)


def test_to_dict_adds_what_the_settings_resolve_to() -> None:
    config = TrainConfig(optimizer="sgd", augment="shift", hflip=True, precision="fp32")
    payload = config.to_dict()
    assert {k: v for k, v in payload.items() if k != "resolved"} == asdict(config)
    assert payload["augment"] == "shift"
    assert payload["resolved"] == {"learning_rate": 1e-2, "bf16": False, "autocast": "none", "device": "cpu",
                                   "augmentation": asdict(augment_preset("shift", hflip=True))}


def test_from_dict_reads_back_what_to_dict_wrote() -> None:
    config = TrainConfig(data="x", arch="compact", lr=0.01, augment="none", hflip=True, imbalance="sampler",
                         threshold_policy="sensitivity:0.9", measure_train_gap=True)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict({"epochs": 4, "learning_rate": 0.1, "bf16": True}) == TrainConfig(epochs=4)


def test_from_dict_migrates_a_stored_augmentation_dict_to_its_preset_name() -> None:
    for name, preset in AUGMENT_PRESETS.items():
        for hflip in (False, True):
            migrated = TrainConfig.from_dict({"augment": {**asdict(preset), "hflip": hflip}})
            assert (migrated.augment, migrated.hflip) == (name, hflip)
    without_flag = {k: v for k, v in asdict(AUGMENT_PRESETS["shift"]).items() if k != "hflip"}
    assert TrainConfig.from_dict({"augment": without_flag}).augment == "shift"
    with pytest.raises(PneumoscanError, match="stored augmentation matches no named preset"):
        TrainConfig.from_dict({"augment": {**asdict(AUGMENT_PRESETS["standard"]), "rotation_deg": 30.0}})


def test_evaluation_settings() -> None:
    config = EvalConfig()
    assert (config.split, config.weeks, config.tta, config.adapt_prior, config.groups, config.bootstrap,
            config.seed) == ("test", 4, False, False, None, 2000, 0)
    EvalConfig(weeks=1, bootstrap=100)
    with pytest.raises(PneumoscanError, match="weeks must be at least 1, got 0"):
        EvalConfig(weeks=0)
    with pytest.raises(PneumoscanError, match="bootstrap needs at least 100 resamples, got 99"):
        EvalConfig(bootstrap=99)


def test_the_demo_trains_in_float32_with_its_own_sizes() -> None:
    demo = DemoConfig(arch="baseline", image_size=64, epochs=2, patience=1)
    config = demo.training("data/dir")
    assert config == TrainConfig(data="data/dir", arch="baseline", image_size=64, epochs=2, patience=1,
                                 precision="fp32")
    assert DemoConfig().precision == "fp32" and DemoConfig().optimizers == "adam,sgd"
