"""The fit loop: BCE on one logit, early stopping with best-weights restore, ReduceLROnPlateau.

Images arrive as one uint8 tensor decoded once; each batch is augmented on the whole batch,
normalized, and run in channels_last with bf16 autocast where the CPU supports it.
"""

import copy
import csv
import io
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.nn import functional as F

from pneumoscan import __version__
from pneumoscan.atomic import write_json, write_text
from pneumoscan.data.augment import augment, build_augmentation
from pneumoscan.data.loading import ImageSet
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.evaluation.inference import predict_with
from pneumoscan.evaluation.metrics import binary_metrics
from pneumoscan.evaluation.monitoring import image_statistics
from pneumoscan.evaluation.prior_shift import calibrated_prior
from pneumoscan.evaluation.thresholds import ThresholdPolicy
from pneumoscan.models.bundle import Manifest, save_bundle
from pneumoscan.models.ood import fit_guard
from pneumoscan.models.pretrained import load_pretrained
from pneumoscan.models.registry import create_model
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.imbalance import LossFunction, epoch_order, make_loss
from pneumoscan.training.prepare import PreparedData

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr", "seconds"]


@dataclass
class RunResult:
    out_dir: Path
    history: list[dict[str, float]]
    best_epoch: int
    seconds_to_best: float
    val_metrics: dict[str, Any]


def _code_version() -> str:
    """pneumoscan's version plus, when run from a git checkout, the commit (marked -dirty if edited)."""
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{commit}" if commit else __version__


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buffer.getvalue())


def _validation_loss(probabilities: np.ndarray, labels: torch.Tensor) -> float:
    probs = torch.from_numpy(probabilities).clamp(1e-7, 1 - 1e-7)
    return float(F.binary_cross_entropy(probs, labels))


