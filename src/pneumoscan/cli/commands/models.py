"""`pneumoscan models`: the registered architectures and data sources."""

import argparse

from rich.console import Console

HELP = "list the architectures and data sources"


def add(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("models", help=HELP)


def run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    from pneumoscan.data.registry import list_sources
    from pneumoscan.models import list_models

    console.print("architectures: " + ", ".join(list_models()))
    console.print("data sources:  " + "; ".join(list_sources()))
