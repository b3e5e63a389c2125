"""`pneumoscan export`: the bundle as an ONNX, INT8 ONNX or TFLite file, checked against PyTorch."""

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console

from pneumoscan.atomic import check_output_file
from pneumoscan.cli.common import DATA_HELP, add_model_option, add_recipe_options, recipe_settings
from pneumoscan.cli.options import DeprecatedAlias
from pneumoscan.config import ExportConfig
from pneumoscan.errors import PneumoscanError

ARTIFACTS = ("onnx", "onnx-int8", "tflite")
HELP = "export a model for mobile/edge runtimes (ONNX, INT8 ONNX), with a parity check"


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export", help=HELP,
        description="Write the bundle (preprocessing included) as one ONNX file, or an INT8-quantised one calibrated "
                    "on sample images; score the sample images with PyTorch and the exported file and write the "
                    "comparison and the input contract beside it as <file>.json.")
    add_model_option(parser)
    parser.add_argument("--to", default=None, choices=ARTIFACTS,
                        help="the kind of file to write (tflite needs the optional extra pneumoscan[tflite])")
    parser.add_argument("--format", dest="to", choices=ARTIFACTS, action=DeprecatedAlias, new="--to")
    parser.add_argument("--data", default=None,
                        help=DATA_HELP + "; sample images for the parity check and INT8 calibration (use validation "
                                         "images, e.g. a run's split.csv with --split val); without it the parity "
                                         "check runs on built-in synthetic films (numerics, not accuracy) and INT8 "
                                         "is refused")
    add_recipe_options(parser, ExportConfig)
    parser.add_argument("--out", type=Path, required=True, help="file to write, e.g. model.onnx")


def outputs(args: argparse.Namespace) -> None:
    check_output_file(args.out)


def run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    from pneumoscan.data.loading import load_split
    from pneumoscan.models.bundle import load_bundle
    from pneumoscan.serving.export import BUILT_IN_SAMPLE, built_in_sample, export_bundle

    settings = recipe_settings(args, ExportConfig)
    if args.to is None:
        raise PneumoscanError(f"export: give the kind of file to write, --to {'|'.join(ARTIFACTS)}")
    if args.out.is_dir():
        raise PneumoscanError(f"{args.out}: is a folder; give the file to write, e.g. {args.out / 'model.onnx'}")
    bundle = load_bundle(args.model)
    if args.data is None:
        if args.to == "onnx-int8":
            raise PneumoscanError("export --to onnx-int8 calibrates on real films: give --data (e.g. a run's "
                                  "split.csv with --split val)")
        images, sample = built_in_sample(bundle.preprocess.image_size, settings.n_images), BUILT_IN_SAMPLE
    else:
        samples, _ = load_split(args.data, settings.split, bundle.preprocess.image_size, console=console)
        pick = np.random.default_rng(0).permutation(len(samples))[: settings.n_images]
        images, sample = samples.images[np.sort(pick)], f"{len(pick)} films of {args.data} [{settings.split}]"
    report = export_bundle(bundle, args.to, args.out, images, sample=sample)
    console.print(f"{args.to}: {args.out} ({args.out.stat().st_size / 1e6:.1f} MB); parity on "
                  f"{report.n_images} sample images: max |Δp| {report.max_abs_diff:.2e}, labels agree "
                  f"{report.label_agreement:.1%}; details in {args.out}.json", highlight=False, soft_wrap=True)
