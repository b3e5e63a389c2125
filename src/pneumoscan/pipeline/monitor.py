"""`pneumoscan monitor`: a labelled split streamed as simulated weeks (pneumoscan.evaluation.monitoring computes
them), written as monitoring.png and then monitoring.json (a previous run's monitoring.json is removed first, so
the file only ever describes a finished run)."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from pneumoscan.atomic import check_output_dir, discard, write_json
from pneumoscan.data.loading import load_split
from pneumoscan.data.records import SplitSummary
from pneumoscan.errors import PneumoscanError
from pneumoscan.evaluation import figures
from pneumoscan.evaluation.monitoring import Drift, MonitoringResult, simulate
from pneumoscan.models.bundle import Bundle
from pneumoscan.models.inference import predict_probabilities


@dataclass(frozen=True)
class MonitorRun:
    model: str
    data: SplitSummary
    simulation: MonitoringResult


def run_monitor(bundle: Bundle, data: str, split: str, out_dir: Path, console: Console, *, weeks: int,
                drifts: Sequence[Drift], drift_from: int, alpha: float, seed: int, strict: bool,
                stream: str = "auto") -> MonitorRun:
    """Load a split, simulate the weeks, write monitoring.png and then monitoring.json."""
    if bundle.reference is None:
        raise PneumoscanError(f"{bundle.path}: this model bundle carries no validation reference to measure drift "
                              "against; retrain it with this version of pneumoscan")
    out_dir = check_output_dir(out_dir)
    image_set, summary = load_split(data, split, bundle.preprocess.image_size, strict=strict, console=console,
                                    stream=stream)
    simulation = simulate(image_set.images, image_set.labels.numpy().astype(int),
                          lambda pixels: predict_probabilities(bundle, pixels), bundle.manifest.threshold,
                          bundle.reference, weeks=weeks, drifts=drifts, drift_from=drift_from, alpha=alpha, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    discard(out_dir / "monitoring.json")
    figures.monitoring_figure(simulation, out_dir / "monitoring.png")
    run = MonitorRun(model=str(bundle.path), data=summary, simulation=simulation)
    write_json(out_dir / "monitoring.json", {"model": run.model, "data": summary.to_dict(), **simulation.to_dict()})
    return run
