"""The out-of-distribution guard: detection of generated non-X-rays against false alarms on real X-rays.

The bundle's threshold was set on all validation X-rays at 5 % false alarms, so the false-alarm
rate on those same images is 5 % by construction. This benchmark also cross-fits it: the threshold
is set on half of the validation patients and the false alarms counted on the other half (both
ways round, several seeds), and detection is measured at that cross-fitted threshold too. Usage:

    .venv/bin/python benchmarks/ood_guard.py --model RUN --data RUN/split.csv [--per-kind 100]
"""

import argparse
import statistics

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from sklearn.model_selection import GroupKFold

from pneumoscan.data.loading import load_split
from pneumoscan.evaluation.ood_probes import probe_images
from pneumoscan.models.bundle import load_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="the run's split.csv")
    parser.add_argument("--split", default="val")
    parser.add_argument("--per-kind", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    if bundle.ood is None:
        raise SystemExit(f"{args.model}: this bundle carries no out-of-distribution guard")
    image_set, _ = load_split(args.data, args.split, bundle.preprocess.image_size, console=Console(stderr=True))
    normalize = bundle.preprocess.normalize
    xray_scores = bundle.ood.score(bundle.model, image_set.images, normalize)
    probes = probe_images(image_set.images[:, 0].numpy(), per_kind=args.per_kind, seed=1)
    probe_scores = {kind: bundle.ood.score(bundle.model, torch.from_numpy(images)[:, None], normalize)
                    for kind, images in probes.items()}
    patients = np.array([r.patient for r in image_set.records])
    false_alarms, detections = [], {kind: [] for kind in probes}
    for seed in range(args.repeats):
        order = np.random.default_rng(seed).permutation(len(patients))
        for fit, held_out in GroupKFold(n_splits=2).split(order, groups=patients[order]):
            threshold = np.quantile(xray_scores[order[fit]], 1 - bundle.ood.false_alarm_rate)
            false_alarms.append(float(np.mean(xray_scores[order[held_out]] > threshold)))
            for kind, scores in probe_scores.items():
                detections[kind].append(float(np.mean(scores > threshold)))
    table = Table(title=f"{args.model}: out-of-distribution guard ({len(image_set)} {args.split} X-rays, "
                        f"{args.per_kind} generated images per kind)")
    for column in ("input", "flagged at the bundle's threshold", "flagged, cross-fitted threshold (mean ± sd)"):
        table.add_column(column, justify="left" if column == "input" else "right")
    table.add_row(f"{args.split} X-rays (false alarms)", f"{np.mean(xray_scores > bundle.ood.threshold):.3f}",
                  f"{statistics.fmean(false_alarms):.3f} ± {statistics.stdev(false_alarms):.3f}")
    overall_fixed, overall_cross = [], []
    for kind, scores in probe_scores.items():
        fixed = float(np.mean(scores > bundle.ood.threshold))
        overall_fixed.append(fixed)
        overall_cross.append(statistics.fmean(detections[kind]))
        table.add_row(kind, f"{fixed:.3f}",
                      f"{statistics.fmean(detections[kind]):.3f} ± {statistics.stdev(detections[kind]):.3f}")
    table.add_row("all generated inputs", f"{statistics.fmean(overall_fixed):.3f}",
                  f"{statistics.fmean(overall_cross):.3f}")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
