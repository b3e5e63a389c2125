"""The training loop, and nothing else: BCE on one logit, early stopping with best-weights restore,
ReduceLROnPlateau. Choosing a threshold, fitting the guard and writing a bundle happen afterwards,
in pneumoscan.pipeline.packaging.

Images arrive as one uint8 tensor decoded once; each batch is augmented on the whole batch,
normalized, and run in channels_last with bf16 autocast where the config asks for it.
"""

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from pneumoscan.config import TrainConfig
from pneumoscan.data.augment import augment, build_augmentation
from pneumoscan.data.batching import iter_batches
from pneumoscan.data.loading import ImageSet
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.errors import PneumoscanError
from pneumoscan.metrics import screening_metrics
from pneumoscan.models.inference import predict_with
from pneumoscan.models.pretrained import load_pretrained
from pneumoscan.models.registry import create_model
from pneumoscan.training.imbalance import LossFunction, epoch_order, make_loss
from pneumoscan.training.prepare import PreparedData

GAP_SAMPLE = 1000  # training images re-scored each epoch without augmentation when measure_train_gap is on


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float  # running loss on the augmented batches
    train_acc: float
    val_loss: float
    val_acc: float
    val_auc: float
    lr: float
    seconds: float
    train_clean_loss: float | None = None  # a fixed training sample scored like validation (measure_train_gap)
    train_clean_acc: float | None = None


@dataclass
class TrainedModel:
    """The best weights (eval mode, contiguous layout) and how training went."""

    model: nn.Module
    preprocess: Preprocess
    history: list[EpochRecord]
    best_epoch: int
    seconds: float
    seconds_to_best: float
    train_images_per_second: float


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def _bce(probabilities: np.ndarray, labels: torch.Tensor) -> float:
    """Validation loss in float32 as torch computes it, so early stopping decides as it always has."""
    probs = torch.from_numpy(probabilities).clamp(1e-7, 1 - 1e-7)
    return float(torch.nn.functional.binary_cross_entropy(probs, labels))


