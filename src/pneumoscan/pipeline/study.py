"""`pneumoscan study`: any config key varied over cells, K seeds each, on equal terms, with paired tests.

Every cell trains on the same patient-grouped split (unless the varied key is one that decides the
data, such as image_size), seed k starts from the same initial weights in every cell (the seed is
set before the model is built), and every cell gets the same budget. A run folder that already
holds the finished run of the same config is reused, so a study interrupted after hours picks up
where it stopped when the same command is run again.
"""

import csv
import io
import itertools
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pneumoscan.atomic import write_json, write_text
from pneumoscan.config import TrainConfig
from pneumoscan.errors import PneumoscanError
from pneumoscan.metrics.comparison import MeanSd, PairedComparison, paired_comparison
from pneumoscan.metrics.framing import FramingRecord
from pneumoscan.models.bundle import MANIFEST_FILE, read_manifest
from pneumoscan.models.registry import model_spec
from pneumoscan.pipeline.packaging import RunResult
from pneumoscan.pipeline.train import run_training
from pneumoscan.settings import checked, current_name, parse_assignments
from pneumoscan.training.distributed import launched_world_size
from pneumoscan.training.figures import study_curves
from pneumoscan.training.loop import EpochRecord
from pneumoscan.training.prepare import DATA_KEYS, PreparedData, prepare_data

# The framing-swap proxy (issue 19; pneumoscan.metrics.framing): robust_bal_acc is what recipes are chosen on.
FRAMING_METRICS = ("robust_bal_acc", "framing_gap", "worst_spec_drop", "worst_sens_drop", "unseen_gap",
                   "zoom_in_1.5_spec", "zoom_out_0.75_sens", "marker_spec")
# Per run, at the restored (best) epoch unless named `_last`; gap_* need measure_train_gap.
# worst_series_specificity: the lowest specificity over the validation normals' acquisition series; shift_*: the
# held-out series of hold_out_series (specificity at the stored threshold and at 0.5, AUC against val pneumonia).
STUDY_METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc", "val_loss", "worst_series_specificity",
                 "shift_specificity", "shift_specificity_at_half", "shift_auc", "gap_loss_best", "gap_loss_last",
                 "gap_acc_last", "best_epoch", "seconds_to_best", "minutes", *FRAMING_METRICS)


@dataclass(frozen=True)
class Variation:
    key: str
    values: tuple[Any, ...]

    @classmethod
    def parse(cls, text: str) -> "Variation":
        """`key=v1,v2,...`, each value checked against TrainConfig's field."""
        key, sep, values = text.partition("=")
        key = key.strip().replace("-", "_")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or len(items) < 2:
            raise PneumoscanError(f"--vary {text!r}: write it as key=value1,value2[,...] (at least two values)")
        if key == "seed":
            raise PneumoscanError("--vary seed: seeds are set by --seeds, so every cell gets the same ones")
        key = current_name(TrainConfig, key, "--vary")  # an old name warns once, not once per value
        converted = [checked({key: item}, TrainConfig, f"--vary {key}")[key] for item in items]
        if len(set(map(str, converted))) != len(converted):
            raise PneumoscanError(f"--vary {text!r}: a value is repeated")
        return cls(key, tuple(converted))


@dataclass(frozen=True)
class NamedCell:
    """A recipe in a study: a name and the settings it changes (`--cell "name: key=value; key=value"`), so
    cells that differ in several settings at once (a whole recipe) can be compared."""

    name: str
    settings: dict[str, Any]

    @classmethod
    def parse(cls, text: str) -> "NamedCell":
        name, sep, body = text.partition(":")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Za-z0-9._+-]+", name):
            raise PneumoscanError(f"--cell {text!r}: write it as \"name: key=value; key=value\" (a name of letters, "
                                  "digits, . _ + -; no settings for the base recipe itself)")
        pairs = [part.strip() for part in body.split(";") if part.strip()]
        if any("seed" == part.partition("=")[0].strip() for part in pairs):
            raise PneumoscanError(f"--cell {name}: seeds are set by --seeds, so every cell gets the same ones")
        return cls(name, parse_assignments(pairs, TrainConfig, f"--cell {name}"))


@dataclass
class CellResult:
    name: str
    overrides: dict[str, Any]
    runs: list[RunResult]

    def values(self, metric: str) -> list[float]:
        return [run_values(run)[metric] for run in self.runs]


