"""The `pneumoscan train` command: one training run from a config: prepare the data (unless given), train, package.

The run folder is also where a run survives a crash: a checkpoint is written there after every epoch
(pneumoscan.training.checkpoint), `resume=True` continues from it, and the checkpoint is removed once
the bundle is complete. A fresh run into a folder that holds an older run first removes the old
run's files, manifest first, so an interrupted re-run never leaves a folder that loads as a bundle
mixing old weights with new metrics.
"""

from pathlib import Path
from typing import Literal

from rich.console import Console

from pneumoscan.atomic import check_output_dir
from pneumoscan.config import TrainConfig
from pneumoscan.errors import PneumoscanError
from pneumoscan.models.bundle import MANIFEST_FILE, WEIGHTS_FILE
from pneumoscan.pipeline.packaging import RunResult, package, write_history
from pneumoscan.training.checkpoint import CHECKPOINT_FILE, Checkpoint, remove_checkpoint, remove_checkpoint_leftovers
from pneumoscan.training.distributed import Distributed
from pneumoscan.training.loop import EpochRecord, TrainingInterrupted, train
from pneumoscan.training.prepare import PreparedData, prepare_data

# what a run writes into its folder, the manifest first: removing it first un-makes the bundle at once
RUN_FILES = (MANIFEST_FILE, WEIGHTS_FILE, CHECKPOINT_FILE, "config.json", "metrics.csv", "split.csv", "run.json",
             "training_curves.png", "architecture.png")

Resume = bool | Literal["auto"]


def resume_config(run_dir: Path) -> TrainConfig:
    """The settings of the interrupted run in `run_dir` (stored in its checkpoint)."""
    stored = Checkpoint.load(run_dir).config
    try:
        return TrainConfig.from_dict(stored)
    except (TypeError, ValueError) as error:
        raise PneumoscanError(f"{run_dir / CHECKPOINT_FILE}: its stored settings are not valid ({error})") from None


def _clear_previous_run(out_dir: Path) -> None:
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    remove_checkpoint(out_dir)  # also a save's temporary file that a SIGKILL left behind


def _checkpoint_to_use(config: TrainConfig, out_dir: Path, resume: Resume) -> Checkpoint | None:
    has_checkpoint = (out_dir / CHECKPOINT_FILE).is_file()
    if resume is True:
        checkpoint = Checkpoint.load(out_dir)
        if resume_config(out_dir) != config:
            raise PneumoscanError(f"{out_dir}: the settings differ from the checkpoint's; resume with the stored "
                                  "settings (`pneumoscan train --resume RUN_DIR` alone)")
        return checkpoint
    if resume == "auto" and has_checkpoint:
        checkpoint = Checkpoint.load(out_dir)
        if TrainConfig.from_dict(checkpoint.config) == config:
            return checkpoint
    elif has_checkpoint:
        raise PneumoscanError(f"{out_dir}: holds an unfinished run (checkpoint.pt); continue it with `pneumoscan "
                              f"train --resume {out_dir}`, or delete the folder to start again")
    return None


def run_training(config: TrainConfig, out_dir: Path, console: Console | None = None, *, command: str = "",
                 data: PreparedData | None = None, label: str = "", resume: Resume = False) -> RunResult | None:
    """Train `config` and write its run folder (a model bundle) to `out_dir`; metrics.csv grows each epoch,
    so a long run can be watched. `resume`: True continues the checkpoint in `out_dir` (which must exist and
    hold these settings); "auto" continues it when there is one for these settings (a study restarted).

    Under torchrun every process calls this; rank 0 writes the folder and gets the RunResult, the others None.
    """
    console = console or Console(stderr=True)
    out_dir = check_output_dir(out_dir)  # an unwritable folder or a full disk fails now, not after an hour
    checkpoint = _checkpoint_to_use(config, out_dir, resume)
    command = (checkpoint.command if checkpoint is not None else "") or command  # the command that started the run
    dist = Distributed.from_environment(config.torch_device)
    try:
        data = data if data is not None else prepare_data(config, console)
        if dist.is_main and checkpoint is None:
            _clear_previous_run(out_dir)  # the folder itself appears with the first epoch's files
        if dist.is_main and checkpoint is not None:
            remove_checkpoint_leftovers(out_dir)
        dist.barrier()

        def record(history: list[EpochRecord]) -> None:
            try:
                write_history(out_dir / "metrics.csv", history)
            except OSError as error:
                raise PneumoscanError(f"{out_dir / 'metrics.csv'}: cannot write ({error.strerror or error}); this "
                                      f"epoch's checkpoint is saved: free some space and resume") from None

        trained = train(data, config, console, label=label, on_epoch=record, run_dir=out_dir, resume=checkpoint,
                        dist=dist, command=command)
    except TrainingInterrupted:
        dist.close()  # every rank stopped at the same batch: leave together
        raise
    except BaseException:
        dist.abandon()  # perhaps this rank alone: the others may be stuck in a collective
        raise
    dist.close()  # before packaging, so no rank waits (and times out) while rank 0 writes the bundle
    if not dist.is_main:
        return None
    result = package(trained, data, config, out_dir, command=command, label=label)
    remove_checkpoint(out_dir)  # the bundle is complete: nothing is left to resume
    return result