class _EpochProgress:
    """A rich progress bar for one epoch that shows running loss and accuracy."""

    def __init__(self, console: Console, label: str) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f}"),
            TimeRemainingColumn(), console=console, transient=True,
        )
        self.label = label

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
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(inputs.contiguous(memory_format=torch.channels_last))
    logits = logits.float().squeeze(1)
    loss = loss_function(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits.detach(), float(loss.detach())


def soften(pixels: torch.Tensor, labels: torch.Tensor, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (each image blended with a shuffled partner by one Beta(alpha, alpha) weight per batch, targets
    blended alike) and label smoothing; both draw from torch's seeded generator, so runs repeat."""
    targets = labels
    if config.mixup > 0:
        weight = float(torch.distributions.Beta(config.mixup, config.mixup).sample())
        partner = torch.randperm(len(labels))
        pixels = weight * pixels + (1.0 - weight) * pixels[partner]
        targets = weight * labels + (1.0 - weight) * labels[partner]
    if config.label_smoothing > 0:
        targets = targets * (1.0 - config.label_smoothing) + config.label_smoothing / 2
    return pixels, targets


def _gap_sample(train: ImageSet, config: TrainConfig) -> ImageSet | None:
    """A fixed sample of training images to score without augmentation; drawn with numpy so the
    training RNG (and hence the run) is the same with or without it."""
    if not config.measure_train_gap:
        return None
    rng = np.random.default_rng([config.split_seed, 23])
    index = np.sort(rng.permutation(len(train))[:GAP_SAMPLE])
    return ImageSet(train.images[index], train.labels[index], [train.records[i] for i in index])


def _build_model(config: TrainConfig, preprocess: Preprocess, console: Console) -> nn.Module:
    torch.manual_seed(config.seed)  # the same seed gives the same initial weights in every cell of a study
    model = create_model(config.arch, in_channels=preprocess.channels, image_size=preprocess.image_size)
    if config.weights:
        report = load_pretrained(model, config.arch, Path(config.weights))
        console.print(f"{config.weights}: loaded {report.loaded} of {report.model_tensors} backbone tensors "
                      "(the classifier head starts fresh)", highlight=False, soft_wrap=True)
    return model.to(memory_format=torch.channels_last)


EpochCallback = Callable[[EpochRecord], None]


def train(data: PreparedData, config: TrainConfig, console: Console, label: str = "",
          on_epoch: EpochCallback | None = None) -> TrainedModel:
    """Train one model; `on_epoch` sees each epoch's record as it ends (a run folder writes metrics.csv)."""
    preprocess = config.preprocess
    device = config.torch_device
    model = _build_model(config, preprocess, console).to(device)
    optimizer = _make_optimizer(model, config)
    step_model = torch.compile(model) if config.compile else model  # shares the parameters; saved uncompiled
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.lr_factor, patience=config.lr_patience)
    augmentation = build_augmentation(config.augmentation).to(device)
    shuffle = torch.Generator().manual_seed(config.seed)
    loss_function = make_loss(config.imbalance, data.train.labels, device)
    train_set, gap_set = data.train, _gap_sample(data.train, config)
    history: list[EpochRecord] = []
    best_loss, best_epoch, best_state, seconds_to_best = float("inf"), 0, None, 0.0
    started = time.perf_counter()
    images_trained, seconds_training = 0, 0.0  # throughput excludes validation passes
    label = label or f"{config.arch}/{config.optimizer}"

    with _EpochProgress(console, label) as bar:
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            task = bar.start(epoch, len(train_set))
            order = epoch_order(config.imbalance, train_set.labels, shuffle)
            loss_sum, correct, seen = 0.0, 0, 0
            for index, batch in iter_batches(train_set.images, order, config.batch_size):
                labels = train_set.labels[index].to(device)
                pixels = augment(augmentation, batch.to(device).float().div_(255.0))
                pixels, targets = soften(pixels, labels, config)
                logits, loss = train_step(step_model, optimizer, loss_function, preprocess.normalize(pixels),
                                          targets, config.use_bf16)
                loss_sum += loss * len(index)
                correct += int(((logits > 0).float() == labels).sum())
                seen += len(index)
                bar.update(task, seen, loss_sum / seen, correct / seen)
            bar.finish(task)
            images_trained += seen
            seconds_training += time.perf_counter() - epoch_start

            probabilities = predict_with(model, preprocess.normalize, data.val.images)
            if not (math.isfinite(loss_sum) and np.isfinite(probabilities).all()):
                raise PneumoscanError(f"{label}: training diverged at epoch {epoch} (the loss or the model's outputs "
                                      "are not finite); lower the learning rate (now "
                                      f"{optimizer.param_groups[0]['lr']:.3g})")
            val_loss = _bce(probabilities, data.val.labels)
            val = screening_metrics(data.val.labels.numpy(), probabilities, threshold=0.5)
            clean_loss = clean_acc = None
            if gap_set is not None:
                clean = predict_with(model, preprocess.normalize, gap_set.images)
                clean_loss = round(_bce(clean, gap_set.labels), 6)
                clean_acc = round(float(np.mean((clean >= 0.5) == gap_set.labels.numpy().astype(bool))), 6)
            record = EpochRecord(
                epoch=epoch, train_loss=round(loss_sum / max(seen, 1), 6), train_acc=round(correct / max(seen, 1), 6),
                val_loss=round(val_loss, 6), val_acc=round(val.accuracy or 0.0, 6),
                val_auc=round(val.roc_auc, 6) if val.roc_auc is not None else float("nan"),
                lr=optimizer.param_groups[0]["lr"], seconds=round(time.perf_counter() - epoch_start, 2),
                train_clean_loss=clean_loss, train_clean_acc=clean_acc)
            history.append(record)
            if on_epoch is not None:
                on_epoch(record)
            improved = val_loss < best_loss - 1e-6
            console.print(
                f"{label} epoch {epoch:>2}: train loss {record.train_loss:.4f} acc {record.train_acc:.3f} | "
                f"val loss {record.val_loss:.4f} acc {record.val_acc:.3f} auc {record.val_auc:.3f} | "
                f"lr {record.lr:.2g} | {record.seconds:.0f}s" + (" *" if improved else ""),
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
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()  # as it is saved and loaded
    return TrainedModel(model=model, preprocess=preprocess, history=history, best_epoch=best_epoch,
                        seconds=round(time.perf_counter() - started, 1), seconds_to_best=round(seconds_to_best, 1),
                        train_images_per_second=round(images_trained / max(seconds_training, 1e-9), 1))


def validation_loss(probabilities: np.ndarray, labels: torch.Tensor) -> float:
    """The loss early stopping used, for callers that score the restored model again."""
    return _bce(probabilities, labels)

