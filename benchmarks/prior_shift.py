"""Label-shift adaptation under a simulated prevalence change, against no adaptation, in one run.

Scores a run's own validation images (from its split.csv), then for each target prevalence keeps
every image of the minority side and a seeded sample of the other class, and reports the
fixed-threshold result next to the EM-adapted one (Saerens et al. 2002; it uses no labels).
Usage:

    .venv/bin/python benchmarks/prior_shift.py RUN [--prevalences 0.2 0.4 0.74 0.9] [--repeats 10]
"""

import argparse
import statistics
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from pneumoscan.data.loading import load_split
from pneumoscan.evaluation.prior_shift import adapt_to_prior
from pneumoscan.metrics import screening_metrics
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.inference import predict_probabilities


def resample(labels: np.ndarray, prevalence: float, rng: np.random.Generator) -> np.ndarray:
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    n_pos = min(len(positives), round(len(negatives) * prevalence / (1 - prevalence)))
    n_neg = min(len(negatives), round(n_pos * (1 - prevalence) / prevalence))
    return np.concatenate([rng.choice(positives, n_pos, replace=False), rng.choice(negatives, n_neg, replace=False)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a training run folder (bundle + split.csv)")
    parser.add_argument("--prevalences", type=float, nargs="+", default=[0.2, 0.4, 0.74, 0.9])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    console = Console(stderr=True)
    bundle = load_bundle(args.run)
    image_set, _ = load_split(str(args.run / "split.csv"), "val", bundle.preprocess.image_size, console=console)
    probabilities = predict_probabilities(bundle, image_set.images)
    labels = image_set.labels.numpy().astype(int)
    if bundle.manifest.training is None:
        raise SystemExit(f"{args.run}: the bundle has no training record, so its training prior is unknown")
    train_prior, threshold = bundle.manifest.training.calibrated_prior, bundle.manifest.threshold
    table = Table(title=f"{args.run}: validation resampled to each prevalence ({args.repeats} seeds, mean); "
                        f"training prior {train_prior:.3f}, threshold {threshold:.2f}")
    for column in ("prevalence", "images", "estimated", "accuracy", "adapted", "sensitivity", "adapted",
                   "specificity", "adapted"):
        table.add_column(column, justify="right")
    for prevalence in args.prevalences:
        rows: dict[str, list[float]] = {}
        for seed in range(args.repeats):
            index = resample(labels, prevalence, np.random.default_rng(seed))
            estimate, adjusted = adapt_to_prior(probabilities[index], train_prior)
            plain = screening_metrics(labels[index], probabilities[index], threshold)
            adapted = screening_metrics(labels[index], adjusted, threshold)
            for key, value in (("n", len(index)), ("estimate", estimate), *(
                    (f"{k}{suffix}", m.value(k)) for k in ("accuracy", "sensitivity", "specificity")
                    for suffix, m in (("", plain), ("_adapted", adapted)))):
                rows.setdefault(key, []).append(float(value))
        mean = {k: statistics.fmean(v) for k, v in rows.items()}
        table.add_row(f"{prevalence:.2f}", f"{mean['n']:.0f}", f"{mean['estimate']:.3f}",
                      *(f"{mean[k]:.4f}" for k in ("accuracy", "accuracy_adapted", "sensitivity", "sensitivity_adapted",
                                                   "specificity", "specificity_adapted")))
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
