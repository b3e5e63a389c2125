"""`pneumoscan evaluate`: metrics with CIs, figures, report.html and MODEL_CARD.md; several `--model`s side by
side."""

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from pneumoscan.cli.common import (
    DATA_HELP,
    DEFAULT_MODEL,
    MODEL_HELP,
    add_engine_option,
    add_recipe_options,
    engine_for,
    print_metrics,
    recipe_settings,
    scoring_ranks,
)
from pneumoscan.config import EvalConfig
from pneumoscan.errors import PneumoscanError
from pneumoscan.launch import launched_world_size
from pneumoscan.metrics import METRIC_NAMES

if TYPE_CHECKING:
    from pneumoscan.evaluation.side_by_side import SideBySide

HELP = "metrics and figures for a model on a labelled folder"


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("evaluate", help=HELP,
                                 description="Evaluate a model bundle; writes metrics.json, figures, report.html "
                                             "and MODEL_CARD.md.")
    parser.add_argument("--model", type=Path, action="append", default=None,
                        help=MODEL_HELP + " (the default); give it more than once (e.g. a model and its adapted "
                                          "version) for a side-by-side report, each model in its own subfolder of "
                                          "--out")
    parser.add_argument("--data", required=True, help=DATA_HELP + "; a dataset root is scored on its test/ split")
    add_recipe_options(parser, EvalConfig)
    add_engine_option(parser)
    parser.add_argument("--out", type=Path, required=True)


def _print_side_by_side(console: Console, side: "SideBySide") -> None:
    table = Table("metric", *side.names, title="side by side, same images (95 % CI in comparison.md)")
    for name in (*METRIC_NAMES, "threshold"):
        values = [result.metrics.point.threshold if name == "threshold" else result.metrics.point.value(name)
                  for result in side.results]
        table.add_row(name, *("n/a" if v is None else f"{v:.4f}" for v in values))
    console.print(table)
    for name, adaptation in zip(side.names, side.adaptations, strict=True):
        console.print(f"{name}: {adaptation}", highlight=False, soft_wrap=True)


def run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    from pneumoscan.evaluation.evaluate import evaluate
    from pneumoscan.models.bundle import load_bundle

    config = recipe_settings(args, EvalConfig)
    models = args.model or [DEFAULT_MODEL]
    if len(models) > 1 and launched_world_size() > 1:
        raise PneumoscanError("under torchrun evaluate scores one --model; compare several on one process")
    if args.exported is not None and len(models) > 1:
        raise PneumoscanError("--exported belongs to one --model; leave it out to compare several models")
    engines = [engine_for(argparse.Namespace(**{**vars(args), "model": path}), console, tta=config.tta)
               for path in models]
    if len(models) > 1:
        from pneumoscan.evaluation.side_by_side import evaluate_side_by_side

        side = evaluate_side_by_side([load_bundle(path) for path in models], args.data, args.out, config, console,
                                     engines)
        _print_side_by_side(console, side)
        console.print(f"comparison.json, comparison.md and one evaluation folder per model in {args.out}")
        return
    with scoring_ranks() as ranks:  # under torchrun: each rank scores its share, rank 0 evaluates and writes
        result = evaluate(load_bundle(models[0]), args.data, args.out, config, console, engines[0], ranks)
    if result is None:
        return
    print_metrics(console, f"{result.data.source} [{result.data.split}]", result.metrics.point, result.metrics.ci95)
    if result.prior_adapted is not None:
        adapted = result.prior_adapted
        print_metrics(console, f"label-shift adapted, NO labels used: estimated prevalence "
                               f"{adapted.estimated_prevalence:.3f} (training {adapted.training_prior:.3f})",
                      adapted.metrics)
    console.print(f"metrics.json, report and figures in {args.out} (films scored with {result.engine})")
