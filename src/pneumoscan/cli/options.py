"""argparse flags generated from a settings dataclass, so the CLI never restates a default."""

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from pneumoscan.settings import checked, option_specs, renamed


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option, kept for one release: it sets the new option and prints one warning line that
    names the new spelling (CHANGELOG.md lists every alias and when it goes)."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        sys.stderr.write(f"warning: {option_string} is deprecated and will be removed; use {self.new}\n")
        setattr(namespace, self.dest, values)


def add_settings_flags(parser: argparse.ArgumentParser, settings: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per field (`batch_size` -> `--batch-size`); booleans get `--x/--no-x`. Flags default to
    'not given', so a recipe file's value survives unless the flag is typed."""
    group = parser.add_argument_group(f"settings ({settings.__name__}; any of them also as --set key=value)")
    for spec in option_specs(settings):
        if not spec.cli or spec.name in skip:
            continue
        shown = "none" if spec.default is None else str(spec.default).lower() if spec.kind is bool else spec.default
        kwargs: dict[str, Any] = {"dest": spec.name, "default": argparse.SUPPRESS,
                                  "help": f"{spec.help} (default: {shown})".replace("%", "%%")}
        if spec.kind is bool:
            group.add_argument(spec.flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            group.add_argument(spec.flag, metavar=spec.name.upper(), choices=spec.choices, **kwargs)
    for old, new in renamed(settings).items():  # a renamed setting's old flag, e.g. --threshold
        if new not in skip:
            group.add_argument("--" + old.replace("_", "-"), dest=new, default=argparse.SUPPRESS,
                               action=DeprecatedAlias, new="--" + new.replace("_", "-"))


def given_settings(args: argparse.Namespace, settings: type) -> dict[str, Any]:
    """The settings flags the user typed, converted to their fields' types."""
    names = {spec.name for spec in option_specs(settings)}
    return checked({k: v for k, v in vars(args).items() if k in names}, settings, "command line")