@dataclass
class StudyResult:
    out_dir: Path
    cells: list[CellResult]
    summary: dict[str, dict[str, MeanSd]]
    comparisons: list[PairedComparison]
    best_run: Path
    named_cells: dict[str, dict[str, Any]] = field(default_factory=dict)  # --cell name -> the settings it changes


def run_values(run: RunResult) -> dict[str, float]:
    metrics, best, last = run.validation.metrics, run.best, run.history[-1]

    def gap(val: float, clean: float | None) -> float:
        return float("nan") if clean is None else val - clean

    shift, nan = run.validation.shift, float("nan")
    return {
        **{name: float("nan") if metrics.value(name) is None else float(metrics.value(name))  # type: ignore[arg-type]
           for name in ("accuracy", "sensitivity", "specificity", "roc_auc")},
        "val_loss": run.validation.loss,
        "worst_series_specificity": min(run.validation.series_specificity.values(), default=nan),
        "shift_specificity": nan if shift is None else shift.specificity,
        "shift_specificity_at_half": nan if shift is None else shift.specificity_at_half,
        "shift_auc": nan if shift is None or shift.roc_auc is None else shift.roc_auc,
        "minutes": sum(record.seconds for record in run.history) / 60,
        "gap_loss_best": gap(best.val_loss, best.train_clean_loss),
        "gap_loss_last": gap(last.val_loss, last.train_clean_loss),
        "gap_acc_last": float("nan") if last.train_clean_acc is None else last.train_clean_acc - last.val_acc,
        "best_epoch": float(run.best_epoch),
        "seconds_to_best": run.seconds_to_best,
        **framing_values(run.validation.framing),
    }


def framing_values(record: FramingRecord | None) -> dict[str, float]:
    """The framing-swap proxy's study columns (NaN where a run has none, or a value is undefined)."""
    summary = {} if record is None else record.summary()
    return {name: float("nan") if summary.get(name) is None else float(summary[name])  # type: ignore[arg-type]
            for name in FRAMING_METRICS}


def comparable_pairs(cells: Sequence[CellResult]) -> list[tuple[CellResult, CellResult]]:
    """Every pair of cells that differ in exactly one varied setting (the earlier value as the reference):
    with one --vary that is every pair; with two it is each setting's effect at each level of the other."""
    return [(first, second) for i, first in enumerate(cells) for second in cells[i + 1:]
            if sum(first.overrides[k] != second.overrides[k] for k in first.overrides) == 1]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text)[:60]


def _cell_name(overrides: dict[str, Any], short: bool = True) -> str:
    """`key=value, ...`; a path is shown by its folder's name when that keeps every cell's name distinct."""
    def show(value: Any) -> str:
        if short and isinstance(value, str) and "/" in value:
            return Path(value).parent.name or str(value)
        return str(value)

    return ", ".join(f"{key}={show(value)}" for key, value in overrides.items())


def _cell_names(combos: Sequence[dict[str, Any]]) -> list[str]:
    names = [_cell_name(overrides) for overrides in combos]
    if len(set(names)) < len(names):
        names = [_cell_name(overrides, short=False) for overrides in combos]
    return names


def _finished_run(out_dir: Path, config: TrainConfig) -> RunResult | None:
    """A run already in `out_dir` with exactly this config (the study was interrupted and restarted)."""
    if not (out_dir / MANIFEST_FILE).is_file() or not (out_dir / "metrics.csv").is_file():
        return None
    try:
        manifest = read_manifest(out_dir)
    except PneumoscanError:
        return None
    if manifest.training is None or manifest.validation is None or manifest.training.config != config:
        return None
    with (out_dir / "metrics.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    history = [EpochRecord(**{k: (None if v == "" else int(v) if k == "epoch" else float(v)) for k, v in row.items()})
               for row in rows]
    return RunResult(out_dir=out_dir, config=config, history=history, best_epoch=manifest.training.best_epoch,
                     seconds_to_best=manifest.training.seconds_to_best, validation=manifest.validation)


def _config(base: TrainConfig, overrides: dict[str, Any], named: dict[str, NamedCell], seed: int) -> TrainConfig:
    settings = dict(overrides)
    cell = settings.pop("cell", None)
    recipe = named[cell].settings if cell is not None else {}
    return replace(base, **{**recipe, **settings}, seed=seed)


