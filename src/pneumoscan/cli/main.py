"""Entry point: parses arguments, runs one job, and turns user mistakes into one-line errors (exit 2)."""

import argparse
import csv
import json
import math
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pneumoscan import __version__
from pneumoscan.atomic import check_output_dir, check_output_file
from pneumoscan.cli.options import add_settings_flags, given_settings
from pneumoscan.config import (
    DEFAULT_LR,
    MAX_IMAGE_SIZE,
    AdaptConfig,
    AuditConfig,
    DemoConfig,
    EvalConfig,
    PretrainConfig,
    TrainConfig,
    check_seed,
)
from pneumoscan.data.registry import list_sources
from pneumoscan.data.synthetic import AGES, SyntheticSource, SyntheticSpec
from pneumoscan.errors import PneumoscanError
from pneumoscan.metrics import METRIC_NAMES, ScreeningMetrics
from pneumoscan.models import list_models
from pneumoscan.settings import option_specs, parse_assignments, resolve

if TYPE_CHECKING:
    from pneumoscan.evaluation.audit import AuditResult
    from pneumoscan.evaluation.side_by_side import SideBySide

DATA_HELP = ("a folder in the Kaggle layout (dataset root or one split), a labels CSV (path,label[,patient,group,"
             "split]; also a run's split.csv), or 'synthetic[:key=value,...]'")


