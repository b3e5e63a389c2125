"""`pneumoscan demo`: the whole pipeline on synthetic data, in minutes, with no download.

Writes a synthetic dataset in the Kaggle layout, runs the optimizer study on it (a `study` with
`--vary optimizer=...`), evaluates every run on the held-out synthetic test split and draws the
temporal view of all of them together.
"""

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console

from pneumoscan.config import DemoConfig, EvalConfig
from pneumoscan.data.synthetic import SyntheticSource, SyntheticSpec
from pneumoscan.errors import PneumoscanError
from pneumoscan.evaluation import figures
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.evaluation.results import EvaluationResult
from pneumoscan.models.bundle import load_bundle
from pneumoscan.pipeline.study import StudyResult, Variation, run_study


@dataclass
class DemoResult:
    study: StudyResult
    evaluations: dict[str, EvaluationResult]  # run name -> its test-split evaluation


def _write_dataset(config: DemoConfig, data_dir: Path, console: Console) -> None:
    spec = SyntheticSpec(n_per_class=config.n_per_class, size=config.size, difficulty=config.difficulty)
    recorded = data_dir / "synthetic.json"
    if not recorded.exists():
        count = SyntheticSource(spec).write(data_dir)
        console.print(f"[bold]1/3[/] wrote {count} synthetic radiographs to {data_dir}")
        return
    written = {"age": "child", **json.loads(recorded.read_text(encoding="utf-8"))}  # written before ages existed
    if any(written.get(key) != value for key, value in asdict(spec).items()):
        raise PneumoscanError(f"{data_dir}: holds a synthetic dataset made with other settings; use another --out")
    console.print(f"[bold]1/3[/] reusing the synthetic dataset in {data_dir}")


def run_demo(out: Path, config: DemoConfig | None = None, console: Console | None = None,
             command: str = "") -> DemoResult:
    console = console or Console(stderr=True)
    config = config or DemoConfig()
    out = Path(out)
    data_dir = out / "data"
    _write_dataset(config, data_dir, console)
    optimizers = config.optimizer_names
    console.print(f"[bold]2/3[/] optimizer study ({', '.join(optimizers)}; {config.seeds} seed(s) each, same split "
                  "and initial weights)")
    variations = [Variation.parse("optimizer=" + ",".join(optimizers))] if len(optimizers) > 1 else []
    training = replace(config.training(str(data_dir)), optimizer=optimizers[0])
    study = run_study(training, variations, config.seeds, out / "study", console, command=command)

    console.print("[bold]3/3[/] evaluating every run on the held-out synthetic test split")
    evaluations = {}
    for cell in study.cells:
        for run in cell.runs:
            name = f"{run.config.optimizer}-seed{run.config.seed}"
            evaluations[name] = evaluate(load_bundle(run.out_dir), str(data_dir), out / "evaluation" / name,
                                         EvalConfig(), console)
    figures.temporal_performance({name: result.temporal.weeks for name, result in evaluations.items()},
                                 out / "temporal_performance.png")
    return DemoResult(study=study, evaluations=evaluations)
