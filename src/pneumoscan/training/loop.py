"""The training loop, and nothing else: BCE on one logit, early stopping with best-weights restore,
ReduceLROnPlateau. Choosing a threshold, fitting the guard and writing a bundle happen afterwards,
in pneumoscan.pipeline.packaging.

Images arrive as one uint8 tensor decoded once; each batch is augmented on the whole batch,
normalized, and run in channels_last with bf16 autocast where the config asks for it.
"""

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
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
from pneumoscan.data.streaming import take
from pneumoscan.errors import PneumoscanError
from pneumoscan.metrics import screening_metrics
from pneumoscan.models.inference import predict_with
from pneumoscan.models.pretrained import load_pretrained
from pneumoscan.models.registry import create_model
from pneumoscan.training.checkpoint import Checkpoint, LoopState, order_fingerprint
from pneumoscan.training.distributed import Distributed
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
               inputs: torch.Tensor, targets: torch.Tensor, autocast: torch.dtype | None,
               scaler: "torch.amp.GradScaler | None" = None) -> tuple[torch.Tensor, float]:
    """One optimizer step under autocast (`autocast` None: float32); fp16 needs `scaler` (loss scaling keeps small
    gradients from underflowing). Returns the batch's logits (float32, detached) and loss."""
    model.train()
    with torch.autocast(inputs.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        logits = model(inputs.contiguous(memory_format=torch.channels_last))
    logits = logits.float().squeeze(1)
    loss = loss_function(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
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


def _build_model(config: TrainConfig, preprocess: Preprocess, console: Console, pretrained: bool = True) -> nn.Module:
    torch.manual_seed(config.seed)  # the same seed gives the same initial weights in every cell of a study
    model = create_model(config.arch, in_channels=preprocess.channels, image_size=preprocess.image_size)
    if config.weights and pretrained:  # not when resuming: the checkpoint's weights replace them anyway
        report = load_pretrained(model, config.arch, Path(config.weights))
        console.print(f"{config.weights}: loaded {report.loaded} of {report.model_tensors} backbone tensors "
                      "(the classifier head starts fresh)", highlight=False, soft_wrap=True)
    return model.to(memory_format=torch.channels_last)


EpochCallback = Callable[[list[EpochRecord]], None]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on request (Ctrl-C, SIGTERM) after saving a checkpoint; the message says how to resume."""


class _StopRequest:
    """SIGINT and SIGTERM ask the loop to stop at the next batch boundary and save a checkpoint (a model is never
    saved half-way through an optimizer step); a second Ctrl-C stops at once. Installed only in the main thread,
    where Python delivers signals."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]


def _epoch_positions(order: torch.Tensor, batch_size: int, dist: Distributed) -> tuple[torch.Tensor, int]:
    """This rank's order for one epoch and its per-step batch: each global batch of `batch_size` positions is
    shared out (rank r takes r, r+N, ...); a last global batch too small to give every rank two images is dropped
    (BatchNorm cannot train on one image, and every rank must take the same number of steps)."""
    keep = len(order) // batch_size * batch_size
    if len(order) - keep >= 2 * dist.world_size:
        keep = len(order)
    order = order[:keep]
    if not dist.enabled:
        return order, batch_size
    local = [dist.shard(order[start : start + batch_size]) for start in range(0, keep, batch_size)]
    return (torch.cat(local) if local else order), batch_size // dist.world_size


def _score(model: nn.Module, preprocess: Preprocess, images: torch.Tensor, dist: Distributed) -> np.ndarray:
    """P(pneumonia) for every image; under torchrun each rank scores its share and the shares are gathered."""
    if not dist.enabled:
        return predict_with(model, preprocess.normalize, images)
    share = take(images, torch.arange(dist.rank, len(images), dist.world_size))  # stays streamed when streamed
    local = predict_with(model, preprocess.normalize, share)
    return dist.gather_scores(local, len(images))


def _rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _check_setup(config: TrainConfig, dist: Distributed, device: torch.device) -> None:
    if dist.enabled and (config.batch_size % dist.world_size or config.batch_size < 2 * dist.world_size):
        raise PneumoscanError(f"batch_size {config.batch_size} is the global batch: it must be divisible by the "
                              f"{dist.world_size} processes and give each at least 2 images per step")
    if config.autocast_dtype == torch.float16 and device.type != "cuda":
        raise PneumoscanError("precision fp16 needs a CUDA GPU (on a CPU use bf16 or fp32)")


@dataclass
class _Trainer:
    """Everything one training run holds between epochs (model, optimizer, schedules, random streams), so that each
    step of the loop is one method: restore from a checkpoint, train an epoch, validate, decide, checkpoint."""

    data: PreparedData
    config: TrainConfig
    console: Console
    label: str
    dist: Distributed
    device: torch.device
    run_dir: Path | None
    command: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    shuffle: torch.Generator
    scaler: torch.amp.GradScaler | None
    fingerprint: str
    history: list[EpochRecord]
    started: float = 0.0

    def restore(self, resume: Checkpoint) -> LoopState:
        """The model, optimizer, scheduler and every random stream as the checkpoint left them; its loop state."""
        if resume.fingerprint != self.fingerprint:
            raise PneumoscanError(f"{self.run_dir}: the training or validation images differ from those the "
                                  "checkpoint was trained on (files added, removed or unreadable); cannot resume")
        if resume.world_size != self.dist.world_size:
            raise PneumoscanError(f"{self.run_dir}: the checkpoint was written by {resume.world_size} process(es); "
                                  f"resume with the same number (now {self.dist.world_size})")
        self.model.load_state_dict(resume.model)
        self.optimizer.load_state_dict(resume.optimizer)
        self.scheduler.load_state_dict(resume.scheduler)
        self.shuffle.set_state(resume.rng["shuffle"])
        if self.scaler is not None and resume.rng.get("scaler"):
            self.scaler.load_state_dict(resume.rng["scaler"])
        own = resume.rng["ranks"][self.dist.rank]
        torch.set_rng_state(own["torch"])
        if "cuda" in own and self.device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda"], self.device)
        return resume.loop

    def checkpoint(self, loop: LoopState) -> None:
        """Every rank takes part (each rank's random state is gathered); rank 0 writes."""
        ranks = self.dist.gather_objects(_rng_states(self.device))
        if self.run_dir is None or not self.dist.is_main:
            return
        loop.history = [asdict(record) for record in self.history]
        loop.seconds = time.perf_counter() - self.started
        Checkpoint(config=asdict(self.config), fingerprint=self.fingerprint, world_size=self.dist.world_size,
                   model={k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                   optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                   rng={"shuffle": self.shuffle.get_state(), "ranks": ranks,
                        "scaler": self.scaler.state_dict() if self.scaler is not None else {}}, loop=loop,
                   command=self.command).save(self.run_dir)

    def _stop(self, state: LoopState, epoch: int, order: torch.Tensor, step: int, sums: tuple[float, int, int],
              epoch_start: float) -> TrainingInterrupted:
        """Checkpoint in the middle of an epoch (the order and the batch to go on from) and say how to resume."""
        loss_sum, correct, seen = self.dist.sum(*sums)
        main = self.dist.is_main
        self.checkpoint(LoopState(**{**asdict(state), "epochs_done": epoch - 1, "order": order, "next_batch": step,
                                     "loss_sum": loss_sum if main else 0.0, "correct": int(correct) if main else 0,
                                     "seen": int(seen) if main else 0,
                                     "epoch_seconds": time.perf_counter() - epoch_start}))
        return TrainingInterrupted(f"{self.label}: stopped in epoch {epoch} after {step} batch(es); checkpoint saved: "
                                   f"continue with `pneumoscan train --resume {self.run_dir}`"
                                   if self.run_dir is not None else f"{self.label}: stopped in epoch {epoch}")

    def train_epoch(self, epoch: int, state: LoopState, step_model: nn.Module, augmentation: nn.Module,
                    loss_function: LossFunction, bar: "_EpochProgress", stop: "_StopRequest") -> tuple[float, int, int]:
        """One pass over the training images (from where a stopped epoch left off); (loss sum, correct, seen) over
        all ranks."""
        config, dist, train_set = self.config, self.dist, self.data.train
        epoch_start = time.perf_counter() - state.epoch_seconds
        if state.order is not None:  # an epoch stopped between two batches: go on from there
            order, first = state.order, state.next_batch
            # the stored sums are over all ranks: rank 0 carries them, the others start from zero
            loss_sum, correct, seen = (state.loss_sum, state.correct, state.seen) if dist.is_main else (0.0, 0, 0)
        else:
            order, first = epoch_order(config.imbalance, train_set.labels, self.shuffle), 0
            loss_sum, correct, seen = 0.0, 0, 0
        state.order, state.epoch_seconds = None, 0.0
        local, local_batch = _epoch_positions(order, config.batch_size, dist)
        task = bar.start(epoch, len(local))
        step = first
        for index, batch in iter_batches(train_set.images, local[first * local_batch :], local_batch):
            if dist.any(stop.requested):
                raise self._stop(state, epoch, order, step, (loss_sum, correct, seen), epoch_start)
            labels = train_set.labels[index].to(self.device)
            pixels = augment(augmentation, batch.to(self.device).float().div_(255.0))
            pixels, targets = soften(pixels, labels, config)
            logits, loss = train_step(step_model, self.optimizer, loss_function, config.preprocess.normalize(pixels),
                                      targets, config.autocast_dtype, self.scaler)
            loss_sum += loss * len(index)
            correct += int(((logits > 0).float() == labels).sum())
            seen += len(index)
            step += 1
            bar.update(task, min(seen, len(local)), loss_sum / seen, correct / seen)
        bar.finish(task)
        if dist.enabled:  # the model every rank validates (and rank 0 saves) has rank 0's BatchNorm statistics
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, 0)
            loss_sum, correct, seen = dist.sum(loss_sum, correct, seen)
            correct, seen = int(correct), int(seen)
        state.images_trained += seen
        state.seconds_training += time.perf_counter() - epoch_start
        return loss_sum, correct, seen

    def validate(self, epoch: int, sums: tuple[float, int, int], epoch_start: float,
                 gap_set: ImageSet | None) -> tuple[EpochRecord, float]:
        """The epoch's record (validation metrics at 0.5, the training gap sample if any) and its validation loss;
        a loss or an output that is not finite stops the run with the learning rate to lower."""
        loss_sum, correct, seen = sums
        preprocess, data = self.config.preprocess, self.data
        probabilities = _score(self.model, preprocess, data.val.images, self.dist)
        if not (math.isfinite(loss_sum) and np.isfinite(probabilities).all()):
            raise PneumoscanError(f"{self.label}: training diverged at epoch {epoch} (the loss or the model's outputs "
                                  "are not finite); lower the learning rate (now "
                                  f"{self.optimizer.param_groups[0]['lr']:.3g})")
        val_loss = _bce(probabilities, data.val.labels)
        val = screening_metrics(data.val.labels.numpy(), probabilities, threshold=0.5)
        clean_loss = clean_acc = None
        if gap_set is not None and self.dist.is_main:
            clean = predict_with(self.model, preprocess.normalize, gap_set.images)
            clean_loss = round(_bce(clean, gap_set.labels), 6)
            clean_acc = round(float(np.mean((clean >= 0.5) == gap_set.labels.numpy().astype(bool))), 6)
        record = EpochRecord(
            epoch=epoch, train_loss=round(loss_sum / max(seen, 1), 6), train_acc=round(correct / max(seen, 1), 6),
            val_loss=round(val_loss, 6), val_acc=round(val.accuracy or 0.0, 6),
            val_auc=round(val.roc_auc, 6) if val.roc_auc is not None else float("nan"),
            lr=self.optimizer.param_groups[0]["lr"], seconds=round(time.perf_counter() - epoch_start, 2),
            train_clean_loss=clean_loss, train_clean_acc=clean_acc)
        return record, val_loss

    def decide(self, state: LoopState, epoch: int, record: EpochRecord, val_loss: float) -> None:
        """Print the epoch; keep the best weights; stop early after `patience` epochs without a better validation
        loss, else let the learning-rate schedule see it."""
        improved = val_loss < state.best_loss - 1e-6
        self.console.print(
            f"{self.label} epoch {epoch:>2}: train loss {record.train_loss:.4f} acc {record.train_acc:.3f} | "
            f"val loss {record.val_loss:.4f} acc {record.val_acc:.3f} auc {record.val_auc:.3f} | "
            f"lr {record.lr:.2g} | {record.seconds:.0f}s" + (" *" if improved else ""),
            highlight=False, soft_wrap=True,
        )
        state.epochs_done = epoch
        if improved:
            state.best_loss, state.best_epoch = val_loss, epoch
            state.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            state.seconds_to_best = time.perf_counter() - self.started
        elif epoch - state.best_epoch >= self.config.patience:
            self.console.print(f"{self.label}: early stop, no better validation loss for {self.config.patience} "
                               "epochs")
            state.finished = True
        if not state.finished:
            self.scheduler.step(val_loss)
        state.finished = state.finished or epoch >= self.config.epochs

    def finished_model(self, state: LoopState) -> TrainedModel:
        """The best epoch's weights on the CPU, in eval mode, as they are saved and loaded."""
        model = self.model.to("cpu")
        if state.best_state is not None:
            model.load_state_dict(state.best_state)
        model = model.to(memory_format=torch.contiguous_format).eval()
        return TrainedModel(model=model, preprocess=self.config.preprocess, history=self.history,
                            best_epoch=state.best_epoch, seconds=round(time.perf_counter() - self.started, 1),
                            seconds_to_best=round(state.seconds_to_best, 1),
                            train_images_per_second=round(state.images_trained / max(state.seconds_training, 1e-9),
                                                          1))


def _trainer(data: PreparedData, config: TrainConfig, console: Console, label: str, dist: Distributed,
             run_dir: Path | None, resume: Checkpoint | None, command: str) -> _Trainer:
    """The model, optimizer, schedule and random streams of a new run (seeded as every run is)."""
    device = dist.device(config.torch_device)
    _check_setup(config, dist, device)
    model = _build_model(config, config.preprocess, console, pretrained=resume is None).to(device)
    if dist.rank > 0:  # each rank augments its own images with its own stream (rank 0 keeps the one-process stream)
        torch.manual_seed(config.seed * 1000 + dist.rank)
    optimizer = _make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.lr_factor, patience=config.lr_patience)
    return _Trainer(data=data, config=config, console=console, label=label or f"{config.arch}/{config.optimizer}",
                    dist=dist, device=device, run_dir=run_dir, command=command, model=model, optimizer=optimizer,
                    scheduler=scheduler, shuffle=torch.Generator().manual_seed(config.seed),
                    scaler=torch.amp.GradScaler("cuda") if config.autocast_dtype == torch.float16 else None,
                    fingerprint=order_fingerprint(data.train.records, data.val.records), history=[])


def _step_model(trainer: _Trainer) -> nn.Module:
    """The module each step runs: DistributedDataParallel under torchrun, compiled with `compile`; it shares the
    parameters of `trainer.model`, which is what is saved."""
    wrapped: nn.Module = trainer.model
    if trainer.dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        device = trainer.device
        wrapped = DistributedDataParallel(trainer.model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(wrapped) if trainer.config.compile else wrapped


def train(data: PreparedData, config: TrainConfig, console: Console, label: str = "",
          on_epoch: EpochCallback | None = None, run_dir: Path | None = None,
          resume: Checkpoint | None = None, dist: Distributed | None = None, command: str = "") -> TrainedModel:
    """Train one model; `on_epoch` sees the history as each epoch ends (a run folder writes metrics.csv).

    With `run_dir`, a checkpoint is written there atomically after every epoch and when Ctrl-C or SIGTERM
    stops the run between two batches (then TrainingInterrupted is raised); `resume` continues from one.
    Under torchrun (`dist`), each rank trains on its share of every global batch through
    DistributedDataParallel and only rank 0 prints and writes.
    """
    dist = dist or Distributed()
    if not dist.is_main:
        console = Console(quiet=True)
    trainer = _trainer(data, config, console, label, dist, run_dir, resume, command)
    state = trainer.restore(resume) if resume is not None else LoopState()
    step_model = _step_model(trainer)
    augmentation = build_augmentation(config.augmentation).to(trainer.device)
    loss_function = make_loss(config.imbalance, data.train.labels, trainer.device)
    gap_set = _gap_sample(data.train, config)
    trainer.history = [EpochRecord(**record) for record in state.history]
    trainer.started = time.perf_counter() - state.seconds
    with _EpochProgress(console, trainer.label) as bar, _StopRequest() as stop:
        epoch = state.epochs_done
        while not state.finished and epoch < config.epochs:
            epoch += 1
            epoch_start = time.perf_counter() - state.epoch_seconds
            sums = trainer.train_epoch(epoch, state, step_model, augmentation, loss_function, bar, stop)
            record, val_loss = trainer.validate(epoch, sums, epoch_start, gap_set)
            trainer.history.append(record)
            trainer.decide(state, epoch, record, val_loss)
            trainer.checkpoint(state)  # before metrics.csv: a full disk there still leaves this epoch resumable
            if on_epoch is not None and dist.is_main:
                on_epoch(trainer.history)
        if dist.any(stop.requested):  # asked to stop during the last epoch's validation: packaging is all that is left
            raise TrainingInterrupted(f"{trainer.label}: stopped after the last epoch; checkpoint saved: package it "
                                      f"with `pneumoscan train --resume {run_dir}`" if run_dir is not None
                                      else f"{trainer.label}: stopped after the last epoch")
    return trainer.finished_model(state)


def validation_loss(probabilities: np.ndarray, labels: torch.Tensor) -> float:
    """The loss early stopping used, for callers that score the restored model again."""
    return _bce(probabilities, labels)

