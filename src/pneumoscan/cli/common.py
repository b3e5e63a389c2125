"""What every command module of the CLI shares: the help texts and options that mean the same everywhere, the
printing of metrics, and the exception that turns a failed audit into exit code 1."""

import argparse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pneumoscan.cli.options import add_settings_flags, given_settings
from pneumoscan.config import TrainConfig
from pneumoscan.errors import PneumoscanError
from pneumoscan.launch import launched_world_size
from pneumoscan.metrics import METRIC_NAMES, ScreeningMetrics
from pneumoscan.settings import parse_assignments, resolve

DATA_HELP = ("a folder in the Kaggle layout (dataset root or one split), a labels CSV (path,label[,patient,group,"
             "split]; also a run's split.csv), or 'synthetic[:key=value,...]'")
T = TypeVar("T")
MODEL_HELP = "model bundle folder (a training run folder), or 'default' for the model shipped with pneumoscan"
DEFAULT_MODEL = Path("default")


class AuditFailed(Exception):
    """`audit --fail-on-finding` found a shortcut: exit code 1 (the audit ran; 2 stays for usage errors)."""


def add_engine_option(parser: argparse.ArgumentParser) -> None:
    """`--engine auto|onnx|torch|tflite`, the same on every command that scores: what runs the network. The bundle
    always supplies the preprocessing, the threshold and the out-of-distribution guard."""
    parser.add_argument("--engine", choices=["auto", "onnx", "torch", "tflite"], default="auto",
                        help="what runs the network: auto (default) = ONNX Runtime with the bundle's exported graph "
                             "(made and cached on first use; PyTorch where the model cannot be exported), or "
                             "--exported FILE's kind; onnx; torch; tflite (with --exported)")
    parser.add_argument("--exported", type=Path, default=None, metavar="FILE",
                        help="a file made by `pneumoscan export` from this --model (.onnx or .tflite) to run instead "
                             "of the bundle's own graph")


def engine_for(args: argparse.Namespace, console: Console, tta: bool = False) -> Any:
    """The engine `--engine`/`--exported` ask for (pneumoscan.serving.engine.open_engine), warning in one line on
    the console where it falls back to PyTorch."""
    from pneumoscan.serving.engine import open_engine

    engine = args.engine
    if engine == "auto" and args.exported is not None:
        engine = "tflite" if args.exported.suffix.lower() == ".tflite" else "onnx"
    if args.exported is not None and engine == "torch":
        raise PneumoscanError("--exported runs with --engine onnx or tflite, not torch")
    return open_engine(args.model, engine, exported=args.exported, tta=tta,
                       warn=lambda line: console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False,
                                                       soft_wrap=True))


SCORING_TIMEOUT = timedelta(hours=24)  # ranks scoring an archive may reach the final gather hours apart


@contextmanager
def scoring_ranks() -> Iterator[Any]:
    """The processes a scoring command shares its films with: None on one process (no torch import); under
    torchrun the gloo group (pneumoscan.training.distributed.Distributed), left through a barrier when the command
    ends and abandoned (no barrier) when it fails, so torchrun ends the other ranks."""
    if launched_world_size() <= 1:
        yield None
        return
    import torch

    from pneumoscan.training.distributed import Distributed

    ranks = Distributed.from_environment(torch.device("cpu"), timeout=SCORING_TIMEOUT)
    try:
        yield ranks
    except BaseException:
        ranks.abandon()
        raise
    ranks.close()


def add_model_option(parser: argparse.ArgumentParser, help_text: str = MODEL_HELP) -> None:
    """`--model`, the same on every command that reads one: a bundle folder, default the shipped model."""
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=help_text)


def add_recipe_options(parser: argparse.ArgumentParser, settings: type | None = None) -> None:
    """`--config FILE`, `--set KEY=VALUE` and one flag per setting of `settings` (default TrainConfig)."""
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="a recipe (TOML) setting any of these options, e.g. configs/default-model.toml; "
                             "flags and --set override it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting (repeatable), e.g. --set epochs=3")
    add_settings_flags(parser, settings or TrainConfig)


def recipe_settings(args: argparse.Namespace, settings: type[T]) -> T:
    """Defaults, then --config, then the flags typed, then --set (later wins)."""
    return resolve(settings, args.config, given_settings(args, settings), parse_assignments(args.set, settings))


def train_config(args: argparse.Namespace) -> TrainConfig:
    return recipe_settings(args, TrainConfig)


def print_metrics(console: Console, title: str, metrics: ScreeningMetrics,
                  intervals: Mapping[str, tuple[float, float] | None] | None = None) -> None:
    console.print(f"[bold]{title}[/]", highlight=False, soft_wrap=True)
    table = Table("metric", "value", *(["95 % CI"] if intervals else []))
    for name in METRIC_NAMES:
        value = metrics.value(name)
        cells = ["n/a" if value is None else f"{value:.4f}"]
        if intervals:
            ci = intervals.get(name)
            cells.append(f"{ci[0]:.4f} – {ci[1]:.4f}" if ci else "")
        table.add_row(name, *cells)
    table.add_row("threshold", f"{metrics.threshold:.4f}", *([""] if intervals else []))
    table.add_row("n_images", str(metrics.n_images), *([""] if intervals else []))
    console.print(table)
