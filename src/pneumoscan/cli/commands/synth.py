"""`pneumoscan synth`: a synthetic dataset in the Kaggle layout."""

import argparse
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from pneumoscan.cli.common import add_recipe_options, recipe_settings
from pneumoscan.config import SynthConfig
from pneumoscan.data.synthetic import SyntheticSource, SyntheticSpec

HELP = "write a synthetic dataset in the Kaggle layout"


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("synth", help=HELP,
                                 description="Write synthetic radiographs as train|val|test/{NORMAL,PNEUMONIA}/*.png.")
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must not hold a dataset)")
    add_recipe_options(parser, SynthConfig)


def run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    count = SyntheticSource(SyntheticSpec(**asdict(recipe_settings(args, SynthConfig)))).write(args.out)
    console.print(f"wrote {count} images to {args.out}")
