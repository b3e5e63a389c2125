"""Every figure drawn from an evaluation (confusion matrix, ROC, PR, reliability, threshold, sample predictions,
Grad-CAM, weeks and monitoring, the architecture diagram, the audit's films): PNG, 150 dpi, labelled, written
atomically. The training curves are in `pneumoscan.training.figures`; both save through `pneumoscan.plotting`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.font_manager import FontProperties
from matplotlib.patches import FancyBboxPatch
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from pneumoscan import CLASS_NAMES
from pneumoscan.evaluation.architecture import BlockInfo
from pneumoscan.metrics import Confusion, Reliability
from pneumoscan.plotting import plt, save_figure

if TYPE_CHECKING:
    from pneumoscan.evaluation.audit import AuditResult, SwapExample
    from pneumoscan.evaluation.monitoring import MonitoringResult, WeekResult

AUDIT_FIGURES = ("audit_swaps.png", "audit_attention.png")


def confusion_matrix_figure(confusion: Confusion, path: Path, title: str = "Confusion matrix") -> Path:
    counts = np.array([[confusion.tn, confusion.fp], [confusion.fn, confusion.tp]])
    row_totals = counts.sum(axis=1, keepdims=True)
    percent = np.divide(counts, row_totals, out=np.zeros_like(counts, dtype=float), where=row_totals > 0) * 100
    figure, axis = plt.subplots(figsize=(5.2, 4.6))
    image = axis.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    for i in range(2):
        for j in range(2):
            axis.text(j, i, f"{counts[i, j]}\n{percent[i, j]:.1f}%", ha="center", va="center", fontsize=13,
                      color="white" if percent[i, j] > 60 else "black")
    axis.set_xticks([0, 1], [f"predicted\n{c}" for c in CLASS_NAMES])
    axis.set_yticks([0, 1], [f"true\n{c}" for c in CLASS_NAMES])
    axis.set_title(title)
    figure.colorbar(image, ax=axis, label="% of true class (row)")
    figure.tight_layout()
    return save_figure(figure, path)


def roc_figure(labels: np.ndarray, probabilities: np.ndarray, threshold: float, path: Path) -> Path:
    false_positive_rate, true_positive_rate, _ = roc_curve(labels, probabilities)
    area = auc(false_positive_rate, true_positive_rate)
    predicted = probabilities >= threshold
    operating_tpr = predicted[labels == 1].mean() if (labels == 1).any() else np.nan
    operating_fpr = predicted[labels == 0].mean() if (labels == 0).any() else np.nan
    figure, axis = plt.subplots(figsize=(5.2, 5))
    axis.plot(false_positive_rate, true_positive_rate, color="tab:blue", label=f"ROC (AUC = {area:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    axis.scatter([operating_fpr], [operating_tpr], color="tab:red", zorder=3, label=f"threshold {threshold:.2f}")
    axis.set_xlabel("1 - specificity (false positive rate)")
    axis.set_ylabel("sensitivity (true positive rate)")
    axis.set_title("ROC curve")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    figure.tight_layout()
    return save_figure(figure, path)


def sample_predictions(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, threshold: float,
                       path: Path, columns: int = 4, rows: int = 4, seed: int = 0) -> Path:
    """A grid of evaluated images: errors first (red titles), then correct ones, a seeded pick."""
    rng = np.random.default_rng(seed)
    predicted = (probabilities >= threshold).astype(int)
    wrong = np.flatnonzero(predicted != labels)
    right = np.flatnonzero(predicted == labels)
    n_total = min(columns * rows, len(labels))
    n_wrong = min(len(wrong), n_total // 2)
    chosen = np.concatenate([rng.permutation(wrong)[:n_wrong], rng.permutation(right)[: n_total - n_wrong]])
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows))
    for axis in np.ravel(axes):
        axis.axis("off")
    for axis, index in zip(np.ravel(axes), chosen, strict=False):  # more axes than images is fine
        error = predicted[index] != labels[index]
        axis.imshow(images[index], cmap="gray", vmin=0, vmax=255)
        axis.set_title(
            f"true {CLASS_NAMES[labels[index]]}\npred {CLASS_NAMES[predicted[index]]} (p={probabilities[index]:.2f})"
            + ("  ✗" if error else ""),
            fontsize=8.5, color="tab:red" if error else "black",
        )
        if error:
            for spine in axis.spines.values():
                spine.set_visible(True)
                spine.set_color("tab:red")
                spine.set_linewidth(3)
            axis.axis("on")
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle(f"Sample predictions ({n_wrong} errors shown in red, p = P(pneumonia))")
    figure.tight_layout()
    return save_figure(figure, path)


def temporal_performance(weekly: Mapping[str, Sequence[WeekResult]], path: Path) -> Path:
    """Per-week accuracy, sensitivity and specificity, one line per model."""
    metrics = ("accuracy", "sensitivity", "specificity")
    figure, axes = plt.subplots(1, 3, figsize=(14, 4.2), sharey=True)
    for axis, metric in zip(axes, metrics, strict=True):
        for name, rows in weekly.items():
            weeks = [r.week for r in rows]
            values = [np.nan if r.metrics.value(metric) is None else r.metrics.value(metric) for r in rows]
            axis.plot(weeks, values, marker="o", label=name)
        axis.set_title(metric)
        axis.set_xlabel("simulated week")
        axis.set_xticks(weeks)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("score")
    axes[-1].legend(loc="lower right")
    figure.suptitle("Temporal performance: evaluated images streamed as consecutive weeks")
    figure.tight_layout()
    return save_figure(figure, path)


_BLOCK_COLOURS = {"Conv": "#cfe2f3", "Linear": "#d9ead3", "Pool": "#fff2cc", "Dropout": "#f4cccc", "Flatten": "#eeeeee"}
_LAYER_COLUMN = 4.6  # inches for a block's layer list
_LAYER_LINES = 3  # a layer list longer than this, even with repeats collapsed, is summarised by counts
_PAD = 0.12  # inches between a column's edge and its text
_LINE = 0.17  # inches per line of 8 pt text
_GAP = 0.28  # inches between boxes (the arrow)


def abbreviate_layers(kind: str) -> str:
    """A block's layer list ("Conv2d > BatchNorm2d > ...") with Identity dropped and runs collapsed:
    a sequence repeated k times in a row reads "k × (A > B)" (the repeat covering most layers wins)."""
    tokens = [t for t in kind.split(" > ") if t != "Identity"] or kind.split(" > ")
    parts: list[str] = []
    i = 0
    while i < len(tokens):
        period, repeats = 1, 1
        for p in range(1, (len(tokens) - i) // 2 + 1):
            k = 1
            while tokens[i + k * p:i + (k + 1) * p] == tokens[i:i + p]:
                k += 1
            if k > 1 and k * p > period * repeats:
                period, repeats = p, k
        unit = " > ".join(tokens[i:i + period])
        parts.append(unit if repeats == 1 else f"{repeats} × ({unit})" if period > 1 else f"{repeats} × {unit}")
        i += period * repeats
    return " > ".join(parts)


def _layer_counts(kind: str) -> str:
    """The layer list as counts per type, in order of first appearance."""
    tokens = [t for t in kind.split(" > ") if t != "Identity"] or kind.split(" > ")
    counts = Counter(tokens)
    return f"{len(tokens)} layers: " + ", ".join(f"{n} {name}" for name, n in counts.items())


def _wrap(text: str, fits: Callable[[str], bool]) -> list[str]:
    """Greedy wrap at spaces; ">" stays at the end of the line before the break, "3 × Conv2d" stays whole."""
    words: list[str] = []
    for word in text.split(" "):
        if words and (word in (">", "×") or words[-1].endswith("×")):
            words[-1] += " " + word
        else:
            words.append(word)
    lines: list[str] = []
    for word in words:
        if lines and fits(f"{lines[-1]} {word}"):
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def architecture_diagram(blocks: Sequence[BlockInfo], input_shape: tuple[int, ...], title: str, path: Path) -> Path:
    """Boxes top to bottom, one per block of the model: name, layers, output shape and parameter count in
    columns sized to their widest text; long layer lists are abbreviated and wrapped, rows grow with them."""
    figure = plt.figure()
    renderer = figure.canvas.get_renderer()

    def width(text: str, size: float, **style: str) -> float:  # inches
        pixels, _, _ = renderer.get_text_width_height_descent(text, FontProperties(size=size, **style), ismath=False)
        return pixels / figure.dpi

    rows = [("input", "image", input_shape, 0), *((b.name, b.kind, b.output_shape, b.parameters) for b in blocks)]
    names = [name for name, *_ in rows]
    shapes = ["x".join(map(str, shape)) for _, _, shape, _ in rows]
    counts = [f"{params:,}" if params else "" for *_, params in rows]
    headers = ("block", "layers", "output shape", "parameters")

    def fits(line: str) -> bool:
        return width(line, 8) <= _LAYER_COLUMN - 2 * _PAD

    layers: list[list[str]] = []
    for _, kind, _, _ in rows:
        lines = _wrap(abbreviate_layers(kind), fits)
        layers.append(lines if len(lines) <= _LAYER_LINES else _wrap(_layer_counts(kind), fits))
    columns = [max(width(n, 9, weight="bold") for n in names), _LAYER_COLUMN - 2 * _PAD,
               max(width(s, 9, family="monospace") for s in [*shapes, "x"]),
               max(width(c, 9, family="monospace") for c in [*counts, "0"])]
    columns = [max(c, width(h, 8)) + 2 * _PAD for c, h in zip(columns, headers, strict=True)]
    edges = np.concatenate([[0.0], np.cumsum(columns)])
    heights = [max(0.42, len(lines) * _LINE + 0.16) for lines in layers]
    total_width, total_height = float(edges[-1]), sum(heights) + _GAP * (len(rows) - 1) + 0.3
    figure.set_size_inches(total_width, total_height)
    axis = figure.add_axes((0, 0, 1, 1))
    axis.set_xlim(0, total_width)
    axis.set_ylim(-total_height, 0)
    axis.axis("off")
    for left, header in zip(edges[:-1], headers, strict=True):
        axis.text(left + _PAD, -0.15, header, va="center", fontsize=8, color="#555555")
    top = -0.3
    for i, ((_, kind, _, _), name, lines, shape, count, height) in enumerate(
            zip(rows, names, layers, shapes, counts, heights, strict=True)):
        y = top - height / 2
        colour = next((c for key, c in _BLOCK_COLOURS.items() if key in kind), "#ffffff")
        axis.add_patch(FancyBboxPatch((0.0, top - height), total_width, height,
                                      boxstyle="round,pad=0,rounding_size=0.06", facecolor=colour,
                                      edgecolor="#555555"))
        axis.text(edges[0] + _PAD, y, name, va="center", fontsize=9, fontweight="bold")
        axis.text(edges[1] + _PAD, y, "\n".join(lines), va="center", fontsize=8, linespacing=1.2)
        axis.text(edges[2] + _PAD, y, shape, va="center", fontsize=9, family="monospace")
        axis.text(edges[4] - _PAD, y, count, va="center", ha="right", fontsize=9, family="monospace")
        if i:
            axis.annotate("", xy=(total_width / 2, top), xytext=(total_width / 2, top + _GAP),
                          arrowprops={"arrowstyle": "->", "color": "#555555"})
        top -= height + _GAP
    axis.set_title(f"{title}: {sum(b.parameters for b in blocks):,} parameters", fontsize=11)
    return save_figure(figure, path)


def gradcam_figure(image: np.ndarray, heatmap: np.ndarray, probability: float, label: str, threshold: float,
                   title: str, path: Path) -> Path:
    """One X-ray beside its Grad-CAM overlay, with the probability and the decision in the title."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(7.2, 3.9))
    left.imshow(image, cmap="gray", vmin=0, vmax=255)
    left.set_title("X-ray", fontsize=9)
    right.imshow(image, cmap="gray", vmin=0, vmax=255)
    right.imshow(heatmap, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    right.set_title("Grad-CAM (red: raised the pneumonia score)", fontsize=9)
    for axis in (left, right):
        axis.axis("off")
    figure.suptitle(f"{title}\n{label}: P(pneumonia) = {probability:.3f} (threshold {threshold:.2f})", fontsize=10)
    figure.tight_layout()
    return save_figure(figure, path)


def gradcam_grid(images: np.ndarray, heatmaps: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                 threshold: float, path: Path, columns: int = 4) -> Path:
    """Grad-CAM overlays of the cases given (the caller picks correct and wrong ones); errors titled in red."""
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 3.3 * rows), squeeze=False)
    for axis in np.ravel(axes):
        axis.axis("off")
    for axis, image, heatmap, label, probability in zip(np.ravel(axes), images, heatmaps, labels, probabilities,
                                                        strict=False):
        predicted = int(probability >= threshold)
        axis.imshow(image, cmap="gray", vmin=0, vmax=255)
        axis.imshow(heatmap, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        axis.set_title(f"true {CLASS_NAMES[int(label)]}\npred {CLASS_NAMES[predicted]} (p={probability:.2f})",
                       fontsize=8.5, color="tab:red" if predicted != label else "black")
    figure.suptitle("Grad-CAM: correct and wrong cases (errors in red)")
    figure.tight_layout()
    return save_figure(figure, path)


def pr_figure(labels: np.ndarray, probabilities: np.ndarray, threshold: float, path: Path) -> Path:
    """Precision-recall: unlike ROC it shows how many flagged films are real pneumonia at this prevalence."""
    precision, recall, _ = precision_recall_curve(labels, probabilities)
    predicted = probabilities >= threshold
    figure, axis = plt.subplots(figsize=(5.2, 5))
    axis.plot(recall, precision, color="tab:blue",
              label=f"PR (average precision = {average_precision_score(labels, probabilities):.3f})")
    axis.axhline(labels.mean(), color="grey", linestyle=":", label=f"prevalence {labels.mean():.2f}")
    if predicted.any() and (labels == 1).any():
        axis.scatter([predicted[labels == 1].mean()], [labels[predicted].mean()], color="tab:red", zorder=3,
                     label=f"threshold {threshold:.2f}")
    axis.set_xlabel("sensitivity (recall)")
    axis.set_ylabel("PPV (precision)")
    axis.set_title("Precision-recall curve")
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left")
    figure.tight_layout()
    return save_figure(figure, path)


def reliability_figure(bins: Reliability, path: Path) -> Path:
    """Observed pneumonia rate against predicted probability per bin (the bins the ECE is computed on),
    with the bin sizes below."""
    count, filled = bins.counts, bins.counts > 0
    mean_predicted, observed, ece, bins = bins.mean_predicted[filled], bins.observed[filled], bins.ece, len(count)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5.2, 6), height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    top.plot(mean_predicted, observed, "o-", color="tab:blue", label=f"model (ECE = {ece:.3f})")
    top.set_ylabel("observed share of pneumonia")
    top.set_title("Reliability diagram")
    top.grid(alpha=0.3)
    top.legend(loc="upper left")
    bottom.bar((np.arange(bins) + 0.5) / bins, count, width=0.9 / bins, color="tab:grey")
    bottom.set_xlabel("predicted P(pneumonia)")
    bottom.set_ylabel("images")
    bottom.set_yscale("symlog")
    figure.tight_layout()
    return save_figure(figure, path)


