"""`pneumoscan evaluate`: score a bundle on a split; write metrics with CIs, figures, report.html, MODEL_CARD.md.

Everything is computed once into an EvaluationResult (typed), from which metrics.json, the figures,
the HTML report and the model card are all written, so they cannot disagree. The output folder is
checked before anything is decoded; a previous evaluation's metrics.json is removed before the
first file is written and the new one is written last, so a folder with a metrics.json holds a
finished evaluation, never a rerun interrupted halfway.
"""

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from pneumoscan import CLASS_NAMES
from pneumoscan.atomic import check_output_dir, discard, write_json, write_text
from pneumoscan.config import EvalConfig
from pneumoscan.data.loading import ImageSet, load_split
from pneumoscan.data.streaming import FilmRows, ImageBatchSource, iter_chunks
from pneumoscan.evaluation import figures
from pneumoscan.evaluation.architecture import summarize
from pneumoscan.evaluation.audit import audit_films
from pneumoscan.evaluation.framing import bundle_seen_families, score_framing
from pneumoscan.evaluation.gradcam import GradCam, default_layer, explained_boxes, explained_preprocess, to_image_frame
from pneumoscan.evaluation.model_card import render_model_card
from pneumoscan.evaluation.monitoring import simulate
from pneumoscan.evaluation.ood_probes import probe_images
from pneumoscan.evaluation.prior_shift import adapt_to_prior
from pneumoscan.evaluation.report_html import render_report
from pneumoscan.evaluation.results import EvaluationResult, OodSummary, PriorAdapted
from pneumoscan.evaluation.sharded import scored_in_shards
from pneumoscan.evaluation.subgroups import read_groups, record_groups, subgroup_metrics
from pneumoscan.metrics import (
    BootstrapSettings,
    ThresholdPolicy,
    classification_report_text,
    metrics_with_ci,
    reliability,
    screening_metrics,
)
from pneumoscan.metrics.framing import FramingRecord
from pneumoscan.metrics.thresholds import adapted_threshold
from pneumoscan.models.bundle import Bundle
from pneumoscan.models.inference import predict_probabilities
from pneumoscan.training.distributed import Distributed

METRICS_FILE = "metrics.json"
# drawn only when the data allow them
CONDITIONAL_FIGURES = ("monitoring.png", "roc_curve.png", "pr_curve.png", *figures.AUDIT_FIGURES)


def _predictions_csv(image_set: ImageSet, probabilities: np.ndarray, threshold: float) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "patient", "label", "probability", "prediction"])
    for record, probability in zip(image_set.records, probabilities, strict=True):
        writer.writerow([record.source, record.patient, CLASS_NAMES[record.label], f"{probability:.6f}",
                         CLASS_NAMES[int(probability >= threshold)]])
    return buffer.getvalue()


def prior_adapted(bundle: Bundle, labels: np.ndarray, probabilities: np.ndarray) -> PriorAdapted | None:
    manifest = bundle.manifest
    prior, policy = manifest.calibrated_prior, manifest.threshold_policy
    if prior is None or policy is None:
        return None
    prevalence, adjusted = adapt_to_prior(probabilities, prior)
    # An adapted bundle's own threshold may already hold a prior: start from the one it was trained with.
    stored = manifest.adaptation.threshold_before if manifest.adaptation else manifest.threshold
    threshold = adapted_threshold(policy, stored)  # on the adapted scores (0.5 for a `balanced` policy)
    return PriorAdapted(training_prior=prior, estimated_prevalence=prevalence,
                        metrics=screening_metrics(labels, adjusted, threshold))


def _gradcam_cases(bundle: Bundle, image_set: ImageSet, labels: np.ndarray, probabilities: np.ndarray,
                   path: Path, seed: int, per_kind: int = 4) -> Path:
    """Up to `per_kind` wrong and `per_kind` correct cases (a seeded pick), with their Grad-CAM overlays."""
    rng = np.random.default_rng(seed)
    wrong = (probabilities >= bundle.manifest.threshold).astype(int) != labels
    chosen = np.concatenate([rng.permutation(np.flatnonzero(wrong))[:per_kind],
                             rng.permutation(np.flatnonzero(~wrong))[:per_kind]])
    cam = GradCam(bundle.model, default_layer(bundle.manifest.arch, arch_kwargs=bundle.manifest.arch_kwargs))
    films = image_set.images[chosen]
    heatmaps = to_image_frame(cam(bundle.preprocess.normalize(films)),
                              explained_boxes(explained_preprocess(bundle.manifest), films))
    return figures.gradcam_grid(image_set.images[chosen, 0].numpy(), heatmaps, labels[chosen],
                                probabilities[chosen], bundle.manifest.threshold, path)


