"""One training run from a config: prepare the data (unless given), train, package. What `train` runs."""

from pathlib import Path

from rich.console import Console

from pneumoscan.config import TrainConfig
from pneumoscan.pipeline.packaging import RunResult, package, write_history
from pneumoscan.training.loop import EpochRecord, train
from pneumoscan.training.prepare import PreparedData, prepare_data


def run_training(config: TrainConfig, out_dir: Path, console: Console | None = None, *, command: str = "",
                 data: PreparedData | None = None, label: str = "") -> RunResult:
    """Train `config` and write its run folder (a model bundle) to `out_dir`; metrics.csv grows each epoch,
    so a long run can be watched."""
    console = console or Console(stderr=True)
    out_dir = Path(out_dir)
    data = data if data is not None else prepare_data(config, console)
    history: list[EpochRecord] = []

    def record(epoch: EpochRecord) -> None:
        history.append(epoch)
        write_history(out_dir / "metrics.csv", history)

    trained = train(data, config, console, label=label, on_epoch=record)
    return package(trained, data, config, out_dir, command=command, label=label)
