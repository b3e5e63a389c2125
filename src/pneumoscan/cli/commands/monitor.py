"""`pneumoscan monitor`: simulated deployment weeks with injected drift and a label-free drift alarm."""

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pneumoscan.cli.common import DATA_HELP, add_model_option
from pneumoscan.config import EvalConfig, check_seed
from pneumoscan.errors import PneumoscanError

HELP = "simulated deployment weeks with injected drift and a label-free drift alarm"


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "monitor", help=HELP,
        description="Stream a labelled split as weeks, optionally inject drift from a week on, and flag weeks whose "
                    "inputs or scores differ from the model's validation reference (no labels needed for the flag).")
    add_model_option(parser)
    parser.add_argument("--data", required=True, help=DATA_HELP)
    parser.add_argument("--split", default="test", help="split of a dataset root to stream (default test)")
    parser.add_argument("--weeks", type=int, default=EvalConfig.weeks,
                        help=f"weeks to split the films into (default {EvalConfig.weeks}, as `evaluate`)")
    parser.add_argument("--drift", action="append", default=[], metavar="NAME:STRENGTH",
                        help="drift to inject (repeatable): exposure:S, contrast:S, noise:S, resolution:S, "
                             "prevalence:P")
    parser.add_argument("--drift-from-week", type=int, default=None,
                        help="first drifted week (default: the middle week)")
    parser.add_argument("--alpha", type=float, default=0.01, help="alarm level of the weekly drift test")
    parser.add_argument("--seed", type=int, default=0, help="arrival order and injected noise")
    parser.add_argument("--strict", action="store_true", help="stop at an unreadable image instead of skipping it")
    parser.add_argument("--out", type=Path, required=True)


def _check(args: argparse.Namespace) -> None:
    if args.weeks < 1 or not 0.0 < args.alpha < 1.0:
        raise PneumoscanError(f"--weeks must be at least 1 and --alpha in (0, 1), got {args.weeks} and {args.alpha}")
    if args.drift_from_week is not None and not 1 <= args.drift_from_week <= args.weeks:
        raise PneumoscanError(f"--drift-from-week must be a week from 1 to --weeks ({args.weeks}), got "
                              f"{args.drift_from_week}")
    check_seed("--seed", args.seed)


def run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    from pneumoscan.evaluation.monitoring import Drift
    from pneumoscan.models.bundle import load_bundle
    from pneumoscan.pipeline.monitor import run_monitor

    _check(args)
    drifts = [Drift.parse(text) for text in args.drift]
    drift_from = args.weeks // 2 + 1 if args.drift_from_week is None else args.drift_from_week
    simulation = run_monitor(load_bundle(args.model), args.data, args.split, args.out, console, weeks=args.weeks,
                             drifts=drifts, drift_from=drift_from, alpha=args.alpha, seed=args.seed,
                             strict=args.strict).simulation
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