def threshold_figure(labels: np.ndarray, probabilities: np.ndarray, operating_points: Mapping[str, float],
                     path: Path) -> Path:
    """Accuracy, sensitivity and specificity against the threshold, with named operating points marked."""
    grid = np.linspace(0.0, 1.0, 201)
    predicted = probabilities[None, :] >= grid[:, None]
    positive = labels == 1
    sensitivity = predicted[:, positive].mean(1) if positive.any() else np.full(len(grid), np.nan)
    specificity = (~predicted[:, ~positive]).mean(1) if (~positive).any() else np.full(len(grid), np.nan)
    accuracy = (predicted == positive[None, :]).mean(1)
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    axis.plot(grid, sensitivity, color="tab:red", label="sensitivity")
    axis.plot(grid, specificity, color="tab:blue", label="specificity")
    axis.plot(grid, accuracy, color="black", label="accuracy")
    for (name, value), color in zip(operating_points.items(), ("tab:green", "tab:purple", "tab:orange", "tab:brown"),
                                    strict=False):
        axis.axvline(value, color=color, linestyle="--", label=f"{name}: {value:.2f}")
    axis.set_xlabel("threshold on P(pneumonia)")
    axis.set_ylabel("rate")
    axis.set_ylim(0, 1.02)
    axis.set_title("Metrics against the decision threshold")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower center", fontsize=8, ncol=2)
    figure.tight_layout()
    return save_figure(figure, path)


