"""`pneumoscan audit`: the shortcut audit of a model on labelled films."""

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pneumoscan.cli.common import DATA_HELP, AuditFailed, add_model_option, add_recipe_options, recipe_settings
from pneumoscan.config import AuditConfig

if TYPE_CHECKING:
    from pneumoscan.evaluation.audit import AuditResult

HELP = "shortcut audit: does the model read the lungs or the film's framing?"


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("audit", help=HELP,
                                 description="Framing and marker swaps with 95 % CIs, metrics per series, subtype and "
                                             "framing quartile, and the Grad-CAM mass on the lung fields, each with a "
                                             "pass/fail rule; writes audit.json, report.html and figures.")
    add_model_option(parser)
    parser.add_argument("--data", required=True, help=DATA_HELP + "; a dataset root is audited on its --split")
    add_recipe_options(parser, AuditConfig)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fail-on-finding", action="store_true",
                        help="exit with code 1 when the audit fails (for CI pipelines); default: exit 0 and report")


def _print_audit(out: Console, result: "AuditResult") -> None:
    table = Table(title=f"shortcut audit of {result.model} on {result.data.source} [{result.data.split}]: "
                        f"{result.verdict.upper()}")
    for column in ("check", "answer", "finding"):
        table.add_column(column, overflow="fold")
    for check in result.checks:
        answer = "n/a" if check.passed is None else "pass" if check.passed else "[red]FAIL[/]"
        table.add_row(check.name, answer, escape(check.finding))
    out.print(table)


def run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    from pneumoscan.models.bundle import load_bundle
    from pneumoscan.pipeline.audit import run_audit

    audited = run_audit(load_bundle(args.model), args.data, args.out,
                        recipe_settings(args, AuditConfig), console)
    _print_audit(out, audited)
    console.print(f"audit.json, report.html and figures in {args.out}")
    if args.fail_on_finding and audited.passed is False:
        raise AuditFailed(audited.summary_line())
