"""`pneumoscan evaluate`: score a bundle on a split; write metrics with CIs, figures, report.html, MODEL_CARD.md."""

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from pneumoscan import CLASS_NAMES
from pneumoscan.atomic import write_json, write_text
from pneumoscan.data.loading import ImageSet, load_images
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.data.registry import open_source
from pneumoscan.evaluation import figures
from pneumoscan.evaluation.architecture import summarize
from pneumoscan.evaluation.gradcam import GradCam
from pneumoscan.evaluation.inference import predict_probabilities
from pneumoscan.evaluation.metrics import binary_metrics, report
from pneumoscan.evaluation.model_card import render_model_card
from pneumoscan.evaluation.monitoring import simulate
from pneumoscan.evaluation.ood_probes import probe_images
from pneumoscan.evaluation.prior_shift import adapt_to_prior, training_prior
from pneumoscan.evaluation.report_html import render_report
from pneumoscan.evaluation.subgroups import read_groups, subgroup_metrics, subtype_groups
from pneumoscan.evaluation.temporal import weekly_metrics
from pneumoscan.evaluation.thresholds import ThresholdPolicy
from pneumoscan.evaluation.uncertainty import metrics_with_ci
from pneumoscan.models.bundle import Bundle


def draw_architecture(model: nn.Module, preprocess: Preprocess, title: str, path: Path) -> Path:
    input_shape = (preprocess.channels, preprocess.image_size, preprocess.image_size)
    return figures.architecture_diagram(summarize(model, input_shape), input_shape, title, path)


def _predictions_csv(image_set: ImageSet, probabilities: np.ndarray, threshold: float) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "patient", "label", "probability", "prediction"])
    for record, probability in zip(image_set.records, probabilities, strict=True):
        writer.writerow([record.source, record.patient, CLASS_NAMES[record.label], f"{probability:.6f}",
                         CLASS_NAMES[int(probability >= threshold)]])
    return buffer.getvalue()


def score_split(
    bundle: Bundle, data: str, split: str, strict: bool, console: Console, tta: bool = False
) -> tuple[ImageSet, np.ndarray, dict[str, Any]]:
    """Decode a split at the bundle's size and return (images, probabilities, data description)."""
    source = open_source(data)
    split_name, records = source.split(split)
    image_set = load_images(source, records, bundle.preprocess.image_size, strict=strict, console=console,
                            description=f"decoding {split_name}")
    probabilities = predict_probabilities(bundle, image_set.images, tta=tta)
    counts = {k.lower(): v for k, v in image_set.class_counts().items()}
    description = {"source": source.name, "split": split_name, **counts,
                   "patients": len({r.patient for r in image_set.records})}
    return image_set, probabilities, description


