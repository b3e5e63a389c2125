"""Settings: one declaration per option, read from TOML recipes, `--set key=value` and generated CLI flags."""

import argparse
import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from pneumoscan.cli import common as cli_common
from pneumoscan.cli import main as cli_main
from pneumoscan.cli.options import add_settings_flags, given_settings
from pneumoscan.config import IMBALANCE_MODES, DemoConfig, EvalConfig, TrainConfig
from pneumoscan.data.augment import AUGMENT_PRESETS
from pneumoscan.errors import PneumoscanError
from pneumoscan.settings import (
    OptionSpec,
    checked,
    convert,
    option,
    option_specs,
    parse_assignments,
    read_recipe,
    resolve,
)

REPO = Path(__file__).resolve().parents[1]


def _spec(name: str, settings: type = TrainConfig) -> OptionSpec:
    return next(spec for spec in option_specs(settings) if spec.name == name)


def _recipe(tmp_path: Path, text: str, name: str = "recipe.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- declarations -------------------------------------------------------------------------------------------------


def test_option_carries_default_help_and_choices() -> None:
    item = option(3, "how many", choices=["a", "b"])
    assert item.default == 3
    assert dict(item.metadata) == {"help": "how many", "choices": ("a", "b"), "cli": True}
    assert dict(option(None, "x", cli=False).metadata) == {"help": "x", "choices": None, "cli": False}


@pytest.mark.parametrize("settings", [TrainConfig, EvalConfig, DemoConfig])
def test_specs_mirror_the_dataclass_fields_and_defaults(settings: type) -> None:
    specs = option_specs(settings)
    assert [s.name for s in specs] == [f.name for f in fields(settings)]
    defaults = settings()
    for spec in specs:
        assert spec.default == getattr(defaults, spec.name), spec.name
        assert spec.help and spec.flag == "--" + spec.name.replace("_", "-")
        assert spec.kind in (bool, int, float, str), spec.name


def test_spec_kinds_optionality_and_choices() -> None:
    assert (_spec("epochs").kind, _spec("epochs").optional) == (int, False)
    assert (_spec("lr").kind, _spec("lr").optional) == (float, True)
    assert (_spec("weights").kind, _spec("weights").optional) == (str, True)
    assert (_spec("hflip").kind, _spec("cache").kind) == (bool, bool)
    assert _spec("augment").choices == tuple(AUGMENT_PRESETS) == ("standard", "shift", "framing", "none")
    assert _spec("imbalance").choices == IMBALANCE_MODES
    assert _spec("optimizer").choices == ("adam", "sgd")
    assert _spec("data").choices is None
    assert _spec("groups", EvalConfig).optional and _spec("groups", EvalConfig).kind is str


# --- conversion ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("hflip", True, True), ("hflip", "true", True), ("hflip", "YES", True), ("hflip", "on", True),
    ("hflip", "1", True), ("hflip", "false", False), ("hflip", "No", False), ("hflip", "off", False),
    ("hflip", "0", False), ("epochs", "3", 3), ("epochs", 3, 3), ("epochs", 3.0, 3), ("lr", "0.05", 0.05),
    ("lr", 2, 2.0), ("lr", "none", None), ("lr", "None", None), ("lr", "null", None), ("lr", "", None),
    ("lr", None, None), ("weights", "none", None), ("data", 5, "5"), ("data", "none", "none"),
    ("augment", "shift", "shift"), ("threshold_policy", "fixed:0.3", "fixed:0.3"),
])
def test_convert(name: str, value: object, expected: object) -> None:
    converted = convert(_spec(name), value, "here")
    assert converted == expected and type(converted) is type(expected)


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("hflip", "maybe", "expected true or false"), ("hflip", 2, "expected true or false"),
    ("epochs", "3.5", "invalid literal"), ("epochs", 3.5, "expected a whole number"),
    ("epochs", True, "expected a whole number"), ("epochs", "none", "invalid literal"),
    ("lr", "fast", "could not convert"), ("lr", True, "expected a number"), ("data", True, "expected text"),
    ("data", ["a"], "expected text"), ("augment", "sideways", "choose from standard, shift, framing, none"),
    ("optimizer", "rmsprop", "choose from adam, sgd"),
])
def test_convert_errors_name_where_the_key_and_the_value(name: str, value: object, reason: str) -> None:
    with pytest.raises(PneumoscanError) as info:
        convert(_spec(name), value, "somewhere.toml")
    message = str(info.value)
    assert message.startswith(f"somewhere.toml: {name} = {value!r}: ") and reason in message


def test_checked_refuses_unknown_keys_listing_the_known_ones() -> None:
    assert checked({"epochs": "2", "hflip": "yes"}, TrainConfig, "x") == {"epochs": 2, "hflip": True}
    with pytest.raises(PneumoscanError) as info:
        checked({"epoch": 2, "colour": "red", "seed": 1}, TrainConfig, "where")
    message = str(info.value)
    assert message.startswith("where: unknown setting(s) colour, epoch; known: data, arch, weights")


# --- recipes -------------------------------------------------------------------------------------------------------