def monitoring_figure(simulation: MonitoringResult, path: Path) -> Path:
    """Per-week metrics with CIs, mean predicted probability vs prevalence, and the label-free drift score."""
    rows = simulation.weeks
    weeks = np.array([r.week for r in rows])
    figure, axes = plt.subplots(3, 1, figsize=(9, 9.5), sharex=True, height_ratios=[3, 2, 2])
    for offset, (metric, color) in enumerate((("accuracy", "black"), ("sensitivity", "tab:red"),
                                              ("specificity", "tab:blue"))):
        values = np.array([np.nan if r.metrics.value(metric) is None else r.metrics.value(metric) for r in rows])
        low = np.array([np.nan if r.ci95[metric] is None else r.ci95[metric][0] for r in rows])  # type: ignore[index]
        high = np.array([np.nan if r.ci95[metric] is None else r.ci95[metric][1] for r in rows])  # type: ignore[index]
        axes[0].errorbar(weeks + (offset - 1) * 0.08, values, yerr=[values - low, high - values], marker="o",
                         capsize=3, color=color, label=metric)
    axes[0].set_ylabel("rate (95 % CI)")
    axes[0].legend(loc="lower left")
    axes[1].plot(weeks, [r.mean_probability for r in rows], marker="o", color="tab:purple",
                 label="mean P(pneumonia), no labels needed")
    axes[1].plot(weeks, [r.prevalence for r in rows], marker="s", linestyle="--", color="grey",
                 label="true prevalence (labels)")
    axes[1].set_ylabel("share")
    axes[1].legend(loc="lower left")
    scores = [0.0 if r.drift_p_value is None else -np.log10(max(r.drift_p_value, 1e-300)) for r in rows]
    axes[2].bar(weeks, scores, color=["tab:red" if r.flagged else "tab:green" for r in rows])
    axes[2].axhline(-np.log10(simulation.alpha), color="black", linestyle="--",
                    label=f"alarm level (p = {simulation.alpha:g})")
    axes[2].set_ylabel("drift score, -log10 p")
    axes[2].set_xlabel("simulated week")
    axes[2].legend(loc="upper left")
    drifted = [row.week for row in rows if row.drift_injected]
    for axis in axes:
        axis.grid(alpha=0.3)
        if drifted:
            axis.axvspan(min(drifted) - 0.5, max(drifted) + 0.5, color="tab:orange", alpha=0.08)
    drift = ", ".join(simulation.drifts) or "none"
    figure.suptitle(f"Deployment monitoring: drift injected = {drift} (shaded weeks); red bars = flagged")
    figure.tight_layout()
    return save_figure(figure, path)


