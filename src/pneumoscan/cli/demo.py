"""`pneumoscan demo`: the whole pipeline on synthetic data, in minutes, with no download."""

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from pneumoscan.data.synthetic import SyntheticSource, SyntheticSpec
from pneumoscan.errors import PneumoscanError
from pneumoscan.evaluation import figures
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.models.bundle import load_bundle
from pneumoscan.training.compare import compare_optimizers
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.prepare import prepare_data


def run_demo(out: Path, console: Console, *, n_per_class: int, epochs: int, seeds: int,
             optimizers: list[str], command: str) -> dict[str, Any]:
    out = Path(out)
    data_dir = out / "data"
    spec = SyntheticSpec(n_per_class=n_per_class)
    recorded = data_dir / "synthetic.json"
    if not recorded.exists():
        count = SyntheticSource(spec).write(data_dir)
        console.print(f"[bold]1/3[/] wrote {count} synthetic radiographs to {data_dir}")
    elif json.loads(recorded.read_text(encoding="utf-8")).get("n_per_class") != n_per_class:
        raise PneumoscanError(f"{data_dir}: holds a synthetic dataset of another size; use another --out")
    else:
        console.print(f"[bold]1/3[/] reusing the synthetic dataset in {data_dir}")

    config = replace(TrainConfig(), epochs=epochs, patience=4)
    prepared = prepare_data(str(data_dir), config, console)
    console.print(f"[bold]2/3[/] optimizer study ({', '.join(optimizers)}; {seeds} seed(s); "
                  f"{prepared.summary['train']['images']} train / {prepared.summary['val']['images']} "
                  f"validation images, split by patient)")
    study = compare_optimizers(prepared, config, optimizers, seeds, out / "compare", console, command=command)

    console.print("[bold]3/3[/] evaluating every model on the held-out synthetic test split")
    weekly, results = {}, {}
    for runs in study.runs.values():
        for run in runs:
            name = run.out_dir.name
            results[name] = evaluate(load_bundle(run.out_dir), str(data_dir), out / "evaluation" / name, console)
            weekly[name] = results[name]["weeks"]
    figures.temporal_performance(weekly, out / "temporal_performance.png")
    return {"best_run": study.best_run, "results": results}