def run_study(base: TrainConfig, variations: Sequence[Variation], seeds: int, out_dir: Path,
              console: Console | None = None, command: str = "",
              cells: Sequence[NamedCell] = ()) -> StudyResult:
    """Train every combination of the named cells (if any) and the --vary values, `seeds` seeds each."""
    console = console or Console(stderr=True)
    if launched_world_size() > 1:
        raise PneumoscanError("a study trains its runs one after another in one process; launch `pneumoscan train` "
                              "with torchrun instead")
    if seeds < 1:
        raise PneumoscanError(f"--seeds must be at least 1, got {seeds}")
    named = {cell.name: cell for cell in cells}
    if len(named) != len(cells):
        raise PneumoscanError("--cell names a recipe twice")
    for variation in variations:
        clash = [cell.name for cell in cells if variation.key in cell.settings]
        if clash:
            raise PneumoscanError(f"--vary {variation.key} and --cell {clash[0]} both set {variation.key}")
    if cells:
        variations = [Variation("cell", tuple(named)), *variations]
    keys = [v.key for v in variations]
    if len(set(keys)) != len(keys):
        raise PneumoscanError(f"--vary names a key twice ({', '.join(keys)})")
    out_dir = Path(out_dir)
    prepared: dict[tuple[Any, ...], PreparedData] = {}
    study_cells: list[CellResult] = []
    combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(v.values for v in variations))]
    for name, overrides in zip(_cell_names(combos), combos, strict=True):
        study_cells.append(CellResult(name, overrides, []))
    seed_list = range(base.seed, base.seed + seeds)  # --seed sets the first seed
    for cell in study_cells:  # every cell's settings are checked before hours of training start
        try:
            arch = _config(base, cell.overrides, named, base.seed).arch
            if model_spec(arch).derive is not None:
                raise PneumoscanError(f"architecture '{arch}' is assembled from trained bundles, not trained")
        except (PneumoscanError, TypeError, ValueError) as error:
            raise PneumoscanError(f"cell {cell.name}: {error}") from None
    for seed in seed_list:  # seed-major: an interrupted study has every cell at the same number of seeds
        for number, cell in enumerate(study_cells):
            config = _config(base, cell.overrides, named, seed)
            data_key = tuple(getattr(config, key) for key in DATA_KEYS)
            run_dir = out_dir / f"c{number}_{_slug(cell.name)}" / f"seed{seed}"
            finished = _finished_run(run_dir, config)
            if finished is not None:
                console.print(f"{cell.name} seed {seed}: reusing the finished run in {run_dir}")
                cell.runs.append(finished)
                continue
            if data_key not in prepared:
                prepared[data_key] = prepare_data(config, console)
            run = run_training(config, run_dir, console, command=command, data=prepared[data_key],
                               label=f"{cell.name} seed {seed}", resume="auto")
            assert run is not None  # one process (checked above), so this one wrote the run
            cell.runs.append(run)
    summary = {cell.name: {m: MeanSd.of(cell.values(m)) for m in STUDY_METRICS} for cell in study_cells}
    comparisons = [paired_comparison(metric, first.name, second.name, first.values(metric), second.values(metric))
                   for first, second in comparable_pairs(study_cells)
                   for metric in STUDY_METRICS if metric not in ("best_epoch", "seconds_to_best", "minutes")]
    comparisons = [c for c in comparisons if c.n_pairs > 0]  # a metric one of the two cells does not measure
    best_run = min((run for cell in study_cells for run in cell.runs), key=lambda run: run.validation.loss).out_dir
    result = StudyResult(out_dir, study_cells, summary, comparisons, best_run,
                         {cell.name: cell.settings for cell in cells})
    _write_outputs(result, base, variations, seeds, command)
    console.print(summary_table(result))
    return result


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _write_outputs(result: StudyResult, base: TrainConfig, variations: Sequence[Variation], seeds: int,
                   command: str) -> None:
    out_dir = result.out_dir
    payload = {
        "command": command, "seeds": seeds,
        "vary": {v.key: list(v.values) for v in variations if v.key != "cell"},
        "named_cells": result.named_cells,
        "base_config": base.to_dict(),
        "metrics": list(STUDY_METRICS),
        "cells": [{"name": cell.name, "overrides": cell.overrides,
                   "runs": [{"seed": run.config.seed, "run": str(run.out_dir.relative_to(out_dir)),
                             "values": run_values(run)} for run in cell.runs],
                   "summary": {m: asdict(v) for m, v in result.summary[cell.name].items()}} for cell in result.cells],
        "comparisons": [asdict(c) for c in result.comparisons],
        "test": "paired t-test over seeds (each seed shares the split and initial weights in every cell)",
        "best_run": str(result.best_run.relative_to(out_dir)),
    }
    write_json(out_dir / "study.json", payload)
    write_text(out_dir / "study.md", study_markdown(result, command, seeds))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["cell", "seed", "run", *STUDY_METRICS])
    for cell in result.cells:
        for run in cell.runs:
            values = run_values(run)
            writer.writerow([cell.name, run.config.seed, str(run.out_dir.relative_to(out_dir)), *(f"{values[m]:.6g}"
                                                                                        for m in STUDY_METRICS)])
    write_text(out_dir / "study.csv", buffer.getvalue())
    study_curves({cell.name: [run.history for run in cell.runs] for cell in result.cells},
                         out_dir / "study_curves.png")