def test_a_recipe_sets_any_field_converted_to_its_type(tmp_path: Path) -> None:
    path = _recipe(tmp_path, '# a comment\ndata = "synthetic:n_per_class=8"\nepochs = 7\nlr = 1\n'
                             'hflip = true\naugment = "none"\nval_fraction = 0.25\nweights = "none"\n')
    values = read_recipe(path, TrainConfig)
    assert values == {"data": "synthetic:n_per_class=8", "epochs": 7, "lr": 1.0, "hflip": True, "augment": "none",
                      "val_fraction": 0.25, "weights": None}
    assert type(values["lr"]) is float


@pytest.mark.parametrize(("text", "message"), [
    ("epoch = 3\n", "unknown setting(s) epoch; known: data"),
    ("epochs = 'many'\n", "epochs = 'many'"),
    ("augment = 'sideways'\n", "choose from standard, shift, framing, none"),
    ("epochs = 3\nepochs = 4\n", "not valid TOML"),
    ("epochs = \n", "not valid TOML"),
])
def test_recipe_errors_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = _recipe(tmp_path, text, name="my-recipe.toml")
    with pytest.raises(PneumoscanError) as info:
        read_recipe(path, TrainConfig)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_a_missing_or_unreadable_recipe_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PneumoscanError, match="nope.toml: no such recipe file"):
        read_recipe(tmp_path / "nope.toml", TrainConfig)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe epochs = 3")
    with pytest.raises(PneumoscanError, match="binary.toml: cannot read"):
        read_recipe(binary, TrainConfig)


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").rglob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_recipe_resolves(recipe: Path) -> None:
    config = resolve(TrainConfig, recipe)
    assert isinstance(config, TrainConfig) and config.data
    for key, value in read_recipe(recipe, TrainConfig).items():
        assert getattr(config, key) == value


# --- --set -----------------------------------------------------------------------------------------------------------


def test_set_assignments_are_converted() -> None:
    assert parse_assignments(["epochs=3", " batch-size = 8 ", "lr=none", "hflip=yes",
                              "data=synthetic:n_per_class=8,seed=2", "threshold_policy=fixed:0.3"], TrainConfig) == {
        "epochs": 3, "batch_size": 8, "lr": None, "hflip": True, "data": "synthetic:n_per_class=8,seed=2",
        "threshold_policy": "fixed:0.3"}
    assert parse_assignments(["epochs=3", "epochs=4"], TrainConfig) == {"epochs": 4}  # the later one wins
    assert parse_assignments([], TrainConfig) == {}


@pytest.mark.parametrize(("pair", "message"), [
    ("epochs", "--set 'epochs': write it as key=value"),
    ("=3", "--set '=3': write it as key=value"),
    ("epochs=x", "--set: epochs = 'x'"),
    ("epoch=3", "--set: unknown setting(s) epoch"),
    ("optimizer=rmsprop", "choose from adam, sgd"),
])
def test_set_errors(pair: str, message: str) -> None:
    with pytest.raises(PneumoscanError) as info:
        parse_assignments([pair], TrainConfig)
    assert message in str(info.value)


# --- precedence ---------------------------------------------------------------------------------------------------


def test_resolve_layers_defaults_then_recipe_then_overrides(tmp_path: Path) -> None:
    path = _recipe(tmp_path, "epochs = 7\nimage_size = 48\naugment = 'none'\n")
    assert resolve(TrainConfig) == TrainConfig()
    assert resolve(TrainConfig, None, {"epochs": 2}) == TrainConfig(epochs=2)
    from_recipe = resolve(TrainConfig, path)
    assert (from_recipe.epochs, from_recipe.image_size, from_recipe.augment) == (7, 48, "none")
    assert from_recipe.batch_size == TrainConfig().batch_size  # untouched keys keep their defaults
    layered = resolve(TrainConfig, str(path), {"epochs": 5, "seed": 1}, {"epochs": 3})
    assert (layered.epochs, layered.seed, layered.image_size, layered.augment) == (3, 1, 48, "none")
    with pytest.raises(PneumoscanError, match="epochs must be at least 1"):
        resolve(TrainConfig, path, {"epochs": 0})  # the merged settings are validated


def _cli_config(*argv: str) -> TrainConfig:
    args = cli_main.build_parser().parse_args(["train", *argv, "--out", "unused"])
    return cli_main._train_config(args)


def test_cli_precedence_defaults_recipe_flags_set(tmp_path: Path) -> None:
    path = _recipe(tmp_path, "epochs = 7\nimage_size = 48\ncache = false\nlr = 0.005\n")
    assert _cli_config() == TrainConfig()
    assert _cli_config("--config", str(path)) == TrainConfig(epochs=7, image_size=48, cache=False, lr=0.005)
    flagged = _cli_config("--config", str(path), "--epochs", "5", "--cache", "--lr", "none")
    assert (flagged.epochs, flagged.image_size, flagged.cache, flagged.lr) == (5, 48, True, None)
    assert _cli_config("--config", str(path), "--epochs", "5", "--set", "epochs=3").epochs == 3
    # a flag typed with the default's value still overrides the recipe: flags default to "not given"
    assert _cli_config("--config", str(path), "--epochs", "30").epochs == 30
    assert _cli_config("--set", "image_size=64", "--image-size", "96").image_size == 64