def ood_summary(bundle: Bundle, images: ImageBatchSource, seed: int, per_kind: int = 40) -> OodSummary | None:
    """How many evaluated images the guard flags, and how many generated non-X-rays it catches."""
    if bundle.ood is None:
        return None
    normalize = bundle.preprocess.normalize
    flagged = bundle.ood.score(bundle.model, images, normalize) > bundle.ood.threshold
    probes = probe_images(FilmRows(images), per_kind=per_kind, seed=seed)  # type: ignore[arg-type]
    detection = {kind: float(np.mean(bundle.ood.score(bundle.model, torch.from_numpy(p)[:, None], normalize)
                                      > bundle.ood.threshold)) for kind, p in probes.items()}
    return OodSummary(settings=bundle.ood.settings(), n_images=len(images), flagged=int(flagged.sum()),
                      probe_detection=detection, probes_per_kind=per_kind)


def _operating_points(bundle: Bundle, labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    points = {"model threshold": bundle.manifest.threshold}
    training = bundle.manifest.training
    if training is not None:
        points["balanced (training prevalence)"] = training.calibrated_prior
    if labels.any() and not labels.all():
        points["95 % sensitivity on this data"] = ThresholdPolicy("sensitivity", 0.95).choose(
            labels, probabilities, 0.5)
    return points


def _draw(result: EvaluationResult, bundle: Bundle, image_set: ImageSet, labels: np.ndarray,
          probabilities: np.ndarray, out_dir: Path) -> dict[str, Path]:
    threshold, seed = result.threshold, result.config.seed
    input_shape = bundle.input_shape
    drawn = {
        "confusion_matrix": figures.confusion_matrix_figure(result.metrics.point.confusion,
                                                            out_dir / "confusion_matrix.png",
                                                            title=f"Confusion matrix (threshold {threshold:.2f})"),
        "sample_predictions": figures.sample_predictions(FilmRows(image_set.images), labels,  # type: ignore[arg-type]
                                                         probabilities,
                                                         threshold, out_dir / "sample_predictions.png", seed=seed),
        "temporal_performance": figures.temporal_performance({bundle.manifest.arch: result.temporal.weeks},
                                                             out_dir / "temporal_performance.png"),
        "architecture": figures.architecture_diagram(summarize(bundle.model, input_shape), input_shape,
                                                     bundle.manifest.arch, out_dir / "architecture.png"),
        "reliability": figures.reliability_figure(reliability(labels, probabilities), out_dir / "reliability.png"),
        "threshold_curve": figures.threshold_figure(labels, probabilities,
                                                    _operating_points(bundle, labels, probabilities),
                                                    out_dir / "threshold_curve.png"),
        "gradcam_grid": _gradcam_cases(bundle, image_set, labels, probabilities, out_dir / "gradcam_cases.png", seed),
    }
    if result.audit is not None:
        result.audit.figures = figures.audit_figures(result.audit, out_dir)
        drawn.update(result.audit.figures)
    if result.temporal.test is not None:
        drawn["monitoring"] = figures.monitoring_figure(result.temporal, out_dir / "monitoring.png")
    if result.metrics.point.roc_auc is not None:
        drawn["roc_curve"] = figures.roc_figure(labels, probabilities, threshold, out_dir / "roc_curve.png")
        drawn["pr_curve"] = figures.pr_figure(labels, probabilities, threshold, out_dir / "pr_curve.png")
    return drawn


def framing_proxy(bundle: Bundle, images: ImageBatchSource, labels: np.ndarray, probabilities: np.ndarray,
                  config: EvalConfig) -> FramingRecord | None:
    """The framing-swap proxy on labelled films with both classes (None otherwise, or when switched off). It
    scores single views: with TTA on, the films as they are are scored once more without it."""
    if not config.framing or len(np.unique(labels)) < 2:
        return None
    clean = predict_probabilities(bundle, images) if config.tta else probabilities
    return score_framing(bundle.model, bundle.preprocess.normalize, images, labels, clean, bundle.manifest.threshold,
                         seen=bundle_seen_families(bundle.manifest), resamples=min(config.bootstrap, 2000),
                         seed=config.seed)


@dataclass
class ScoredSplit:
    """An evaluation computed and not yet written: the result and what the figures and files are drawn from."""

    result: EvaluationResult
    image_set: ImageSet
    labels: np.ndarray
    probabilities: np.ndarray


def engine_probabilities(engine: Any, images: ImageBatchSource, batch_size: int = 64) -> np.ndarray:
    """P(pneumonia) per film from an engine (pneumoscan.serving.engine), a batch at a time (in memory or streamed)."""
    chunks = [engine.score(chunk.numpy()).probabilities for chunk in iter_chunks(images, batch_size)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, dtype=np.float32)


def score_split(bundle: Bundle, data: str, config: EvalConfig, console: Console, engine: Any = None,
                ranks: Distributed | None = None) -> ScoredSplit | None:
    """Load and score a split and compute everything the evaluation reports (nothing is written). `engine` scores
    the films and the weeks (ONNX Runtime by default from the CLI; None: PyTorch); the framing swaps, the guard's
    probes and the audit's Grad-CAM run in PyTorch on the same network. `ranks` (under torchrun): the films are
    scored in shards and gathered on rank 0, which alone computes the rest; the other ranks get None."""
    image_set, summary = load_split(data, config.split, bundle.preprocess.image_size, strict=config.strict,
                                    cache=config.cache, console=console, stream=config.stream)

    def score(pixels: ImageBatchSource) -> np.ndarray:
        return (predict_probabilities(bundle, pixels, tta=config.tta) if engine is None  # type: ignore[arg-type]
                else engine_probabilities(engine, pixels))

    probabilities = score(image_set.images) if ranks is None else scored_in_shards(score, image_set.images, ranks)
    if probabilities is None:  # another rank: its share of the films went to rank 0
        return None
    labels = image_set.labels.numpy().astype(int)
    threshold = bundle.manifest.threshold
    groups = (read_groups(Path(config.groups), image_set.records) if config.groups
              else record_groups(image_set.records))
    result = EvaluationResult(
        model=str(bundle.path), arch=bundle.manifest.arch, data=summary, config=config,
        metrics=metrics_with_ci(labels, probabilities, threshold, BootstrapSettings(config.bootstrap, config.seed)),
        temporal=simulate(image_set.images, labels,
                          score,
                          threshold, bundle.reference, weeks=min(config.weeks, len(labels)), seed=config.seed,
                          resamples=min(config.bootstrap, 500), probabilities=probabilities),
        subgroups=subgroup_metrics(groups, labels, probabilities, threshold, resamples=config.bootstrap,
                                   seed=config.seed) if groups else None,
        prior_adapted=prior_adapted(bundle, labels, probabilities) if config.adapt_prior else None,
        ood=ood_summary(bundle, image_set.images, config.seed),
        framing=framing_proxy(bundle, image_set.images, labels, probabilities, config),
        engine="torch" if engine is None else engine.info.name,
    )
    if config.audit and result.framing is not None:
        result.audit = audit_films(bundle, image_set.images, list(image_set.records), probabilities, summary,
                                   framing=result.framing, resamples=min(config.bootstrap, 1000), seed=config.seed)
    return ScoredSplit(result, image_set, labels, probabilities)


def write_evaluation(scored: ScoredSplit, bundle: Bundle, out_dir: Path) -> None:
    """The figures, reports, predictions and model card, then metrics.json last (a previous evaluation's
    metrics.json is removed first: a folder holding one holds a finished evaluation)."""
    result, labels, probabilities = scored.result, scored.labels, scored.probabilities
    threshold = result.threshold
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (METRICS_FILE, *CONDITIONAL_FIGURES):  # metrics.json first: it marks a finished evaluation
        discard(out_dir / stale)
    result.figures = _draw(result, bundle, scored.image_set, labels, probabilities, out_dir)
    report_text, report_dict = classification_report_text(labels, probabilities, threshold)
    write_text(out_dir / "classification_report.txt", report_text)
    write_json(out_dir / "classification_report.json", report_dict)
    write_text(out_dir / "predictions.csv", _predictions_csv(scored.image_set, probabilities, threshold))
    write_text(out_dir / "report.html", render_report(result, bundle.manifest))
    write_text(out_dir / "MODEL_CARD.md", render_model_card(bundle.manifest, result))
    write_json(out_dir / METRICS_FILE, result.to_dict())  # last


def evaluate(bundle: Bundle, data: str, out_dir: Path, config: EvalConfig | None = None,
             console: Console | None = None, engine: Any = None,
             ranks: Distributed | None = None) -> EvaluationResult | None:
    """Score a split and write metrics.json (every metric with a 95 % CI), figures, report.html, MODEL_CARD.md. The
    output folder is checked before anything is decoded. Under torchrun (`ranks`) every rank scores its share and
    rank 0 alone evaluates and writes; the others return None."""
    console = console or Console(stderr=True)
    config = config or EvalConfig()
    out_dir = check_output_dir(out_dir)
    scored = score_split(bundle, data, config, console, engine, ranks)
    if scored is None:
        return None
    write_evaluation(scored, bundle, out_dir)
    return scored.result
