"""Each recipe of the GPU search against the base recipe, paired by held-out series and seed.

    python studies/site-shift/paired.py studies/site-shift/gpu-search

The folder holds one study per (recipe, held-out series), named RECIPE-SERIES. Runs with the same
series and seed share the split and the initial weights (except where a recipe changes the
architecture or the input size), so their difference is a paired one. Prints, per recipe, the mean
difference from base in held-out specificity at 0.5 and held-out AUC, how many of the pairs it is
higher in, and a two-sided sign test over those pairs (scipy).
"""

import json
import statistics
import sys
from pathlib import Path

from scipy.stats import binomtest


def runs(root: Path) -> dict[str, dict[tuple[str, int], dict[str, float]]]:
    table: dict[str, dict[tuple[str, int], dict[str, float]]] = {}
    for study in sorted(root.glob("*-*/study.json")):
        recipe, series = study.parent.name.rsplit("-", 1)
        for cell in json.loads(study.read_text())["cells"]:
            for seed, run in enumerate(cell["runs"]):
                table.setdefault(recipe, {})[(series, seed)] = run["values"]
    return table


def main(root: Path) -> None:
    table = runs(root)
    base = table.pop("base")
    print("| recipe vs base | pairs | Δ held-out specificity @0.5 | higher in | Δ held-out AUC | higher in "
          "| sign test p (AUC) |")
    print("|---|---|---|---|---|---|---|")
    for recipe, cells in table.items():
        keys = sorted(set(cells) & set(base))
        spec = [cells[k]["shift_specificity_at_half"] - base[k]["shift_specificity_at_half"] for k in keys]
        auc = [cells[k]["shift_auc"] - base[k]["shift_auc"] for k in keys]
        wins = sum(d > 0 for d in auc)
        p = binomtest(wins, sum(d != 0 for d in auc), 0.5).pvalue if any(auc) else 1.0
        print(f"| {recipe} | {len(keys)} | {statistics.fmean(spec):+.3f} | {sum(d > 0 for d in spec)}/{len(keys)} "
              f"| {statistics.fmean(auc):+.4f} | {wins}/{len(keys)} | {p:.2f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
