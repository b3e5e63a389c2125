"""The optimizer study: each optimizer on the same split, the same init seeds and the same budget.

One run per optimizer cannot say which is better; K seeds each give a mean and a spread.
"""

import csv
import io
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pneumoscan.atomic import write_json, write_text
from pneumoscan.evaluation import figures
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.prepare import PreparedData
from pneumoscan.training.trainer import RunResult, fit

SUMMARY_METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc", "loss")


@dataclass
class StudyResult:
    runs: dict[str, list[RunResult]]
    summary: dict[str, dict[str, dict[str, float]]]
    best_run: Path


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def _run_values(run: RunResult) -> dict[str, float]:
    values = {m: float("nan") if run.val_metrics[m] is None else float(run.val_metrics[m]) for m in SUMMARY_METRICS}
    values["best_epoch"] = float(run.best_epoch)
    values["seconds_to_best"] = run.seconds_to_best
    return values


def compare_optimizers(data: PreparedData, base: TrainConfig, optimizers: list[str], seeds: int,
                       out_dir: Path, console: Console, command: str = "") -> StudyResult:
    out_dir = Path(out_dir)
    runs: dict[str, list[RunResult]] = {name: [] for name in optimizers}
    for seed in range(seeds):
        for name in optimizers:
            config = replace(base, optimizer=name, seed=seed, lr=None)
            runs[name].append(fit(data, config, out_dir / f"{name}-seed{seed}", console,
                                  label=f"{name} seed {seed}", command=command))

    summary = {name: {key: _mean_sd([_run_values(r)[key] for r in results])
                      for key in (*SUMMARY_METRICS, "best_epoch", "seconds_to_best")}
               for name, results in runs.items()}
    best_run = min((r for results in runs.values() for r in results), key=lambda r: r.val_metrics["loss"]).out_dir

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["optimizer", "seed", "run", *SUMMARY_METRICS, "best_epoch", "seconds_to_best"])
    for name, results in runs.items():
        for seed, run in enumerate(results):
            values = _run_values(run)
            writer.writerow([name, seed, run.out_dir.name, *(f"{values[k]:.6g}" for k in
                                                             (*SUMMARY_METRICS, "best_epoch", "seconds_to_best"))])
    write_text(out_dir / "compare.csv", buffer.getvalue())
    study: dict[str, Any] = {"command": command, "seeds": seeds, "optimizers": optimizers,
                             "config": base.to_dict(), "data": data.summary,
                             "summary": summary, "best_run": best_run.name}
    write_json(out_dir / "compare.json", study)
    figures.training_curves({name: [r.history for r in results] for name, results in runs.items()},
                            out_dir / "training_curves.png")
    console.print(summary_table(summary, seeds))
    return StudyResult(runs=runs, summary=summary, best_run=best_run)


def summary_table(summary: dict[str, dict[str, dict[str, float]]], seeds: int) -> Table:
    table = Table(title=f"Optimizer study: validation metrics at the best epoch, mean ± sd over {seeds} seed(s)")
    table.add_column("optimizer")
    for column in ("accuracy", "sensitivity", "specificity", "ROC AUC", "val loss", "best epoch", "s to best"):
        table.add_column(column, justify="right")
    for name, stats in summary.items():
        cells = [f"{stats[k]['mean']:.3f} ± {stats[k]['sd']:.3f}" for k in SUMMARY_METRICS]
        cells.append(f"{stats['best_epoch']['mean']:.1f} ± {stats['best_epoch']['sd']:.1f}")
        cells.append(f"{stats['seconds_to_best']['mean']:.0f} ± {stats['seconds_to_best']['sd']:.0f}")
        table.add_row(name, *cells)
    return table
