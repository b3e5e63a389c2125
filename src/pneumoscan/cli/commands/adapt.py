"""`pneumoscan adapt`: a bundle adapted to one site's own images, without their labels."""

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pneumoscan.cli.common import add_model_option, add_recipe_options, recipe_settings
from pneumoscan.config import AdaptConfig

HELP = "adapt a model to a site's own images, without labels"


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "adapt", help=HELP,
        description="Re-estimate the model's BatchNorm statistics on a folder of one site's images (labels are never "
                    "read), optionally self-train or run TENT and estimate the site's prevalence, refit the "
                    "out-of-distribution guard and the drift reference, and write a new bundle that records all of "
                    "it.")
    add_model_option(parser)
    parser.add_argument("--data", type=Path, required=True,
                        help="folder of the site's images (searched recursively; folder names are ignored)")
    add_recipe_options(parser, AdaptConfig)
    parser.add_argument("--out", type=Path, required=True, help="folder of the adapted bundle")


def run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    from pneumoscan.pipeline.adapt import adapt_bundle

    adapt_config = recipe_settings(args, AdaptConfig)
    adapted = adapt_bundle(args.model, args.data, args.out, adapt_config, console).record
    table = Table("adapted", "value")
    table.add_row("images (skipped)", f"{adapted.images} ({adapted.skipped_files or adapted.skipped})")
    table.add_row("methods", ", ".join(adapted.methods))
    table.add_row("BatchNorm layers re-estimated", str(adapted.batchnorm_layers))
    if adapted.ood_share_before is not None:
        table.add_row("flagged out of distribution before", f"{adapted.ood_share_before:.1%}")
    if adapted.estimated_prevalence is not None:
        table.add_row("pneumonia prevalence (training → site estimate)",
                      f"{adapted.training_prevalence:.3f} → {adapted.estimated_prevalence:.3f}")
    table.add_row("threshold", f"{adapted.threshold_before:.4f} → {adapted.threshold_after:.4f}")
    if adapted.site_prevalence is not None:
        table.add_row("site prevalence self-training aimed at", f"{adapted.site_prevalence:.3f}")
    if adapted.framing_flips_before is not None and adapted.framing_flips_after is not None:
        table.add_row("calls flipped by framing swaps",
                      f"{adapted.framing_flips_before:.1%} → {adapted.framing_flips_after:.1%}")
    if adapted.fallback:
        table.add_row("fallback", adapted.fallback)
    console.print(table)
