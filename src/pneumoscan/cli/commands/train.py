"""`pneumoscan train`: one model, whose run folder is a model bundle; `--resume` continues an interrupted run."""

import argparse
from pathlib import Path

from rich.console import Console

from pneumoscan.atomic import check_output_dir
from pneumoscan.cli.common import add_recipe_options, print_metrics, train_config
from pneumoscan.cli.options import given_settings
from pneumoscan.config import TrainConfig
from pneumoscan.errors import PneumoscanError

HELP = "train one model; the run folder is a model bundle"


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help=HELP,
                                 description="Train one model with a patient-grouped validation split. Settings "
                                             "come from the defaults, then --config FILE, then flags and --set.")
    add_recipe_options(parser)
    parser.add_argument("--out", type=Path, default=None, help="run folder to write")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                        help="continue the interrupted run in RUN_DIR from its last checkpoint, with its stored "
                             "settings (give no other settings)")


def outputs(args: argparse.Namespace) -> None:
    """Checked in run(): which folder is written depends on --resume."""


def _settings_and_folder(args: argparse.Namespace) -> tuple[TrainConfig, Path]:
    if (args.out is None) == (args.resume is None):
        raise PneumoscanError("train: give --out RUN_DIR for a new run, or --resume RUN_DIR to continue one")
    if args.resume is None:
        return train_config(args), args.out
    from pneumoscan.pipeline.train import resume_config

    if args.config or args.set or given_settings(args, TrainConfig):
        raise PneumoscanError("--resume continues with the run's stored settings; give no other settings")
    return resume_config(args.resume), args.resume


def run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    from pneumoscan.pipeline.train import run_training
    from pneumoscan.training.prepare import prepare_data

    config, out_dir = _settings_and_folder(args)
    check_output_dir(out_dir)  # before the images are decoded
    prepared = prepare_data(config, console)
    summary = prepared.summary
    console.print(f"train: {summary.train} | validation: {summary.val} ({summary.validation})",
                  highlight=False, soft_wrap=True)
    result = run_training(config, out_dir, console, command=command, data=prepared, resume=args.resume is not None)
    if result is not None:  # rank 0 (the only process unless launched by torchrun)
        print_metrics(console, f"validation metrics (best epoch {result.best_epoch})", result.validation.metrics)
        console.print(f"model bundle and run files in {out_dir}")
