"""The recipe search table of studies/site-shift/README.md, from one or more study folders.

    python studies/site-shift/table.py runs/site-shift-intensity [runs/site-shift-recipes ...]

One row per recipe (a study cell without its hold_out_series part): validation figures of the
runs that kept every film (hold_out_series=none) where there are any, else of the held-out runs;
the leave-series-out proxy per direction; seeds and mean training minutes. Mean ± sd over seeds.
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def main(folders: list[str]) -> None:
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for folder in folders:
        study = json.loads((Path(folder) / "study.json").read_text())
        for cell in study["cells"]:
            overrides = dict(cell["overrides"])
            series = str(overrides.pop("hold_out_series", study["base_config"].get("hold_out_series", "none")))
            name = overrides.pop("cell", None)
            if name is not None:  # a named recipe (--cell "name: k=v; ..."): its name and its settings
                settings = study["named_cells"][name]
                overrides = {**settings, **overrides}
                shown = {k: Path(v).name if isinstance(v, str) and "/" in v else v for k, v in settings.items()}
                recipe = f"{name} ({', '.join(f'{k}={v}' for k, v in shown.items()) or 'the base config'})"
            else:
                recipe = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "base"
            for run in cell["runs"]:
                values = run["values"]
                row = rows[recipe]
                if series.lower() == "none":
                    for key in ("accuracy", "roc_auc", "specificity", "worst_series_specificity"):
                        row[f"val_{key}"].append(values[key])
                    row["seeds_none"].append(1)
                else:
                    row[f"{series}_spec"].append(values["shift_specificity_at_half"])
                    row[f"{series}_auc"].append(values["shift_auc"])
                    for key in ("accuracy", "roc_auc", "worst_series_specificity"):
                        row[f"held_val_{key}"].append(values[key])
                row["minutes"].append(values.get("minutes", float("nan")))
    print("| recipe | val accuracy | val ROC AUC | val worst-series specificity | NORMAL2 held out: specificity @0.5 "
          "| NORMAL2 held out: AUC | IM held out: specificity @0.5 | IM held out: AUC | runs | minutes/run |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for recipe, row in rows.items():
        def val(key: str, row: dict[str, list[float]] = row) -> list[float]:
            return row[f"val_{key}"] or row[f"held_val_{key}"]  # the runs that kept every film, else held-out runs

        print(f"| {recipe} | {mean_sd(val('accuracy'))} | {mean_sd(val('roc_auc'))} | "
              f"{mean_sd(val('worst_series_specificity'))} | {mean_sd(row['NORMAL2_spec'])} | "
              f"{mean_sd(row['NORMAL2_auc'])} | {mean_sd(row['IM_spec'])} | {mean_sd(row['IM_auc'])} | "
              f"{len(row['minutes'])} | {statistics.fmean(row['minutes']):.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
