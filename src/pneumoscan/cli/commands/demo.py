"""`pneumoscan demo`: synth -> optimizer study -> evaluate -> every figure, on synthetic data."""

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pneumoscan.cli.common import add_recipe_options, recipe_settings
from pneumoscan.config import DemoConfig

HELP = "synth -> optimizer study (adam vs sgd) -> evaluate -> all figures"
CONTENTS = ("  data/                     synthetic dataset (Kaggle layout)\n"
            "  study/                    optimizer study: study.md, study.json, study_curves.png, a bundle per run\n"
            "  evaluation/<run>/         report.html (open in a browser), MODEL_CARD.md, metrics.json with 95 % CIs,\n"
            "                            confusion, ROC, PR, reliability, threshold, Grad-CAM, monitoring and\n"
            "                            architecture figures, classification_report.txt, predictions.csv\n"
            "  temporal_performance.png  weekly view of every model\n")


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("demo", help=HELP,
                                 description="Run the whole pipeline on a synthetic dataset (about three minutes on "
                                             "2 cores).")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    add_recipe_options(parser, DemoConfig)


def run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    from pneumoscan.pipeline.demo import run_demo

    result = run_demo(args.out, recipe_settings(args, DemoConfig), console, command=command)
    table = Table("run", "accuracy", "sensitivity", "specificity", "ROC AUC", "images",
                  title="held-out synthetic test split (threshold 0.5)")
    for name, evaluation in result.evaluations.items():
        point = evaluation.metrics.point
        table.add_row(name, *("n/a" if v is None else f"{v:.4f}"
                              for v in (point.accuracy, point.sensitivity, point.specificity, point.roc_auc)),
                      str(point.n_images))
    console.print(table)
    console.print(f"\n[bold]done.[/] Everything is in {args.out}:\n{CONTENTS}"
                  f"  best model (lowest validation loss): {result.study.best_run}", highlight=False)
