"""The figures of training: train vs validation curves per run, a study's cells overlaid, and the self-supervised
pre-training curve. PNG, 150 dpi, written atomically through `pneumoscan.plotting` (the figures drawn from an
evaluation are in `pneumoscan.evaluation.figures`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pneumoscan.plotting import plt, save_figure
from pneumoscan.training.loop import EpochRecord
from pneumoscan.training.self_supervised import PretrainEpoch


def training_curves(histories: Mapping[str, Sequence[Sequence[EpochRecord]]], path: Path) -> Path:
    """Accuracy (top) and loss (bottom), train vs validation; one column per run group, a line per seed."""
    names = list(histories)
    figure, axes = plt.subplots(2, len(names), figsize=(5.2 * len(names), 7.5), squeeze=False, sharey="row")
    for column, name in enumerate(names):
        runs = histories[name]
        for row, (metric, label) in enumerate((("acc", "accuracy"), ("loss", "loss"))):
            axis = axes[row][column]
            for seed, history in enumerate(runs):
                epochs = [h.epoch for h in history]
                first = seed == 0
                axis.plot(epochs, [getattr(h, f"train_{metric}") for h in history], color="tab:blue", alpha=0.8,
                          linestyle="--", label="train (augmented batches)" if first else None)
                clean = [getattr(h, f"train_clean_{metric}") for h in history]
                if all(value is not None for value in clean):
                    axis.plot(epochs, clean, color="tab:green", alpha=0.8, linestyle="-.",
                              label="train, scored like validation" if first else None)
                axis.plot(epochs, [getattr(h, f"val_{metric}") for h in history], color="tab:orange", alpha=0.9,
                          label="validation" if first else None)
                best = min(history, key=lambda h: h.val_loss).epoch
                axis.axvline(best, color="grey", linestyle=":", alpha=0.7,
                             label="best epoch (restored)" if first else None)
            axis.set_xlabel("epoch")
            axis.set_ylabel(label)
            axis.grid(alpha=0.3)
            axis.legend(loc="best", fontsize=8)
            if row == 0:
                axis.set_title(f"{name} ({len(runs)} seed{'s' if len(runs) != 1 else ''})")
    figure.suptitle("Training curves: train (dashed) vs validation (solid)")
    figure.tight_layout()
    return save_figure(figure, path)


def pretrain_curve(history: Sequence[PretrainEpoch], path: Path) -> Path:
    """Self-supervised pre-training: NT-Xent loss and how often a view's nearest neighbour is its pair."""
    figure, (loss_axis, pair_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [h.epoch for h in history]
    loss_axis.plot(epochs, [h.loss for h in history], color="tab:blue")
    loss_axis.set(xlabel="epoch", ylabel="NT-Xent loss", title="contrastive loss")
    pair_axis.plot(epochs, [h.view_accuracy for h in history], color="tab:green")
    pair_axis.set(xlabel="epoch", ylabel="share", title="view's nearest neighbour is its pair", ylim=(0, 1))
    for axis in (loss_axis, pair_axis):
        axis.grid(alpha=0.3)
    figure.suptitle("Self-supervised pre-training (SimCLR), no labels")
    figure.tight_layout()
    return save_figure(figure, path)


def study_curves(cells: Mapping[str, Sequence[Sequence[EpochRecord]]], path: Path) -> Path:
    """Every cell of a study overlaid: validation accuracy and loss per epoch, a thin line per seed and
    the mean over seeds in bold, one colour per cell; with a measured gap, the clean training loss dashed."""
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for number, (name, runs) in enumerate(cells.items()):
        colour = colours[number % len(colours)]
        for axis, metric in zip(axes, ("acc", "loss"), strict=True):
            longest = max(len(history) for history in runs)
            stacked = np.full((len(runs), longest), np.nan)
            for seed, history in enumerate(runs):
                values = [getattr(h, f"val_{metric}") for h in history]
                stacked[seed, : len(values)] = values
                axis.plot(range(1, len(values) + 1), values, color=colour, alpha=0.3, linewidth=0.8)
            axis.plot(range(1, longest + 1), np.nanmean(stacked, axis=0), color=colour, linewidth=2.2,
                      label=f"{name} (validation, mean of {len(runs)})")
            clean = [[getattr(h, f"train_clean_{metric}") for h in history] for history in runs]
            if all(value is not None for values in clean for value in values):
                stacked_clean = np.full((len(runs), longest), np.nan)
                for seed, values in enumerate(clean):
                    stacked_clean[seed, : len(values)] = values
                axis.plot(range(1, longest + 1), np.nanmean(stacked_clean, axis=0), color=colour, linewidth=1.6,
                          linestyle="--", label=f"{name} (training images, unaugmented)")
    for axis, title in zip(axes, ("accuracy", "loss"), strict=True):
        axis.set_xlabel("epoch")
        axis.set_ylabel(title)
        axis.set_title(f"Validation {title} per epoch")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7.5, loc="best")
    figure.suptitle("Study: every cell overlaid (thin: one seed; bold: mean over seeds)")
    figure.tight_layout()
    return save_figure(figure, path)