def _add_recipe_options(parser: argparse.ArgumentParser, settings: type | None = None) -> None:
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="a recipe (TOML) setting any of these options, e.g. configs/default-model.toml; "
                             "flags and --set override it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting (repeatable), e.g. --set epochs=3")
    add_settings_flags(parser, settings or TrainConfig)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    return resolve(TrainConfig, args.config, given_settings(args, TrainConfig),
                   parse_assignments(args.set, TrainConfig))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumoscan",
        description="Pneumonia detection in chest X-rays. Research and education only: not a medical device.",
    )
    parser.add_argument("--version", action="version", version=f"pneumoscan {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser("synth", help="write a synthetic dataset in the Kaggle layout",
                                description="Write synthetic radiographs as train|val|test/{NORMAL,PNEUMONIA}/*.png.")
    synth.add_argument("--out", type=Path, required=True, help="folder to create (must not hold a dataset)")
    synth.add_argument("--n-per-class", type=int, default=SyntheticSpec.n_per_class,
                       help="training images per class (test gets a quarter)")
    synth.add_argument("--size", type=int, default=SyntheticSpec.size, help="image side in pixels")
    synth.add_argument("--seed", type=int, default=SyntheticSpec.seed)
    synth.add_argument("--difficulty", type=float, default=SyntheticSpec.difficulty,
                       help="0 (obvious opacities) .. 1 (faint, small)")
    synth.add_argument("--age", choices=AGES, default=SyntheticSpec.age,
                       help="anatomy: child (the training kind) or adult (to test that the guard refuses adults)")

    train = commands.add_parser("train", help="train one model; the run folder is a model bundle",
                                description="Train one model with a patient-grouped validation split. Settings "
                                            "come from the defaults, then --config FILE, then flags and --set.")
    _add_recipe_options(train)
    train.add_argument("--out", type=Path, default=None, help="run folder to write")
    train.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                       help="continue the interrupted run in RUN_DIR from its last checkpoint, with its stored "
                            "settings (give no other settings)")

    study = commands.add_parser(
        "study", help="vary any setting over cells, K seeds each, on equal terms, with paired tests",
        description="Train every combination of the --vary values for K seeds on the same split, the same initial "
                    "weights per seed and the same budget; report mean ± sd, paired t-tests between every two cells "
                    "that differ in one setting, overlaid curves, study.json and study.md. Rerunning the same "
                    "command reuses finished runs.")
    _add_recipe_options(study)
    study.add_argument("--cell", action="append", default=[], metavar="'NAME: KEY=V; KEY=V'",
                       help="a named recipe cell changing several settings at once (repeatable); e.g. --cell 'base:' "
                            "--cell 'reg: mixup=0.2; label_smoothing=0.1'; combined with every --vary value")
    study.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                       help="a setting and its values (repeatable; cells are all combinations): "
                            + ", ".join(spec.name for spec in option_specs(TrainConfig) if spec.name != "seed"))
    study.add_argument("--seeds", type=int, default=3,
                       help="seeds per cell (default 3): --seed, --seed+1, ...; values are split at commas, so a "
                            "varied value cannot contain one")
    study.add_argument("--out", type=Path, required=True)

    compare = commands.add_parser("compare", help="optimizer study (same as: study --vary optimizer=adam,sgd)",
                                  description="Shorthand for `pneumoscan study --vary optimizer=...`.")
    _add_recipe_options(compare)
    compare.add_argument("--optimizers", nargs="+", choices=sorted(DEFAULT_LR), default=["adam", "sgd"])
    compare.add_argument("--seeds", type=int, default=3, help="seeds per optimizer")
    compare.add_argument("--out", type=Path, required=True)

    evaluate = commands.add_parser("evaluate", help="metrics and figures for a model on a labelled folder",
                                   description="Evaluate a model bundle; writes metrics.json, figures, report.html "
                                               "and MODEL_CARD.md.")
    evaluate.add_argument("--model", type=Path, required=True, action="append",
                          help="model bundle folder (a training run folder), or 'default' for the shipped model; "
                               "give it more than once (e.g. a model and its adapted version) for a side-by-side "
                               "report, each model in its own subfolder of --out")
    evaluate.add_argument("--data", required=True, help=DATA_HELP + "; a dataset root is scored on its test/ split")
    add_settings_flags(evaluate, EvalConfig)
    evaluate.add_argument("--out", type=Path, required=True)

    audit = commands.add_parser("audit", help="shortcut audit: does the model read the lungs or the film's framing?",
                                description="Framing and marker swaps with 95 % CIs, metrics per series, subtype and "
                                            "framing quartile, and the Grad-CAM mass on the lung fields, each with a "
                                            "pass/fail rule; writes audit.json, report.html and figures.")
    audit.add_argument("--model", type=Path, default=Path("default"),
                       help="model bundle folder, or 'default' for the shipped model")
    audit.add_argument("--data", required=True, help=DATA_HELP + "; a dataset root is audited on its --split")
    add_settings_flags(audit, AuditConfig)
    audit.add_argument("--out", type=Path, required=True)
    audit.add_argument("--fail-on-finding", action="store_true",
                       help="exit with code 1 when the audit fails (for CI pipelines); default: exit 0 and report")

    predict = commands.add_parser("predict", help="probability and label for image files or folders")
    predict.add_argument("--model", type=Path, default=Path("default"),
                         help="model bundle folder, or 'default' for the model shipped with pneumoscan")
    predict.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    predict.add_argument("--format", choices=["table", "json", "csv"], default="table")
    predict.add_argument("--tta", action="store_true",
                         help="test-time augmentation: average over the image and four mild zoom/shift views")
    predict.add_argument("--strict", action="store_true", help="stop at an unreadable image instead of skipping it")
    predict.add_argument("--explain", type=Path, default=None, metavar="DIR",
                         help="also write each image's Grad-CAM figure (X-ray, heatmap overlay, probability) to DIR")
    predict.add_argument("--target-layer", default=None,
                         help="Grad-CAM layer (a module name); default: the last spatial feature map")
    predict.add_argument("--backend", choices=["torch", "onnx", "tflite"], default="torch",
                         help="score with PyTorch, or with a file made by `pneumoscan export` (give --exported); "
                              "the bundle still supplies the threshold and the out-of-distribution guard")
    predict.add_argument("--exported", type=Path, default=None, metavar="FILE",
                         help="the exported file (.onnx or .tflite) of this --model, for --backend onnx|tflite")

    serve = commands.add_parser(
        "serve", help="the model as a web service and page (FastAPI + uvicorn)",
        description="Serve a model over HTTP: a page at / to drop X-rays on, GET /health, GET /v1/model, POST "
                    "/v1/predict (multipart 'files'), OpenAPI docs at /docs. Research tool, not a diagnosis.")
    serve.add_argument("--model", type=Path, default=Path("default"), help="model bundle folder, or 'default'")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted file, in MB")
    serve.add_argument("--max-wait-ms", type=float, default=5.0,
                       help="micro-batching: how long a request waits for others to share its batch")
    serve.add_argument("--max-queue", type=int, default=256, help="images waiting before answering 503")
    serve.add_argument("--exported", type=Path, default=None, metavar="FILE",
                       help="score with this --model's exported .onnx (ONNX Runtime, faster on a CPU) or .tflite file "
                            "instead of PyTorch; the guard and Grad-CAM still use the bundle")

    export = commands.add_parser(
        "export", help="export a model for mobile/edge runtimes (ONNX, INT8 ONNX), with a parity check",
        description="Write the bundle (preprocessing included) as one ONNX file, or an INT8-quantised one calibrated "
                    "on sample images; score the sample images with PyTorch and the exported file and write the "
                    "comparison and the input contract beside it as <file>.json.")
    export.add_argument("--model", type=Path, default=Path("default"), help="model bundle folder, or 'default'")
    export.add_argument("--format", required=True, choices=["onnx", "onnx-int8", "tflite"],
                        help="tflite needs the optional extra pneumoscan[tflite]")
    export.add_argument("--data", required=True,
                        help=DATA_HELP + "; sample images for the parity check and INT8 calibration (use validation "
                                         "images, e.g. a run's split.csv with --split val)")
    export.add_argument("--split", default="val", help="split of --data to sample (default val)")
    export.add_argument("--n-images", type=int, default=200, help="sample images (parity check, calibration)")
    export.add_argument("--out", type=Path, required=True, help="file to write, e.g. model.onnx")

    pretrain = commands.add_parser(
        "pretrain", help="self-supervised pre-training (SimCLR) of a backbone on training images, no labels",
        description="Pre-train an architecture's backbone on the training side of the patient-grouped carve without "
                    "reading a label; writes backbone.safetensors for `train --weights`, pretrain.json and "
                    "pretrain_curve.png.")
    _add_recipe_options(pretrain, PretrainConfig)
    pretrain.add_argument("--out", type=Path, required=True, help="folder to write")

    ensemble = commands.add_parser(
        "ensemble", help="combine trained bundles into one ensemble bundle, validated like a run",
        description="Average the probabilities of two or more trained models (any architectures, input sizes and "
                    "preprocessing) validated on the same split. The result is one bundle every command reads; its "
                    "threshold, guard and validation record are computed on that split.")
    ensemble.add_argument("members", nargs="+", type=Path, metavar="BUNDLE", help="member bundle folders (2 or more)")
    ensemble.add_argument("--out", type=Path, required=True, help="folder of the ensemble bundle")

    adapt = commands.add_parser(
        "adapt", help="adapt a model to a site's own images, without labels",
        description="Re-estimate the model's BatchNorm statistics on a folder of one site's images (labels are never "
                    "read), optionally run TENT and estimate the site's prevalence, refit the out-of-distribution "
                    "guard and the drift reference, and write a new bundle that records all of it.")
    adapt.add_argument("--model", type=Path, required=True, help="model bundle folder, or 'default'")
    adapt.add_argument("--data", type=Path, required=True,
                       help="folder of the site's images (searched recursively; folder names are ignored)")
    add_settings_flags(adapt, AdaptConfig)
    adapt.add_argument("--out", type=Path, required=True, help="folder of the adapted bundle")

    monitor = commands.add_parser(
        "monitor", help="simulated deployment weeks with injected drift and a label-free drift alarm",
        description="Stream a labelled split as weeks, optionally inject drift from a week on, and flag weeks whose "
                    "inputs or scores differ from the model's validation reference (no labels needed for the flag).")
    monitor.add_argument("--model", type=Path, default=Path("default"),
                         help="model bundle folder, or 'default' for the model shipped with pneumoscan")
    monitor.add_argument("--data", required=True, help=DATA_HELP)
    monitor.add_argument("--split", default="test", help="split of a dataset root to stream (default test)")
    monitor.add_argument("--weeks", type=int, default=8)
    monitor.add_argument("--drift", action="append", default=[], metavar="NAME:STRENGTH",
                         help="drift to inject (repeatable): exposure:S, contrast:S, noise:S, resolution:S, "
                              "prevalence:P")
    monitor.add_argument("--drift-from-week", type=int, default=None,
                         help="first drifted week (default: the middle week)")
    monitor.add_argument("--alpha", type=float, default=0.01, help="alarm level of the weekly drift test")
    monitor.add_argument("--seed", type=int, default=0, help="arrival order and injected noise")
    monitor.add_argument("--strict", action="store_true", help="stop at an unreadable image instead of skipping it")
    monitor.add_argument("--out", type=Path, required=True)

    explain = commands.add_parser("explain", help="Grad-CAM evidence for each image: X-ray, overlay, probability")
    explain.add_argument("--model", type=Path, default=Path("default"),
                         help="model bundle folder, or 'default' for the model shipped with pneumoscan")
    explain.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    explain.add_argument("--out", type=Path, required=True, help="folder for the <name>.gradcam.png figures")
    explain.add_argument("--target-layer", default=None,
                         help="Grad-CAM layer (a module name); default: the last spatial feature map")
    explain.add_argument("--strict", action="store_true", help="stop at an unreadable image instead of skipping it")

    demo = commands.add_parser("demo", help="synth -> optimizer study (adam vs sgd) -> evaluate -> all figures",
                               description="Run the whole pipeline on a synthetic dataset (about three minutes on "
                                           "2 cores).")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    add_settings_flags(demo, DemoConfig)

    commands.add_parser("models", help="list the architectures and data sources")
    return parser


