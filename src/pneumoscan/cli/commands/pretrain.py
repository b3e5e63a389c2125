"""`pneumoscan pretrain`: self-supervised (SimCLR) pre-training of a backbone, no labels read."""

import argparse
from pathlib import Path

from rich.console import Console

from pneumoscan.cli.common import add_recipe_options, recipe_settings
from pneumoscan.config import PretrainConfig

HELP = "self-supervised pre-training (SimCLR) of a backbone on training images, no labels"


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "pretrain", help=HELP,
        description="Pre-train an architecture's backbone on the training side of the patient-grouped carve without "
                    "reading a label; writes backbone.safetensors for `train --weights`, pretrain.json and "
                    "pretrain_curve.png.")
    add_recipe_options(parser, PretrainConfig)
    parser.add_argument("--out", type=Path, required=True, help="folder to write")


def run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    from pneumoscan.pipeline.pretrain import run_pretraining

    settings = recipe_settings(args, PretrainConfig)
    run_pretraining(settings, args.out, console, command=command)
