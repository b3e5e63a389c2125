"""Typed settings dataclasses whose fields carry their own help: one place for every default.

A settings class (TrainConfig, EvalConfig) declares each option once, as a dataclass field made with
`option(default, help)`. The CLI builds its flags from those fields, recipe files (TOML) and
`--set key=value` are checked and converted against the same fields, so a default can never differ
between the command line, a recipe and a Python caller.
"""

import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from pneumoscan.errors import PneumoscanError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

T = TypeVar("T")
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def option(default: Any, help: str, choices: Sequence[str] | None = None, cli: bool = True) -> Any:  # noqa: A002
    """A settings field: its default, the help shown by `--help`, and the allowed values if a closed set."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None,
                                            "cli": cli})


@dataclass(frozen=True)
class OptionSpec:
    name: str
    kind: type  # bool, int, float or str
    optional: bool  # None is allowed ("none" on the command line)
    default: Any
    help: str
    choices: tuple[str, ...] | None
    cli: bool

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _kind(annotation: Any) -> tuple[type, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return annotation, False


def option_specs(settings: type) -> list[OptionSpec]:
    hints = typing.get_type_hints(settings)
    specs = []
    for item in fields(settings):
        if not isinstance(item, Field) or item.default is MISSING:
            continue
        kind, optional = _kind(hints[item.name])
        specs.append(OptionSpec(item.name, kind, optional, item.default, item.metadata.get("help", ""),
                                item.metadata.get("choices"), item.metadata.get("cli", True)))
    return specs


def convert(spec: OptionSpec, value: Any, where: str) -> Any:
    """A value from TOML or the command line, checked and converted to the field's type."""
    if spec.optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))):
        return None
    try:
        if spec.kind is bool:
            if isinstance(value, bool):
                converted: Any = value
            elif str(value).lower() in _TRUE | _FALSE:
                converted = str(value).lower() in _TRUE
            else:
                raise ValueError("expected true or false")
        elif spec.kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected a whole number")
            converted = int(value)
        elif spec.kind is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            converted = float(value)
        else:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError("expected text")
            converted = str(value)
    except (TypeError, ValueError) as error:
        raise PneumoscanError(f"{where}: {spec.name} = {value!r}: {error}") from None
    if spec.choices and converted not in spec.choices:
        raise PneumoscanError(f"{where}: {spec.name} = {value!r}: choose from {', '.join(spec.choices)}")
    return converted


def read_recipe(path: Path | str, settings: type) -> dict[str, Any]:
    """A TOML recipe's keys, converted; an unknown key or a bad value is an error naming the file."""
    path = Path(path)
    try:
        payload = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PneumoscanError(f"{path}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise PneumoscanError(f"{path}: cannot read ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise PneumoscanError(f"{path}: not valid TOML ({error})") from None
    return checked(payload, settings, str(path))


def renamed(settings: type) -> dict[str, str]:
    """A settings class's old field names and their new ones (its `RENAMED` class attribute): an old name in a
    recipe, `--set`, `--vary` or a flag still works for one release, with a warning naming the new spelling."""
    return dict(getattr(settings, "RENAMED", {}))


def current_name(settings: type, name: str, where: str) -> str:
    """`name`, or the new name of a renamed setting, after one warning line on stderr naming the new spelling."""
    new = renamed(settings).get(name)
    if new is None:
        return name
    sys.stderr.write(f"warning: {where}: {name} is deprecated and will be removed; use {new}\n")
    return new


def checked(values: Mapping[str, Any], settings: type, where: str) -> dict[str, Any]:
    specs = {spec.name: spec for spec in option_specs(settings)}
    values = _migrated(values, settings, where)
    unknown = sorted(set(values) - set(specs))
    if unknown:
        raise PneumoscanError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(specs)}")
    return {name: convert(specs[name], value, where) for name, value in values.items()}


def _migrated(values: Mapping[str, Any], settings: type, where: str) -> dict[str, Any]:
    """`values` with each old (renamed) key under its new name; giving both spellings is an error."""
    result: dict[str, Any] = {}
    for name, value in values.items():
        new = current_name(settings, name, where)
        if new != name and new in values:
            raise PneumoscanError(f"{where}: {name} and {new} are the same setting (its old and new name); "
                                  f"give only {new}")
        result[new] = value
    return result


def parse_assignments(pairs: Sequence[str], settings: type, where: str = "--set") -> dict[str, Any]:
    """`key=value` strings (from `--set`) to converted values."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise PneumoscanError(f"{where} {pair!r}: write it as key=value")
        values[key.strip().replace("-", "_")] = value.strip()
    return checked(values, settings, where)


def resolve(settings: type[T], recipe: Path | str | None = None, *layers: Mapping[str, Any]) -> T:
    """Defaults, then the recipe file, then each layer of overrides in order (later wins)."""
    merged: dict[str, Any] = read_recipe(recipe, settings) if recipe is not None else {}
    for layer in layers:
        merged.update(layer)
    return replace(settings(), **merged)  # type: ignore[call-arg]
