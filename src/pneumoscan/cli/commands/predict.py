"""`pneumoscan predict` (probability, label and the out-of-distribution flag per image) and `explain` (Grad-CAM
figures per image): both score image files or folders the same way."""

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pneumoscan.atomic import check_output_dir, check_output_file
from pneumoscan.cli.common import (
    add_engine_option,
    add_model_option,
    add_recipe_options,
    engine_for,
    recipe_settings,
    scoring_ranks,
)
from pneumoscan.cli.options import DeprecatedAlias
from pneumoscan.config import PredictConfig
from pneumoscan.errors import PneumoscanError

HELP = "probability and label for image files or folders"
EXPLAIN_HELP = "Grad-CAM evidence for each image: X-ray, overlay, probability"


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("predict", help=HELP)
    add_model_option(parser)
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    parser.add_argument("--explain", type=Path, default=None, metavar="DIR",
                        help="also write each image's Grad-CAM figure (X-ray, heatmap overlay, probability) to DIR")
    add_recipe_options(parser, PredictConfig)
    add_engine_option(parser)
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help="write the rows to FILE (.csv or .jsonl, with each film's sha256) a batch at a time as "
                             "they are scored, instead of to stdout: for folders of any size; under torchrun the "
                             "ranks share the films")
    parser.add_argument("--resume", action="store_true",
                        help="with --out: keep FILE's rows and score only the films it lacks (or whose bytes "
                             "changed); without it an existing FILE is refused")
    parser.add_argument("--backend", dest="engine", choices=["auto", "torch", "onnx", "tflite"], action=DeprecatedAlias,
                        new="--engine")


def add_explain(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("explain", help=EXPLAIN_HELP)
    add_model_option(parser)
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    parser.add_argument("--out", type=Path, required=True, help="folder for the <name>.gradcam.png figures")
    add_recipe_options(parser, PredictConfig)


def outputs(args: argparse.Namespace) -> None:
    """`predict` writes with --explain (a folder) or --out (a rows file); `explain` writes --out (a folder)."""
    folder = args.out if args.command == "explain" else args.explain
    if folder is not None:
        check_output_dir(folder)
    if args.command != "predict":
        return
    if args.out is None:
        if args.resume:
            raise PneumoscanError("--resume goes with --out FILE (the rows file to resume)")
        return
    from pneumoscan.serving.rowfile import row_format

    if args.explain is not None:
        raise PneumoscanError("--explain draws from films held in memory; leave it out with --out (use `explain` on "
                              "the films to look at)")
    row_format(args.out)
    check_output_file(args.out)


def _write_rows(predictions: list, fmt: str, out: Console) -> None:  # type: ignore[type-arg]
    if fmt == "table":
        engines = sorted({p.engine for p in predictions})
        table = Table("file", "P(pneumonia)", "label", "looks like a chest X-ray",
                      caption=f"scored with {', '.join(engines)}")
        looks = {None: "unknown (no guard)", True: "yes", False: "[bold red]NO: do not trust the label[/]"}
        for p in predictions:
            table.add_row(escape(p.file), f"{p.probability:.4f}", p.label, looks[p.in_distribution])
        out.print(table)
    elif fmt == "json":
        # strict JSON: a non-finite number becomes null (json.dumps would write NaN, which is not JSON)
        rows = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in p.__dict__.items()}
                for p in predictions]
        sys.stdout.write(json.dumps(rows, indent=2, allow_nan=False) + "\n")
    else:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["file", "probability", "label", "in_distribution", "ood_score"])
        writer.writerows([p.file, f"{p.probability:.6f}", p.label, "" if p.in_distribution is None
                          else str(p.in_distribution).lower(), "" if p.ood_score is None else f"{p.ood_score:.3f}"]
                         for p in predictions)


def run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    """Both `predict` and `explain` (args.command says which). Scoring through ONNX Runtime imports no torch;
    Grad-CAM figures need PyTorch and load the bundle's network for them."""
    from pneumoscan.serving.predict import load_inputs, predict_images

    settings = recipe_settings(args, PredictConfig)
    engine = engine_for(args, console, tta=settings.tta) if args.command == "predict" else _torch_engine(args)
    if args.command == "predict" and args.out is not None:
        _predict_to_file(args, engine, settings, console)
        return
    files, images = load_inputs(engine.manifest.preprocess.image_size, args.paths, strict=settings.strict,
                                console=console)
    predictions = predict_images(engine, files, images)
    explain_dir = args.out if args.command == "explain" else args.explain
    if explain_dir is not None:
        import torch

        from pneumoscan.serving.explain import write_explanations

        bundle = engine.torch_bundle()
        written = write_explanations(bundle, predictions, torch.from_numpy(images), explain_dir,
                                     target_layer=settings.target_layer)
        console.print(f"{len(written)} Grad-CAM figure(s) in {explain_dir}")
    _write_rows(predictions, "table" if args.command == "explain" else settings.format, out)


def _predict_to_file(args: argparse.Namespace, engine: object, settings: PredictConfig, console: Console) -> None:
    """`predict --out FILE [--resume]`: a batch at a time into the rows file, shared by torchrun's ranks."""
    from pneumoscan.serving.archive import score_archive
    from pneumoscan.serving.predict import collect_images

    files = collect_images(args.paths)
    if not files:
        raise PneumoscanError("no image files (.jpeg, .jpg, .png, .dcm, .dicom) found in the given paths")
    with scoring_ranks() as ranks:
        done = score_archive(engine, files, args.out, resume=args.resume, strict=settings.strict, console=console,
                             ranks=ranks, batch_size=settings.batch_size)
    console.print(f"{done.rows} row(s) in {escape(str(args.out))}: {done.scored} film(s) scored now, "
                  f"{done.reused} already there, {done.unreadable} unreadable (recorded with the reason)"
                  + (f", {done.unhashed} could not be read at all (no row; tried again by --resume)"
                     if done.unhashed else ""), highlight=False, soft_wrap=True)


def _torch_engine(args: argparse.Namespace) -> object:
    """`explain` scores with PyTorch: the Grad-CAM figures come from the same network and forward pass."""
    from pneumoscan.serving.torch_engine import torch_engine

    return torch_engine(args.model, tta=recipe_settings(args, PredictConfig).tta)
