"""How do models and thresholds hold up when the images change the way they do between sites?

Re-scores one validation split under named perturbations (pneumoscan.data.drift: exposure,
contrast, noise, resolution) and prints, per model and per condition, accuracy, sensitivity,
specificity and AUC at the fixed 0.5 threshold, at the `balanced` threshold (the model's training
prevalence) and at the model's stored threshold. With several models it adds their mean
probability (an ensemble) as one more row. Labels are never changed, and nothing here is chosen
on the official test split. Usage:

    .venv/bin/python benchmarks/shift_robustness.py --model RUN [RUN ...] --data RUN/split.csv [--split val]
"""

import argparse
import statistics

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from pneumoscan.data.drift import Perturbation
from pneumoscan.data.loading import load_split
from pneumoscan.metrics import screening_metrics
from pneumoscan.models.bundle import Bundle, load_bundle
from pneumoscan.models.inference import predict_probabilities

CONDITIONS = ("clean", "exposure:0.4", "exposure:-0.4", "contrast:0.4", "contrast:-0.4", "noise:0.06",
              "resolution:0.6")


def scores(bundle: Bundle, images: torch.Tensor) -> dict[str, np.ndarray]:
    pixels = images.float().div(255.0)
    return {condition: predict_probabilities(bundle, pixels if condition == "clean"
                                             else Perturbation.parse(condition)(pixels, seed=index))
            for index, condition in enumerate(CONDITIONS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", required=True, help="bundles (run folders) to compare")
    parser.add_argument("--data", required=True, help="a run's split.csv (or any data spec)")
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    console = Console(stderr=True)
    bundles = {name: load_bundle(name) for name in args.model}
    sizes = {b.preprocess.image_size for b in bundles.values()}
    if len(sizes) != 1:
        raise SystemExit(f"models disagree on input size ({sorted(sizes)}); compare one size at a time")
    image_set, _ = load_split(args.data, args.split, sizes.pop(), console=console)
    labels = image_set.labels.numpy()
    results = {name: scores(bundle, image_set.images) for name, bundle in bundles.items()}
    thresholds = {name: {"0.5": 0.5, "balanced": b.manifest.training.calibrated_prior if b.manifest.training else 0.5,
                         "stored": b.manifest.threshold} for name, b in bundles.items()}
    if len(bundles) > 1:
        name = f"mean of {len(bundles)}"
        results[name] = {c: np.mean([results[m][c] for m in bundles], axis=0) for c in CONDITIONS}
        thresholds[name] = {k: statistics.fmean(thresholds[m][k] for m in bundles) for k in ("0.5", "balanced",
                                                                                               "stored")}
    table = Table(title=f"{args.data} [{args.split}]: {len(labels)} images, {int(labels.sum())} pneumonia; "
                        "acc / sens / spec at each threshold")
    for column in ("model", "condition", "AUC", "@0.5", "@balanced", "@stored"):
        table.add_column(column, justify="left" if column in ("model", "condition") else "right")
    for name, by_condition in results.items():
        summary: dict[str, list[float]] = {}
        for condition in CONDITIONS:
            row = [name, condition, f"{screening_metrics(labels, by_condition[condition], 0.5).roc_auc:.4f}"]
            for key, threshold in thresholds[name].items():
                m = screening_metrics(labels, by_condition[condition], threshold)
                row.append(f"{m.accuracy:.3f} / {m.sensitivity:.3f} / {m.specificity:.3f}")
                if condition != "clean":
                    for metric in ("accuracy", "sensitivity", "specificity"):
                        summary.setdefault(f"{key}/{metric}", []).append(m.value(metric))
            table.add_row(*row)
        table.add_row(name, "mean of shifted", "",
                      *(" / ".join(f"{statistics.fmean(summary[f'{k}/{m}']):.3f}"
                                   for m in ("accuracy", "sensitivity", "specificity"))
                        for k in ("0.5", "balanced", "stored")), end_section=True)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