def _prior_adapted(bundle: Bundle, labels: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    train_prior = training_prior(bundle.manifest.training)
    prevalence, adjusted = adapt_to_prior(probabilities, train_prior)
    # A `balanced` threshold (the training prior) makes decisions that do not depend on the prior at all;
    # after adapting to the estimated prevalence, the minimum-error decision is 0.5 on the adapted scores.
    threshold = 0.5 if str(bundle.manifest.validation_metrics.get("threshold_policy")) == "balanced" \
        else bundle.manifest.threshold
    return {
        "note": "label-shift adaptation (Saerens et al. 2002) on this evaluation batch; it used no labels, "
                "only the model's outputs; reported apart from the fixed-threshold result",
        "training_prior": train_prior,
        "estimated_prevalence": prevalence,
        **binary_metrics(labels, adjusted, threshold),
    }


def _gradcam_cases(bundle: Bundle, image_set: ImageSet, labels: np.ndarray, probabilities: np.ndarray,
                   path: Path, seed: int, per_kind: int = 4) -> Path:
    """Up to `per_kind` wrong and `per_kind` correct cases (a seeded pick), with their Grad-CAM overlays."""
    rng = np.random.default_rng(seed)
    wrong = (probabilities >= bundle.manifest.threshold).astype(int) != labels
    chosen = np.concatenate([rng.permutation(np.flatnonzero(wrong))[:per_kind],
                             rng.permutation(np.flatnonzero(~wrong))[:per_kind]])
    preprocess = bundle.preprocess
    cam = GradCam(bundle.model, (preprocess.channels, preprocess.image_size, preprocess.image_size))
    heatmaps = cam(preprocess.normalize(image_set.images[chosen]))
    return figures.gradcam_grid(image_set.images[chosen, 0].numpy(), heatmaps, labels[chosen],
                                probabilities[chosen], bundle.manifest.threshold, path)


def ood_summary(bundle: Bundle, images: torch.Tensor, seed: int, per_kind: int = 40) -> dict[str, Any] | None:
    """How many evaluated images the guard flags, and how many generated non-X-rays it catches."""
    if bundle.ood is None:
        return None
    normalize = bundle.preprocess.normalize
    flagged = bundle.ood.score(bundle.model, images, normalize) > bundle.ood.threshold
    probes = probe_images(images[:, 0].numpy(), per_kind=per_kind, seed=seed)
    detection = {kind: float(np.mean(bundle.ood.score(bundle.model, torch.from_numpy(p)[:, None], normalize)
                                      > bundle.ood.threshold)) for kind, p in probes.items()}
    return {**bundle.ood.describe(), "n_images": len(images), "flagged": int(flagged.sum()),
            "probe_detection": detection, "probe_detection_overall": float(np.mean(list(detection.values()))),
            "probes_per_kind": per_kind}


def _operating_points(bundle: Bundle, labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    points = {"model threshold": bundle.manifest.threshold,
              "balanced (training prevalence)": training_prior(bundle.manifest.training)}
    if labels.any() and not labels.all():
        points["95 % sensitivity on this data"] = ThresholdPolicy("sensitivity", 0.95).choose(
            labels, probabilities, points["balanced (training prevalence)"])
    return points


def evaluate(bundle: Bundle, data: str, out_dir: Path, console: Console, *, split: str = "test",
             weeks: int = 4, strict: bool = False, seed: int = 0, adapt_prior: bool = False,
             tta: bool = False, groups_csv: Path | None = None, resamples: int = 2000) -> dict[str, Any]:
    """Score a split and write metrics.json (every metric with a 95 % CI), figures, report.html, MODEL_CARD.md."""
    out_dir = Path(out_dir)
    image_set, probabilities, description = score_split(bundle, data, split, strict, console, tta=tta)
    labels = image_set.labels.numpy().astype(int)
    threshold = bundle.manifest.threshold
    groups = read_groups(groups_csv, image_set.records) if groups_csv else subtype_groups(image_set.records)
    metrics = binary_metrics(labels, probabilities, threshold)
    with_ci = metrics_with_ci(labels, probabilities, threshold, resamples=resamples, seed=seed)
    metrics.update({**with_ci["point"], "ci95": with_ci["ci95"], "bootstrap": with_ci["bootstrap"]})
    report_text, report_dict = report(labels, probabilities, threshold)
    weekly = weekly_metrics(labels, probabilities, threshold, weeks=weeks, seed=seed)
    metrics.update({"model": str(bundle.path), "arch": bundle.manifest.arch, "data": description,
                    "test_time_augmentation": tta, "weeks": weekly,
                    "subgroups": subgroup_metrics(groups, labels, probabilities, threshold, resamples=resamples,
                                                  seed=seed) if groups else None})
    if adapt_prior:
        metrics["prior_adapted"] = _prior_adapted(bundle, labels, probabilities)
    metrics["ood"] = ood_summary(bundle, image_set.images, seed)
    monitoring = None
    if bundle.reference is not None and len(labels) >= weeks:
        monitoring = simulate(image_set.images, labels, lambda pixels: predict_probabilities(bundle, pixels),
                              threshold, bundle.reference, weeks=weeks, seed=seed, resamples=min(resamples, 500))
        metrics["monitoring"] = {k: v for k, v in monitoring.items() if k != "weeks"} | {
            "flagged_weeks": [r["week"] for r in monitoring["weeks"] if r["flagged"]]}

    out_dir.mkdir(parents=True, exist_ok=True)
    both_classes = metrics["roc_auc"] is not None
    drawn = {
        "confusion_matrix": figures.confusion_matrix_figure(
            metrics["confusion_matrix"], out_dir / "confusion_matrix.png",
            title=f"Confusion matrix (threshold {threshold:.2f})"),
        "sample_predictions": figures.sample_predictions(image_set.images[:, 0].numpy(), labels, probabilities,
                                                         threshold, out_dir / "sample_predictions.png", seed=seed),
        "temporal_performance": figures.temporal_performance({bundle.manifest.arch: weekly},
                                                             out_dir / "temporal_performance.png"),
        "architecture": draw_architecture(bundle.model, bundle.preprocess, bundle.manifest.arch,
                                          out_dir / "architecture.png"),
        "reliability": figures.reliability_figure(labels, probabilities, metrics["ece"], out_dir / "reliability.png"),
        "threshold_curve": figures.threshold_figure(labels, probabilities,
                                                    _operating_points(bundle, labels, probabilities),
                                                    out_dir / "threshold_curve.png"),
        "gradcam_grid": _gradcam_cases(bundle, image_set, labels, probabilities, out_dir / "gradcam_cases.png", seed),
    }
    if monitoring is not None:
        drawn["monitoring"] = figures.monitoring_figure(monitoring, out_dir / "monitoring.png")
    if both_classes:
        drawn["roc_curve"] = figures.roc_figure(labels, probabilities, threshold, out_dir / "roc_curve.png")
        drawn["pr_curve"] = figures.pr_figure(labels, probabilities, threshold, out_dir / "pr_curve.png")
    manifest = bundle.manifest.to_dict()
    write_json(out_dir / "metrics.json", metrics)
    write_text(out_dir / "classification_report.txt", report_text)
    write_json(out_dir / "classification_report.json", report_dict)
    write_text(out_dir / "predictions.csv", _predictions_csv(image_set, probabilities, threshold))
    write_text(out_dir / "report.html", render_report(metrics, manifest, drawn))
    write_text(out_dir / "MODEL_CARD.md", render_model_card(manifest, metrics))
    return metrics