def swap_examples_figure(examples: Sequence[SwapExample], threshold: float, path: Path) -> Path:
    """The audit's before/after films: one row per swap, pairs of the film as it is and swapped, each titled with
    the model's probability (red where the label flipped)."""
    columns = 2 * max((len(e.before) for e in examples), default=1)
    figure, axes = plt.subplots(max(1, len(examples)), columns, figsize=(2.2 * columns, 2.6 * max(1, len(examples))),
                                squeeze=False)
    for axis in np.ravel(axes):
        axis.axis("off")
    for row, example in enumerate(examples):
        for index in range(len(example.before)):
            before, after = example.probability_before[index], example.probability_after[index]
            flipped = (before >= threshold) != (after >= threshold)
            for offset, (image, probability, what) in enumerate(((example.before[index], before, "as it is"),
                                                                 (example.after[index], after, example.swap))):
                axis = axes[row][2 * index + offset]
                axis.imshow(image, cmap="gray", vmin=0, vmax=255)
                axis.set_title(f"{what}\np={probability:.2f}", fontsize=8,
                               color="tab:red" if flipped and offset else "black")
    figure.suptitle(f"Framing swaps: the same films before and after (threshold {threshold:.2f}; red: label flipped)")
    figure.tight_layout()
    return save_figure(figure, path)