def _print_metrics(console: Console, title: str, metrics: ScreeningMetrics,
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


def _print_side_by_side(console: Console, side: "SideBySide") -> None:
    table = Table("metric", *side.names, title="side by side, same images (95 % CI in comparison.md)")
    for name in (*METRIC_NAMES, "threshold"):
        values = [result.metrics.point.threshold if name == "threshold" else result.metrics.point.value(name)
                  for result in side.results]
        table.add_row(name, *("n/a" if v is None else f"{v:.4f}" for v in values))
    console.print(table)
    for name, adaptation in zip(side.names, side.adaptations, strict=True):
        console.print(f"{name}: {adaptation}", highlight=False, soft_wrap=True)


class AuditFailed(Exception):
    """`audit --fail-on-finding` found a shortcut: exit code 1 (the audit ran; 2 stays for usage errors)."""


def _print_audit(out: Console, result: "AuditResult") -> None:
    table = Table(title=f"shortcut audit of {result.model} on {result.data.source} [{result.data.split}]: "
                        f"{result.verdict.upper()}")
    for column in ("check", "answer", "finding"):
        table.add_column(column, overflow="fold")
    for check in result.checks:
        answer = "n/a" if check.passed is None else "pass" if check.passed else "[red]FAIL[/]"
        table.add_row(check.name, answer, escape(check.finding))
    out.print(table)


def _check_outputs(args: argparse.Namespace) -> None:
    """Every folder (or, for export, file) a command writes is checked before it loads, decodes or trains anything,
    so an unwritable --out fails in a second with one line. `train` checks its own in its branch (--resume)."""
    if args.command == "export":
        check_output_file(args.out)
    elif args.command == "predict":
        if args.explain is not None:
            check_output_dir(args.explain)
    elif args.command != "train" and getattr(args, "out", None) is not None:
        check_output_dir(args.out)


def _run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    _check_outputs(args)
    if args.command == "synth":
        check_seed("--seed", args.seed)
        if args.size > MAX_IMAGE_SIZE:
            raise PneumoscanError(f"--size must be 32 to {MAX_IMAGE_SIZE} pixels, got {args.size}")
        count = SyntheticSource(SyntheticSpec(n_per_class=args.n_per_class, size=args.size, seed=args.seed,
                                              difficulty=args.difficulty, age=args.age)).write(args.out)
        console.print(f"wrote {count} images to {args.out}")
    elif args.command == "train":
        from pneumoscan.pipeline.run import run_training
        from pneumoscan.training.prepare import prepare_data

        if (args.out is None) == (args.resume is None):
            raise PneumoscanError("train: give --out RUN_DIR for a new run, or --resume RUN_DIR to continue one")
        if args.resume is not None:
            from pneumoscan.pipeline.run import resume_config

            if args.config or args.set or given_settings(args, TrainConfig):
                raise PneumoscanError("--resume continues with the run's stored settings; give no other settings")
            config, out_dir = resume_config(args.resume), args.resume
        else:
            config, out_dir = _train_config(args), args.out
        check_output_dir(out_dir)  # before the images are decoded
        prepared = prepare_data(config, console)
        summary = prepared.summary
        console.print(f"train: {summary.train} | validation: {summary.val} ({summary.validation})",
                      highlight=False, soft_wrap=True)
        result = run_training(config, out_dir, console, command=command, data=prepared,
                              resume=args.resume is not None)
        if result is not None:  # rank 0 (the only process unless launched by torchrun)
            _print_metrics(console, f"validation metrics (best epoch {result.best_epoch})", result.validation.metrics)
            console.print(f"model bundle and run files in {out_dir}")
    elif args.command in ("study", "compare"):
        from pneumoscan.pipeline.study import NamedCell, Variation, run_study

        variations = ([Variation.parse(text) for text in args.vary] if args.command == "study"
                      else [Variation("optimizer", tuple(dict.fromkeys(args.optimizers)))])
        named = [NamedCell.parse(text) for text in args.cell] if args.command == "study" else []
        if args.command == "study" and not variations and not named:
            raise PneumoscanError("study: give --vary KEY=V1,V2 and/or --cell recipes (one cell measures its "
                                  "spread over seeds)")
        base = _train_config(args)
        if args.command == "compare":
            base = replace(base, optimizer=variations[0].values[0])
            if len(variations[0].values) < 2:
                variations = []
        result = run_study(base, variations, args.seeds, args.out, console, command=command, cells=named)
        console.print(f"study in {args.out} (study.json, study.md, study.csv, study_curves.png); "
                      f"lowest validation loss: {result.best_run}")
    elif args.command == "evaluate":
        from pneumoscan.evaluation.evaluate import evaluate
        from pneumoscan.models.bundle import load_bundle

        config = resolve(EvalConfig, None, given_settings(args, EvalConfig))
        if len(args.model) > 1:
            from pneumoscan.evaluation.side_by_side import evaluate_side_by_side

            side = evaluate_side_by_side([load_bundle(path) for path in args.model], args.data, args.out, config,
                                         console)
            _print_side_by_side(console, side)
            console.print(f"comparison.json, comparison.md and one evaluation folder per model in {args.out}")
            return
        result = evaluate(load_bundle(args.model[0]), args.data, args.out, config, console)
        _print_metrics(console, f"{result.data.source} [{result.data.split}]", result.metrics.point,
                       result.metrics.ci95)
        if result.prior_adapted is not None:
            adapted = result.prior_adapted
            _print_metrics(console, f"label-shift adapted, NO labels used: estimated prevalence "
                                    f"{adapted.estimated_prevalence:.3f} (training {adapted.training_prior:.3f})",
                           adapted.metrics)
        console.print(f"metrics.json, report and figures in {args.out}")
    elif args.command == "audit":
        from pneumoscan.models.bundle import load_bundle
        from pneumoscan.pipeline.audit import run_audit

        audited = run_audit(load_bundle(args.model), args.data, args.out,
                            resolve(AuditConfig, None, given_settings(args, AuditConfig)), console)
        _print_audit(out, audited)
        console.print(f"audit.json, report.html and figures in {args.out}")
        if args.fail_on_finding and audited.passed is False:
            raise AuditFailed(audited.summary_line())
    elif args.command == "pretrain":
        from pneumoscan.pipeline.pretrain import run_pretraining

        settings = resolve(PretrainConfig, args.config, given_settings(args, PretrainConfig),
                           parse_assignments(args.set, PretrainConfig))
        run_pretraining(settings, args.out, console, command=command)
    elif args.command == "ensemble":
        from pneumoscan.pipeline.ensemble import build_ensemble

        built = build_ensemble(args.members, args.out, console, command=command)
        _print_metrics(console, f"ensemble of {len(built.members)}: validation", built.validation.metrics)
    elif args.command == "adapt":
        from pneumoscan.pipeline.adapt import adapt_bundle

        adapt_config = resolve(AdaptConfig, None, given_settings(args, AdaptConfig))
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
            table.add_row("calls flipped by framing swaps", f"{adapted.framing_flips_before:.1%} → "
                                                             f"{adapted.framing_flips_after:.1%}")
        if adapted.fallback:
            table.add_row("fallback", adapted.fallback)
        console.print(table)
    elif args.command == "monitor":
        from pneumoscan.evaluation.monitoring import Drift, run_monitor
        from pneumoscan.models.bundle import load_bundle

        if args.weeks < 1 or not 0.0 < args.alpha < 1.0:
            raise PneumoscanError(f"--weeks must be at least 1 and --alpha in (0, 1), got {args.weeks} and "
                                  f"{args.alpha}")
        if args.drift_from_week is not None and not 1 <= args.drift_from_week <= args.weeks:
            raise PneumoscanError(f"--drift-from-week must be a week from 1 to --weeks ({args.weeks}), got "
                                  f"{args.drift_from_week}")
        check_seed("--seed", args.seed)
        drifts = [Drift.parse(text) for text in args.drift]
        drift_from = args.weeks // 2 + 1 if args.drift_from_week is None else args.drift_from_week
        run = run_monitor(load_bundle(args.model), args.data, args.split, args.out, console, weeks=args.weeks,
                          drifts=drifts, drift_from=drift_from,
                          alpha=args.alpha, seed=args.seed, strict=args.strict)
        simulation = run.simulation
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
    elif args.command in ("predict", "explain"):
        from pneumoscan.models.bundle import load_bundle
        from pneumoscan.serving.predict import load_inputs, predict_images

        bundle = load_bundle(args.model)
        backend = None
        if getattr(args, "backend", "torch") != "torch":
            from pneumoscan.serving.export import OnnxBackend, TfliteBackend

            if args.exported is None:
                raise PneumoscanError(f"--backend {args.backend} needs --exported FILE (made by `pneumoscan export`)")
            if args.tta:
                raise PneumoscanError("--tta runs with the PyTorch backend only")
            backend = (TfliteBackend if args.backend == "tflite" else OnnxBackend)(args.exported)
        files, images = load_inputs(bundle, args.paths, strict=args.strict, console=console)
        predictions = predict_images(bundle, files, images, tta=getattr(args, "tta", False), backend=backend)
        explain_dir = args.out if args.command == "explain" else args.explain
        if explain_dir is not None:
            from pneumoscan.serving.explain import write_explanations

            written = write_explanations(bundle, predictions, images, explain_dir, target_layer=args.target_layer)
            console.print(f"{len(written)} Grad-CAM figure(s) in {explain_dir}")
        if args.command == "explain" or args.format == "table":
            table = Table("file", "P(pneumonia)", "label", "looks like a chest X-ray")
            for p in predictions:
                looks = {None: "unknown (no guard)", True: "yes", False: "[bold red]NO: do not trust the label[/]"}
                table.add_row(escape(p.file), f"{p.probability:.4f}", p.label, looks[p.in_distribution])
            out.print(table)
        elif args.format == "json":
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
    elif args.command == "serve":
        import logging

        import uvicorn

        from pneumoscan.models.bundle import load_bundle
        from pneumoscan.serving.service import ServiceConfig, create_app

        if not (0 < args.port < 65536 and 0 < args.max_upload_mb < math.inf and args.max_queue >= 1
                and 0 <= args.max_wait_ms < math.inf):
            raise PneumoscanError("--port must be 1-65535, --max-upload-mb a positive number, --max-queue at least 1 "
                                  f"and --max-wait-ms a number at least 0; got {args.port}, {args.max_upload_mb}, "
                                  f"{args.max_queue} and {args.max_wait_ms}")
        bundle = load_bundle(args.model)
        config = ServiceConfig(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_wait_ms=args.max_wait_ms,
                               max_queue=args.max_queue)
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        backend = None
        if args.exported is not None:
            from pneumoscan.serving.export import backend_for

            backend = backend_for(args.exported)
        app = create_app(bundle, name=str(args.model), config=config, backend=backend)
        console.print(f"serving {args.model} on http://{args.host}:{args.port}/ (API docs at /docs); Ctrl-C stops",
                      highlight=False, soft_wrap=True)
        uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")
    elif args.command == "export":
        from pneumoscan.data.loading import load_split
        from pneumoscan.models.bundle import load_bundle
        from pneumoscan.serving.export import export_bundle

        if args.n_images < 16:
            raise PneumoscanError(f"--n-images must be at least 16, got {args.n_images}")
        if args.out.is_dir():
            raise PneumoscanError(f"{args.out}: is a folder; give the file to write, e.g. {args.out / 'model.onnx'}")
        bundle = load_bundle(args.model)
        samples, _ = load_split(args.data, args.split, bundle.preprocess.image_size, console=console)
        pick = np.random.default_rng(0).permutation(len(samples))[: args.n_images]
        report = export_bundle(bundle, args.format, args.out, samples.images[np.sort(pick)])
        console.print(f"{args.format}: {args.out} ({args.out.stat().st_size / 1e6:.1f} MB); parity on "
                      f"{report.n_images} {args.split} images: max |Δp| {report.max_abs_diff:.2e}, labels agree "
                      f"{report.label_agreement:.1%}; details in {args.out}.json", highlight=False, soft_wrap=True)
    elif args.command == "demo":
        from pneumoscan.pipeline.demo import run_demo

        result = run_demo(args.out, resolve(DemoConfig, None, given_settings(args, DemoConfig)), console,
                          command=command)
        table = Table("run", "accuracy", "sensitivity", "specificity", "ROC AUC", "images",
                      title="held-out synthetic test split (threshold 0.5)")
        for name, evaluation in result.evaluations.items():
            point = evaluation.metrics.point
            table.add_row(name, *("n/a" if v is None else f"{v:.4f}" for v in (point.accuracy, point.sensitivity,
                                                                               point.specificity, point.roc_auc)),
                          str(point.n_images))
        console.print(table)
        console.print(
            f"\n[bold]done.[/] Everything is in {args.out}:\n"
            "  data/                     synthetic dataset (Kaggle layout)\n"
            "  study/                    optimizer study: study.md, study.json, study_curves.png, a bundle per run\n"
            "  evaluation/<run>/         report.html (open in a browser), MODEL_CARD.md, metrics.json with 95 % CIs,\n"
            "                            confusion, ROC, PR, reliability, threshold, Grad-CAM, monitoring and\n"
            "                            architecture figures, classification_report.txt, predictions.csv\n"
            "  temporal_performance.png  weekly view of every model\n"
            f"  best model (lowest validation loss): {result.study.best_run}", highlight=False)
    elif args.command == "models":
        console.print("architectures: " + ", ".join(list_models()))
        console.print("data sources:  " + "; ".join(list_sources()))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # Logs and CI capture output without a terminal; rich would wrap them at 80 columns.
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
    out = Console(width=None if sys.stdout.isatty() else 120)
    command = "pneumoscan " + shlex.join(argv)
    errors = console
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports progress (errors still show)
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
