"""`pneumoscan ensemble`: trained bundles combined into one bundle, validated like a run."""

import argparse
from pathlib import Path

from rich.console import Console

from pneumoscan.cli.common import print_metrics

HELP = "combine trained bundles into one ensemble bundle, validated like a run"


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "ensemble", help=HELP,
        description="Average the probabilities of two or more trained models (any architectures, input sizes and "
                    "preprocessing) validated on the same split. The result is one bundle every command reads; its "
                    "threshold, guard and validation record are computed on that split.")
    parser.add_argument("members", nargs="+", type=Path, metavar="BUNDLE", help="member bundle folders (2 or more)")
    parser.add_argument("--out", type=Path, required=True, help="folder of the ensemble bundle")


def run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    from pneumoscan.pipeline.ensemble import build_ensemble

    built = build_ensemble(args.members, args.out, console, command=command)
    print_metrics(console, f"ensemble of {len(built.members)}: validation", built.validation.metrics)