def attention_figure(films: np.ndarray, heatmaps: np.ndarray, regions: np.ndarray, path: Path,
                     columns: int = 4) -> Path:
    """The audit's Grad-CAM overlays with the lung region outlined (the region its mass is measured against)."""
    rows = max(1, -(-len(films) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for axis in np.ravel(axes):
        axis.axis("off")
    for axis, film, heatmap, region in zip(np.ravel(axes), films, heatmaps, regions, strict=False):
        axis.imshow(film, cmap="gray", vmin=0, vmax=255)
        axis.imshow(heatmap, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        axis.contour(region.astype(float), levels=[0.5], colors="white", linewidths=0.8)
        share = float((heatmap * region).sum() / max(float(heatmap.sum()), 1e-12))
        axis.set_title(f"mass on lungs {share:.2f}", fontsize=8.5)
    figure.suptitle("Grad-CAM of the pneumonia logit; white: the lung region it is measured against")
    figure.tight_layout()
    return save_figure(figure, path)


def audit_figures(result: AuditResult, out_dir: Path) -> dict[str, Path]:
    """The audit's before/after films and its Grad-CAM overlays with the lung region, where it has them."""
    drawn = {}
    if result.swap_examples:
        drawn["audit_swaps"] = swap_examples_figure(result.swap_examples, result.threshold, out_dir / AUDIT_FIGURES[0])
    if result.attention_examples is not None:
        drawn["audit_attention"] = attention_figure(*result.attention_examples, out_dir / AUDIT_FIGURES[1])
    return drawn
