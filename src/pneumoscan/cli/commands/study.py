"""`pneumoscan study` (any setting varied over cells, K seeds each) and its shorthand `compare` (optimizers)."""

import argparse
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from pneumoscan.cli.common import add_recipe_options, train_config
from pneumoscan.config import DEFAULT_LR, TrainConfig
from pneumoscan.errors import PneumoscanError
from pneumoscan.settings import option_specs

HELP = "vary any setting over cells, K seeds each, on equal terms, with paired tests"
COMPARE_HELP = "optimizer study (same as: study --vary optimizer=adam,sgd)"


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "study", help=HELP,
        description="Train every combination of the --vary values for K seeds on the same split, the same initial "
                    "weights per seed and the same budget; report mean ± sd, paired t-tests between every two cells "
                    "that differ in one setting, overlaid curves, study.json and study.md. Rerunning the same "
                    "command reuses finished runs.")
    add_recipe_options(parser)
    parser.add_argument("--cell", action="append", default=[], metavar="'NAME: KEY=V; KEY=V'",
                        help="a named recipe cell changing several settings at once (repeatable); e.g. --cell 'base:' "
                             "--cell 'reg: mixup=0.2; label_smoothing=0.1'; combined with every --vary value")
    parser.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                        help="a setting and its values (repeatable; cells are all combinations): "
                             + ", ".join(spec.name for spec in option_specs(TrainConfig) if spec.name != "seed"))
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds per cell (default 3): --seed, --seed+1, ...; values are split at commas, so a "
                             "varied value cannot contain one")
    parser.add_argument("--out", type=Path, required=True)


def add_compare(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("compare", help=COMPARE_HELP,
                                 description="Shorthand for `pneumoscan study --vary optimizer=...`.")
    add_recipe_options(parser)
    parser.add_argument("--optimizers", nargs="+", choices=sorted(DEFAULT_LR), default=["adam", "sgd"])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per optimizer")
    parser.add_argument("--out", type=Path, required=True)


def run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    """Both `study` and `compare` (args.command says which)."""
    from pneumoscan.pipeline.study import NamedCell, Variation, run_study

    comparing = args.command == "compare"
    variations = ([Variation("optimizer", tuple(dict.fromkeys(args.optimizers)))] if comparing
                  else [Variation.parse(text) for text in args.vary])
    named = [] if comparing else [NamedCell.parse(text) for text in args.cell]
    if not comparing and not variations and not named:
        raise PneumoscanError("study: give --vary KEY=V1,V2 and/or --cell recipes (one cell measures its "
                              "spread over seeds)")
    base = train_config(args)
    if comparing:
        base = replace(base, optimizer=variations[0].values[0])
        if len(variations[0].values) < 2:
            variations = []
    result = run_study(base, variations, args.seeds, args.out, console, command=command, cells=named)
    console.print(f"study in {args.out} (study.json, study.md, study.csv, study_curves.png); "
                  f"lowest validation loss: {result.best_run}")
