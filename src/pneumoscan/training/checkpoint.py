"""Crash-safe training: everything a run needs to continue exactly where it stopped, in one file.

A checkpoint holds the model, optimizer and scheduler states, every random-number state the run
draws from (torch's global generator on every rank, the shuffle generator, CUDA's), the epoch, the
early-stopping state (best loss, epoch and weights) and, when a run is stopped between two batches
(Ctrl-C, SIGTERM), the epoch's order and how far it got. It is written atomically (a temporary file
renamed over the old one), so a SIGKILL at any moment leaves either the previous checkpoint or the
new one, never half of one. Continuing from it reproduces an uninterrupted run bit for bit on a CPU
in float32 (tests/test_resume.py kills a run with SIGKILL and compares the weights).

It is read with `torch.load(weights_only=True)`: tensors, numbers, strings and containers only, so a
tampered checkpoint cannot run code.
"""

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pneumoscan.atomic import atomic_path
from pneumoscan.data.records import Record
from pneumoscan.errors import PneumoscanError

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


def order_fingerprint(train: list[Record], val: list[Record]) -> str:
    """SHA-256 of the records a run trains and validates on (file, label, patient), in their order: a resumed
    run must see the same images in the same positions, or its stored data order means something else. (The
    run's data hash, pneumoscan.data.records.data_fingerprint, ignores order and covers file sizes: it answers
    "same data?", this one "same positions?".)"""
    digest = hashlib.sha256()
    for split, records in (("train", train), ("val", val)):
        for record in records:
            digest.update(f"{split}\t{record.source}\t{record.label}\t{record.patient}\n".encode())
    return digest.hexdigest()


@dataclass
class LoopState:
    """The training loop's own progress, beyond the model and optimizer: what a checkpoint restores."""

    epochs_done: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # EpochRecord fields per finished epoch
    best_loss: float = float("inf")
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    seconds_to_best: float = 0.0
    seconds: float = 0.0  # wall time of the finished epochs (and of the part of an interrupted one)
    images_trained: int = 0
    seconds_training: float = 0.0
    finished: bool = False  # the last epoch ran or early stopping fired: only packaging is left
    # an epoch stopped between two batches (Ctrl-C, SIGTERM); None when the checkpoint is at an epoch boundary
    order: torch.Tensor | None = None
    next_batch: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    epoch_seconds: float = 0.0


@dataclass
class Checkpoint:
    config: dict[str, Any]  # TrainConfig fields (asdict), so `train --resume` needs nothing else
    fingerprint: str
    world_size: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]  # torch: one state per rank; shuffle; cuda (optional)
    loop: LoopState
    command: str = ""  # the command that started the run, recorded in the bundle when a resumed run finishes

    def save(self, run_dir: Path) -> Path:
        """Write atomically to RUN_DIR/checkpoint.pt."""
        payload = {"format": CHECKPOINT_FORMAT, "config": self.config, "fingerprint": self.fingerprint,
                   "world_size": self.world_size, "model": self.model, "optimizer": self.optimizer,
                   "scheduler": self.scheduler, "rng": self.rng, "loop": asdict(self.loop),
                   "command": self.command}
        path = Path(run_dir) / CHECKPOINT_FILE
        try:
            with atomic_path(path) as tmp:
                torch.save(payload, tmp)
        except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
            raise PneumoscanError(f"{path}: cannot write the checkpoint ({error}); the previous one, if any, is "
                                  "intact: free some space and resume") from None
        return path

    @classmethod
    def load(cls, run_dir: Path) -> "Checkpoint":
        path = Path(run_dir) / CHECKPOINT_FILE
        if not path.is_file():
            raise PneumoscanError(f"{run_dir}: no {CHECKPOINT_FILE} to resume from (a finished run deletes it; a run "
                                  "that never finished an epoch has none)")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if payload.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"unknown checkpoint format {payload.get('format')!r}")
            return cls(config=payload["config"], fingerprint=payload["fingerprint"],
                       world_size=int(payload["world_size"]), model=payload["model"], optimizer=payload["optimizer"],
                       scheduler=payload["scheduler"], rng=payload["rng"], loop=LoopState(**payload["loop"]),
                       command=str(payload.get("command", "")))
        except Exception as error:  # noqa: BLE001 - any damage is the same user-facing problem
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise PneumoscanError(f"{path}: not a readable pneumoscan checkpoint ({reason})") from None


def remove_checkpoint_leftovers(run_dir: Path) -> None:
    """Temporary files of saves that a SIGKILL stopped half-way (the checkpoint itself is intact)."""
    for stale in Path(run_dir).glob(f".{CHECKPOINT_FILE}.*.tmp"):
        stale.unlink(missing_ok=True)


def remove_checkpoint(run_dir: Path) -> None:
    """The checkpoint, and any temporary file a save killed half-way left beside it."""
    (Path(run_dir) / CHECKPOINT_FILE).unlink(missing_ok=True)
    remove_checkpoint_leftovers(run_dir)
