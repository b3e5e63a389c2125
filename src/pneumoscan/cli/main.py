"""Entry point: parses arguments, runs one job, and turns user mistakes into one-line errors (exit 2).

Each command lives in its own module under pneumoscan.cli.commands, listed in one table (COMMANDS); this module
only builds the parser from that table, checks what the command will write, and maps errors to exit codes.
"""

import argparse
import shlex
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from pneumoscan import __version__
from pneumoscan.atomic import check_output_dir
from pneumoscan.cli.commands import BY_NAME, COMMANDS
from pneumoscan.cli.common import AuditFailed, train_config
from pneumoscan.errors import PneumoscanError
from pneumoscan.launch import launched_rank

_train_config = train_config  # the name tests and older callers use


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumoscan",
        description="Pneumonia detection in chest X-rays. Research and education only: not a medical device.",
    )
    parser.add_argument("--version", action="version", version=f"pneumoscan {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add(commands)
    return parser


def _check_outputs(args: argparse.Namespace) -> None:
    """Every folder (or, for export, file) a command writes is checked before it loads, decodes or trains anything,
    so an unwritable --out fails in a second with one line: the command's own `outputs` where it has one, else
    its `--out` folder."""
    module = BY_NAME[args.command].module
    if hasattr(module, "outputs"):
        module.outputs(args)
    elif getattr(args, "out", None) is not None:
        check_output_dir(args.out)


def _run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    _check_outputs(args)
    BY_NAME[args.command].module.run(args, console, out, command)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # Logs and CI capture output without a terminal; rich would wrap them at 80 columns.
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
    out = Console(width=None if sys.stdout.isatty() else 120)
    command = "pneumoscan " + shlex.join(argv)
    errors = console
    if launched_rank() != 0:  # under torchrun only rank 0 reports progress (errors still show)
        console, out = Console(stderr=True, quiet=True), Console(quiet=True)
    try:
        _run(args, console, out, command)
    except PneumoscanError as error:
        errors.print(f"[red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        return 2
    except AuditFailed as failed:
        errors.print(f"[red]audit failed:[/] {escape(str(failed))}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt as interrupt:
        errors.print(f"[red]interrupted[/] {escape(str(interrupt))}".rstrip(), highlight=False, soft_wrap=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
