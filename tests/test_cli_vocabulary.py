"""One option vocabulary (issue 21): every command that reads a model takes `--model`, defaulting to the shipped
model; every command is one module of pneumoscan.cli.commands, listed once."""

import argparse
from pathlib import Path

import pytest

from pneumoscan.cli.commands import BY_NAME, COMMANDS
from pneumoscan.cli.main import build_parser

MODEL_READERS = {"evaluate", "audit", "predict", "serve", "export", "adapt", "monitor", "explain"}
MINIMAL = {  # the fewest arguments each command parses with
    "evaluate": ["--data", "d", "--out", "o"], "audit": ["--data", "d", "--out", "o"], "predict": ["x.png"],
    "serve": [], "export": ["--to", "onnx", "--data", "d", "--out", "m.onnx"],
    "adapt": ["--data", "d", "--out", "o"], "monitor": ["--data", "d", "--out", "o"],
    "explain": ["x.png", "--out", "o"],
}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_is_one_table_entry_with_a_module_that_runs_it() -> None:
    names = [command.name for command in COMMANDS]
    assert len(names) == len(set(names)) and set(_subparsers(build_parser())) == set(names)
    for command in COMMANDS:
        assert callable(command.module.run), command.name


@pytest.mark.parametrize("name", sorted(MODEL_READERS))
def test_every_command_that_reads_a_model_defaults_to_the_shipped_one(name: str) -> None:
    args = build_parser().parse_args([name, *MINIMAL[name]])
    model = args.model or [Path("default")]  # evaluate's --model repeats: none given means the default
    assert model in (Path("default"), [Path("default")]), name


def test_evaluate_without_model_scores_the_shipped_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = []
    monkeypatch.setattr("pneumoscan.models.bundle.load_bundle", lambda path: seen.append(path) or path)

    class Stop(Exception):
        pass

    def stop(bundle, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise Stop

    monkeypatch.setattr("pneumoscan.evaluation.evaluate.evaluate", stop)
    args = build_parser().parse_args(["evaluate", "--data", "d", "--out", str(tmp_path / "o")])
    with pytest.raises(Stop):
        BY_NAME["evaluate"].module.run(args, None, None, "pneumoscan evaluate")
    assert seen == [Path("default")]


@pytest.mark.parametrize(("name", "settings", "field", "value"), [
    ("evaluate", "EvalConfig", "weeks", 3), ("adapt", "AdaptConfig", "min_images", 50),
    ("audit", "AuditConfig", "attention_films", 7), ("demo", "DemoConfig", "seeds", 2),
    ("train", "TrainConfig", "epochs", 3), ("pretrain", "PretrainConfig", "epochs", 3),
    ("serve", "ServeConfig", "port", 8123), ("monitor", "MonitorConfig", "weeks", 5),
    ("export", "ExportConfig", "n_images", 32)])
def test_every_command_with_settings_takes_a_recipe_file_and_set(name: str, settings: str, field: str, value: int,
                                                                 tmp_path: Path) -> None:
    """--config FILE, then the flags, then --set, on every command whose settings are a dataclass."""
    import pneumoscan.config as config_module
    from pneumoscan.cli.common import recipe_settings

    cls = getattr(config_module, settings)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f"{field} = {value + 1}\n")
    extra = MINIMAL.get(name, ["--out", "o"] if name != "demo" else [])
    from_file = recipe_settings(build_parser().parse_args([name, *extra, "--config", str(recipe)]), cls)
    from_set = recipe_settings(build_parser().parse_args([name, *extra, "--config", str(recipe), "--set",
                                                          f"{field}={value}"]), cls)
    assert getattr(from_file, field) == value + 1 and getattr(from_set, field) == value