def _named_cells_text(named: dict[str, dict[str, Any]]) -> str:
    def settings_text(settings: dict[str, Any]) -> str:
        return ", ".join(f"{key}={value}" for key, value in settings.items()) or "the base recipe"

    return "; ".join(f"`{name}` = {settings_text(settings)}" for name, settings in named.items())


def study_markdown(result: StudyResult, command: str, seeds: int) -> str:
    shown = [m for m in STUDY_METRICS if any(result.summary[c.name][m].n for c in result.cells)]
    varied = " × ".join(result.cells[0].overrides) or "one cell"
    lines = [f"# Study: {varied} ({len(result.cells)} cells)", "", f"`{command}`" if command else "", "",
             f"Validation metrics at each run's restored epoch, mean ± sd over {seeds} seed(s); every cell on the "
             "same split, seed k from the same initial weights.", "",
             *([f"Named cells: {_named_cells_text(result.named_cells)}.", ""] if result.named_cells else []),
             "| cell | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
    for cell in result.cells:
        lines.append(f"| {cell.name} | " + " | ".join(str(result.summary[cell.name][m]) for m in shown) + " |")
    lines += ["", "Paired comparisons of every two cells that differ in one setting (cell minus reference; paired "
              "t-test over seeds):", "", "| reference | cell | metric | mean difference | 95 % CI | p |",
              "|---|---|---|---|---|---|"]
    for c in result.comparisons:
        if c.metric not in shown:
            continue
        ci = "n/a" if c.ci95 is None else f"{c.ci95[0]:+.4f} to {c.ci95[1]:+.4f}"
        lines.append(f"| {c.reference} | {c.cell} | {c.metric} | {c.mean_difference:+.4f} | {ci} | "
                     f"{_fmt(c.p_value, 3)} |")
    lines += ["", "![curves](study_curves.png)", ""]
    return "\n".join(lines)


def summary_table(result: StudyResult) -> Table:
    """The terminal view: the main metrics, and the loss gap where it was measured; p against the first cell."""
    shown = ["accuracy", "sensitivity", "specificity", "roc_auc", "val_loss"]
    shown += [metric for metric in ("worst_series_specificity", "shift_specificity", "shift_auc", "gap_loss_last")
              if any(result.summary[c.name][metric].n for c in result.cells)]
    first = result.cells[0].name
    p_values = {(c.cell, c.metric): c.p_value for c in result.comparisons if c.reference == first}
    table = Table(title="Study: validation at the restored epoch, mean±sd over seeds (p: paired t-test vs first row; "
                        "study.md has every comparison)")
    table.add_column("cell", overflow="fold")
    for column in shown:
        table.add_column(column.replace("_", " "), justify="right")
    for cell in result.cells:
        cells = []
        for metric in shown:
            stat, p = result.summary[cell.name][metric], p_values.get((cell.name, metric))
            cells.append(f"{stat.mean:.3f}±{stat.sd:.3f}" + ("" if p is None else f" p={p:.2g}"))
        table.add_row(cell.name, *cells)
    return table