class _EpochProgress:
    """A rich progress bar for one epoch that shows running loss and accuracy."""

    def __init__(self, console: Console, label: str) -> None:
        self.label = label
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f}"),
            TimeRemainingColumn(), console=console, transient=True,
        )

    def __enter__(self) -> "_EpochProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def start(self, epoch: int, total: int) -> int:
        return self.progress.add_task(f"{self.label} epoch {epoch}", total=total, loss=0.0, acc=0.0)

    def update(self, task: int, seen: int, loss: float, acc: float) -> None:
        self.progress.update(task, completed=seen, loss=loss, acc=acc)

    def finish(self, task: int) -> None:
        self.progress.remove_task(task)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_function: LossFunction,
                inputs: torch.Tensor, targets: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, float]:
    """One optimizer step; returns the batch's logits (float32, detached) and loss."""
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(inputs.contiguous(memory_format=torch.channels_last))
    logits = logits.float().squeeze(1)
    loss = loss_function(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits.detach(), float(loss.detach())


def fit(data: PreparedData, config: TrainConfig, out_dir: Path, console: Console,
        label: str = "", command: str = "") -> RunResult:
    """Train one model and write a complete run folder that is also a model bundle."""
    out_dir = Path(out_dir)
    torch.manual_seed(config.seed)
    preprocess = Preprocess(image_size=config.image_size)
    model = create_model(config.arch, in_channels=preprocess.channels, image_size=preprocess.image_size)
    if config.weights:
        report = load_pretrained(model, config.arch, Path(config.weights))
        console.print(f"{config.weights}: loaded {report['loaded']} of {report['model_tensors']} backbone tensors "
                      "(the classifier head starts fresh)", highlight=False, soft_wrap=True)
    model = model.to(memory_format=torch.channels_last)
    out_dir.mkdir(parents=True, exist_ok=True)
    optimizer = _make_optimizer(model, config)
    step_model = torch.compile(model) if config.compile else model  # shares the parameters; saved uncompiled
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.lr_factor, patience=config.lr_patience)
    augmentation = build_augmentation(config.augment)
    shuffle = torch.Generator().manual_seed(config.seed)
    loss_function = make_loss(config.imbalance, data.train.labels)
    train: ImageSet = data.train
    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_state, seconds_to_best = float("inf"), 0, None, 0.0
    started = time.perf_counter()
    images_trained, seconds_training = 0, 0.0  # throughput excludes validation passes
    label = label or f"{config.arch}/{config.optimizer}"

    with _EpochProgress(console, label) as bar:
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            task = bar.start(epoch, len(train))
            order = epoch_order(config.imbalance, train.labels, shuffle)
            loss_sum, correct, seen = 0.0, 0, 0
            for start in range(0, len(order), config.batch_size):
                index = order[start : start + config.batch_size]
                if len(index) < 2:  # BatchNorm cannot train on a single image
                    continue
                pixels = augment(augmentation, train.images[index].float().div_(255.0))
                logits, loss = train_step(step_model, optimizer, loss_function, preprocess.normalize(pixels),
                                           train.labels[index], config.use_bf16)
                loss_sum += loss * len(index)
                correct += int(((logits > 0).float() == train.labels[index]).sum())
                seen += len(index)
                bar.update(task, seen, loss_sum / seen, correct / seen)
            bar.finish(task)
            images_trained += seen
            seconds_training += time.perf_counter() - epoch_start

            probabilities = predict_with(model, preprocess.normalize, data.val.images)
            val_loss = _validation_loss(probabilities, data.val.labels)
            val = binary_metrics(data.val.labels.numpy(), probabilities, threshold=0.5)
            row = {
                "epoch": epoch,
                "train_loss": round(loss_sum / max(seen, 1), 6),
                "train_acc": round(correct / max(seen, 1), 6),
                "val_loss": round(val_loss, 6),
                "val_acc": round(val["accuracy"], 6),
                "val_auc": round(val["roc_auc"], 6) if val["roc_auc"] is not None else float("nan"),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": round(time.perf_counter() - epoch_start, 2),
            }
            history.append(row)
            _write_history(out_dir / "metrics.csv", history)
            improved = val_loss < best_loss - 1e-6
            console.print(
                f"{label} epoch {epoch:>2}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} | "
                f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} auc {row['val_auc']:.3f} | "
                f"lr {row['lr']:.2g} | {row['seconds']:.0f}s" + (" *" if improved else ""),
                highlight=False, soft_wrap=True,
            )
            if improved:
                best_loss, best_epoch = val_loss, epoch
                best_state = copy.deepcopy(model.state_dict())
                seconds_to_best = time.perf_counter() - started
            elif epoch - best_epoch >= config.patience:
                console.print(f"{label}: early stop, no better validation loss for {config.patience} epochs")
                break
            scheduler.step(val_loss)

    if best_state is not None:
        model.load_state_dict(best_state)
    probabilities = predict_with(model, preprocess.normalize, data.val.images)
    threshold = ThresholdPolicy.parse(config.threshold).choose(
        data.val.labels.numpy(), probabilities, calibrated_prior(config.imbalance, data.summary["train"]))
    val_metrics = binary_metrics(data.val.labels.numpy(), probabilities, threshold=threshold)
    val_metrics["loss"] = _validation_loss(probabilities, data.val.labels)
    val_metrics["threshold_policy"] = config.threshold
    training = {
        "command": command,
        "code_version": _code_version(),
        "config": config.to_dict(),
        "data": data.summary,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "seconds": round(time.perf_counter() - started, 1),
        "seconds_to_best": round(seconds_to_best, 1),
        "train_images_per_second": round(images_trained / max(seconds_training, 1e-9), 1),
    }
    manifest = Manifest(arch=config.arch, arch_kwargs={}, preprocess=preprocess, threshold=threshold,
                        training=training, validation_metrics=val_metrics)
    model = model.to(memory_format=torch.contiguous_format)  # as it is saved and loaded: the guard's scores match
    guard = fit_guard(model, (preprocess.channels, preprocess.image_size, preprocess.image_size), preprocess.normalize,
                      train.images, train.labels.numpy(), data.val.images)
    reference = {**image_statistics(data.val.images), "scores": probabilities}
    save_bundle(out_dir, model, manifest, ood=guard, reference=reference)
    write_json(out_dir / "config.json", {"command": command, **config.to_dict()})
    data.write_split_csv(out_dir / "split.csv")
    return RunResult(out_dir, history, best_epoch, seconds_to_best, val_metrics)
