"""Score every run of a framing study on the framing-swap proxy, add each cell's ensemble of its seeds, write
the search table and apply the decision rule of studies/framing/README.md (fixed before the search ran).

    python studies/framing/score_runs.py RUNS_DIR [--out studies/framing]

RUNS_DIR is the output folder of a `pneumoscan study` (cell folders holding seed folders with model.json). Each run's
validation films are read back from its split.csv; its validation metrics are checked against the bundle's
record; the proxy is scored as `train` scores it now (runs trained before the proxy existed lack it in their
record). Writes search.csv (one row per run and per cell ensemble), search.md (the table, mean ± sd over
seeds, the decision) and runs/<cell>/<seed>/{model.json,metrics.csv,framing.json}.
"""

import argparse
import csv
import json
import shutil
import statistics
from pathlib import Path

import numpy as np

from pneumoscan.data.loading import load_split
from pneumoscan.evaluation.framing import seen_families, swapped_scores
from pneumoscan.metrics import ThresholdPolicy, screening_metrics
from pneumoscan.metrics.framing import FramingRecord, SwappedScores, framing_record
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.inference import predict_probabilities

ACCURACY_BAR = 0.95  # the bar for patient-grouped validation accuracy
TIE = 0.01  # robust balanced accuracies closer than this are a tie (about one seed's spread)
COLUMNS = ("accuracy", "sensitivity", "specificity", "roc_auc", "robust_bal_acc", "framing_gap", "worst_spec_drop",
           "worst_sens_drop", "zoom_in_1.5_spec", "zoom_out_0.75_sens", "marker_spec", "unseen_gap", "minutes")


def run_row(cell: str, seed: str, metrics: dict, record: FramingRecord, minutes: float) -> dict:
    marker = next(swap for swap in record.swaps if swap.family == "marker")
    return {"cell": cell, "seed": seed, **{k: metrics[k] for k in ("accuracy", "sensitivity", "specificity",
                                                                    "roc_auc")},
            **record.summary(), "marker_gap": marker.flipped, "minutes": minutes}


def score_run(run: Path) -> tuple[dict, FramingRecord, np.ndarray, list[SwappedScores], np.ndarray, float, float]:
    bundle = load_bundle(run)
    images, _ = load_split(str(run / "split.csv"), "val", bundle.preprocess.image_size)
    labels = images.labels.numpy().astype(int)
    probabilities = predict_probabilities(bundle, images.images)
    threshold = bundle.manifest.threshold
    stored = bundle.manifest.validation.metrics
    metrics = screening_metrics(labels, probabilities, threshold)
    assert abs(metrics.accuracy - stored.accuracy) < 2e-3, f"{run}: validation does not score as recorded"
    swapped = swapped_scores(bundle.model, bundle.preprocess.normalize, images.images, labels)
    training = bundle.manifest.training
    record = framing_record(labels, probabilities, swapped, threshold, seen_families(training.config.augmentation))
    minutes = training.seconds / 60
    return metrics.to_dict(), record, probabilities, swapped, labels, threshold, minutes


def ensemble_threshold(records: list, labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The threshold `pneumoscan ensemble` would store: the members' policy on the averaged probabilities, with
    the members' mean calibrated prior."""
    prior = float(np.mean([record.calibrated_prior for record in records]))
    return ThresholdPolicy.parse(records[0].config.threshold_policy).choose(labels, probabilities, prior)


def mean_sd(values: list[float]) -> str:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return "n/a"
    return f"{statistics.mean(finite):.3f}" + (f" ± {statistics.stdev(finite):.3f}" if len(finite) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    rows, cells = [], {}
    args.out.mkdir(parents=True, exist_ok=True)
    for cell_dir in sorted(p for p in args.runs.iterdir() if p.is_dir()):
        cell = cell_dir.name.split("cell=", 1)[-1]
        members, members_config = [], []
        for run in sorted(p for p in cell_dir.iterdir() if (p / "model.json").exists()):
            metrics, record, probabilities, swapped, labels, threshold, minutes = score_run(run)
            rows.append(run_row(cell, run.name.removeprefix("seed"), metrics, record, minutes))
            members.append((probabilities, swapped, labels, threshold, record.seen_families, minutes))
            members_config.append(load_bundle(run).manifest.training)
            kept = args.out / "runs" / cell / run.name
            kept.mkdir(parents=True, exist_ok=True)
            for name in ("model.json", "metrics.csv"):
                shutil.copy2(run / name, kept / name)
            (kept / "framing.json").write_text(json.dumps(record.to_dict(), indent=1) + "\n")
            print(cell, run.name, {k: rows[-1][k] for k in ("accuracy", "roc_auc", "robust_bal_acc", "framing_gap")})
        if not members:
            continue
        cells[cell] = [r for r in rows if r["cell"] == cell and r["seed"] != "ensemble"]
        if len(members) > 1:  # the cell's seeds averaged: an ensemble of its runs, at their mean threshold
            labels = members[0][2]
            probabilities = np.mean([m[0] for m in members], axis=0)
            threshold = ensemble_threshold(members_config, labels, probabilities)
            swapped = [SwappedScores(s.name, s.family, s.target, np.mean([m[1][i].probabilities for m in members], 0))
                       for i, s in enumerate(members[0][1])]
            record = framing_record(labels, probabilities, swapped, threshold, members[0][4])
            metrics = screening_metrics(labels, probabilities, threshold).to_dict()
            rows.append(run_row(cell, "ensemble", metrics, record, sum(m[5] for m in members)))
    with (args.out / "search.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["cell", "seed", *COLUMNS], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| recipe | seeds | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    means = {}
    for cell, runs in cells.items():
        means[cell] = {k: statistics.mean([r[k] for r in runs]) for k in ("accuracy", "robust_bal_acc", "marker_gap",
                                                                          "minutes")}
        lines.append(f"| {cell} | {len(runs)} | " + " | ".join(mean_sd([r[k] for r in runs]) for k in COLUMNS) + " |")
    lines += ["", "Each cell's seeds averaged (an ensemble of its runs):", "",
              "| recipe | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for row in (r for r in rows if r["seed"] == "ensemble"):
        lines.append(f"| {row['cell']} | " + " | ".join(mean_sd([row[k]]) for k in COLUMNS) + " |")
    eligible = [c for c in means if means[c]["accuracy"] >= ACCURACY_BAR] or list(means)
    ranked = sorted(eligible, key=lambda c: -means[c]["robust_bal_acc"])
    best = ranked[0]
    tied = [c for c in ranked if means[best]["robust_bal_acc"] - means[c]["robust_bal_acc"] < TIE]
    chosen = min(tied, key=lambda c: (round(means[c]["marker_gap"], 2), means[c]["minutes"]))
    lines += ["", f"Eligible (mean validation accuracy >= {ACCURACY_BAR}): {', '.join(eligible)}.",
              f"Ranked by mean robust balanced accuracy: {', '.join(ranked)}; within {TIE} of the best: "
              f"{', '.join(tied)}; chosen (lowest marker-swap gap, the family no recipe trains on, then fewest "
              f"minutes): **{chosen}**."]
    (args.out / "search.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