def test_cli_flags_convert_and_check_their_values() -> None:
    config = _cli_config("--augment", "shift", "--hflip", "--no-cache", "--batch-size", "8", "--lr", "0.01",
                         "--threshold-policy", "youden", "--imbalance", "focal", "--weights", "none")
    assert (config.augment, config.hflip, config.cache, config.batch_size, config.lr, config.threshold_policy,
            config.imbalance, config.weights) == ("shift", True, False, 8, 0.01, "youden", "focal", None)
    with pytest.raises(SystemExit) as info:
        _cli_config("--augment", "sideways")  # argparse checks the choices
    assert info.value.code == 2
    with pytest.raises(PneumoscanError, match="command line: epochs = 'three'"):
        _cli_config("--epochs", "three")


def _help(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_help().split())  # unwrapped, whatever the terminal width


def _train_help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        cli_main.main(["train", "--help"])
    assert info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_shows_each_default_from_train_config(capsys: pytest.CaptureFixture[str]) -> None:
    text = _train_help(capsys)
    assert "--image-size IMAGE_SIZE side of the square model input, in pixels (default: 150)" in text
    for spec in option_specs(TrainConfig):
        shown = "none" if spec.default is None else str(spec.default).lower() if spec.kind is bool else spec.default
        assert f"(default: {shown})" in text and spec.flag in text, spec.name
    assert "--hflip, --no-hflip" in text and "--cache, --no-cache" in text


def test_changing_a_train_config_default_changes_the_cli(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    @dataclass(frozen=True)
    class Smaller(TrainConfig):
        image_size: int = option(77, "side of the square model input, in pixels")

    monkeypatch.setattr(cli_common, "TrainConfig", Smaller)  # where every recipe command takes its settings
    assert "in pixels (default: 77)" in _train_help(capsys)
    args = cli_main.build_parser().parse_args(["train", "--out", "unused"])
    assert cli_main._train_config(args).image_size == 77


def test_generated_flags_for_any_settings_class() -> None:
    @dataclass(frozen=True)
    class Toy:
        count: int = option(3, "how many")
        rate: float | None = option(None, "how fast")
        loud: bool = option(True, "shout")
        mode: str = option("a", "which", choices=("a", "b"))
        hidden: int = option(1, "not on the command line", cli=False)

    parser = argparse.ArgumentParser()
    add_settings_flags(parser, Toy, skip=("mode",))
    text = _help(parser)
    assert "--count COUNT how many (default: 3)" in text and "(default: none)" in text
    assert "--loud, --no-loud shout (default: true)" in text
    assert "--mode" not in text and "--hidden" not in text
    assert given_settings(parser.parse_args([]), Toy) == {}  # nothing typed, nothing overridden
    args = parser.parse_args(["--count", "5", "--rate", "none", "--no-loud"])
    assert given_settings(args, Toy) == {"count": 5, "rate": None, "loud": False}
    assert dataclasses.replace(Toy(), **given_settings(args, Toy)) == Toy(count=5, rate=None, loud=False)


# --- renamed settings (issue 21: threshold -> threshold_policy) -------------------------------------------------------

OLD_NAME_WARNING = "threshold is deprecated and will be removed; use threshold_policy"


def test_an_old_setting_name_in_a_recipe_still_works_with_one_warning(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = _recipe(tmp_path, 'threshold = "balanced"\nepochs = 3\n')
    assert read_recipe(path, TrainConfig) == {"threshold_policy": "balanced", "epochs": 3}
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and str(path) in warnings[0] and OLD_NAME_WARNING in warnings[0]
    assert resolve(TrainConfig, path).threshold_policy == "balanced"


def test_an_old_setting_name_in_set_and_as_a_flag_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_assignments(["threshold=youden"], TrainConfig) == {"threshold_policy": "youden"}
    assert OLD_NAME_WARNING in capsys.readouterr().err
    assert _cli_config("--threshold", "sensitivity:0.95").threshold_policy == "sensitivity:0.95"
    warnings = capsys.readouterr().err.strip().splitlines()
    assert warnings == ["warning: --threshold is deprecated and will be removed; use --threshold-policy"]
    assert _cli_config("--threshold-policy", "youden").threshold_policy == "youden"
    assert capsys.readouterr().err == ""


def test_giving_both_the_old_and_the_new_name_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PneumoscanError, match="give only threshold_policy"):
        read_recipe(_recipe(tmp_path, 'threshold = "balanced"\nthreshold_policy = "youden"\n'), TrainConfig)


def test_an_old_setting_name_in_vary_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    from pneumoscan.pipeline.study import Variation

    variation = Variation.parse("threshold=balanced,youden")
    assert (variation.key, variation.values) == ("threshold_policy", ("balanced", "youden"))
    assert capsys.readouterr().err.count(OLD_NAME_WARNING) == 1


def test_the_old_flag_is_hidden_from_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = _train_help(capsys)
    assert "--threshold-policy" in text and "--threshold " not in text
