"""Which threshold policy holds up on patients it was not chosen on? Cross-fitted on validation.

Takes the predictions.csv that `pneumoscan evaluate --model RUN --data RUN/split.csv --split val --out DIR` writes,
splits those validation patients into two halves (grouped by patient, stratified, seeded),
chooses each policy's threshold on one half and scores it on the other, both ways round, over
several seeds. The fixed 0.5 threshold is the baseline in the same table. Usage:

    .venv/bin/python benchmarks/threshold_policies.py RUN_EVAL/predictions.csv --model RUN [--repeats 20]

--model is the bundle that made the predictions: `balanced` reads its training prevalence.
"""

import argparse
import csv
import statistics
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.model_selection import StratifiedGroupKFold

from pneumoscan.metrics import ThresholdPolicy, screening_metrics
from pneumoscan.models.bundle import load_bundle

POLICIES = ("fixed:0.5", "balanced", "youden", "sensitivity:0.95", "sensitivity:0.97", "sensitivity:0.98")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", type=Path)
    parser.add_argument("--model", default="default", help="the bundle that made the predictions")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    training = load_bundle(args.model).manifest.training
    if training is None:
        raise SystemExit(f"{args.model}: the bundle has no training record, so its training prior is unknown")
    prior = training.calibrated_prior
    rows = list(csv.DictReader(args.predictions.open()))
    labels = np.array([int(r["label"] == "PNEUMONIA") for r in rows])
    probabilities = np.array([float(r["probability"]) for r in rows])
    patients = np.array([r["patient"] for r in rows])
    scores: dict[str, dict[str, list[float]]] = {p: {"accuracy": [], "sensitivity": [], "specificity": [],
                                                     "threshold": []} for p in POLICIES}
    for seed in range(args.repeats):
        halves = StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=seed)
        for choose, report in halves.split(probabilities, labels, patients):
            for name in POLICIES:
                threshold = ThresholdPolicy.parse(name).choose(labels[choose], probabilities[choose], prior)
                metrics = screening_metrics(labels[report], probabilities[report], threshold)
                for key in ("accuracy", "sensitivity", "specificity"):
                    scores[name][key].append(metrics.value(key))
                scores[name]["threshold"].append(threshold)
    table = Table(title=f"{args.predictions}: thresholds chosen on half the validation patients, scored on "
                        f"the other half ({args.repeats} seeds x 2 folds; mean ± sd)")
    for column in ("policy", "threshold", "accuracy", "sensitivity", "specificity"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, values in scores.items():
        table.add_row(name, *(f"{statistics.fmean(values[k]):.3f} ± {statistics.stdev(values[k]):.3f}"
                              for k in ("threshold", "accuracy", "sensitivity", "specificity")))
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
