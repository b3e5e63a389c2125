"""`pneumoscan monitor`: simulated deployment weeks with injected drift and a label-free drift alarm."""

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pneumoscan.cli.common import DATA_HELP, add_model_option, add_recipe_options, recipe_settings
from pneumoscan.config import MonitorConfig

HELP = "simulated deployment weeks with injected drift and a label-free drift alarm"


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "monitor", help=HELP,
        description="Stream a labelled split as weeks, optionally inject drift from a week on, and flag weeks whose "
                    "inputs or scores differ from the model's validation reference (no labels needed for the flag).")
    add_model_option(parser)
    parser.add_argument("--data", required=True, help=DATA_HELP)
    parser.add_argument("--drift", action="append", default=[], metavar="NAME:STRENGTH",
                        help="drift to inject (repeatable): exposure:S, contrast:S, noise:S, resolution:S, "
                             "prevalence:P")
    add_recipe_options(parser, MonitorConfig)
    parser.add_argument("--out", type=Path, required=True)


def run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    from pneumoscan.evaluation.monitoring import Drift
    from pneumoscan.models.bundle import load_bundle
    from pneumoscan.pipeline.monitor import run_monitor

    settings = recipe_settings(args, MonitorConfig)
    drifts = [Drift.parse(text) for text in args.drift]
    simulation = run_monitor(load_bundle(args.model), args.data, settings.split, args.out, console,
                             weeks=settings.weeks, drifts=drifts, drift_from=settings.first_drifted_week,
                             alpha=settings.alpha, seed=settings.seed, strict=settings.strict,
                             stream=settings.stream).simulation
    table = Table("week", "drift", "images", "accuracy", "sensitivity", "specificity", "mean P", "drift p",
                  "flag", title=f"monitoring: drift {', '.join(simulation.drifts) or 'none'}")
    for week in simulation.weeks:
        values = (week.metrics.accuracy, week.metrics.sensitivity, week.metrics.specificity, week.mean_probability)
        table.add_row(str(week.week), "yes" if week.drift_injected else "", str(week.n_images),
                      *("n/a" if v is None else f"{v:.3f}" for v in values),
                      f"{week.drift_p_value:.2g}", "[bold red]DRIFT[/]" if week.flagged else "")
    out.print(table)
    console.print(f"drifted weeks flagged: {simulation.drifted_weeks_flagged}; clean weeks flagged: "
                  f"{simulation.clean_weeks_flagged}. monitoring.json and monitoring.png in {args.out}")
