"""Deployment monitoring simulation: weeks of incoming films, optional injected drift, label-free alarms.

Labels arrive late in practice, so a deployed screening model must notice trouble without them.
Each week is compared with the validation reference the bundle carries (per-image mean and
standard deviation of intensity, sharpness, and the model's scores) by two-sample Kolmogorov-Smirnov
tests; the smallest p-value, Bonferroni-corrected for the four tests, is the week's drift p-value, and a
week is flagged when it falls below `alpha`. Per-week accuracy, sensitivity and specificity (with
bootstrap CIs) are shown beside it, as they would be once labels come in.

Drift is injected from a given week on, as named, seeded options: the image perturbations of
pneumoscan.data.drift (`exposure:s`, `contrast:s`, `noise:s`, `resolution:s`) and `prevalence:p`,
which resamples each drifted week to a share p of pneumonia.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from scipy.stats import ks_2samp

from pneumoscan.atomic import write_json
from pneumoscan.data.drift import Perturbation
from pneumoscan.data.loading import load_images
from pneumoscan.data.registry import open_source
from pneumoscan.errors import PneumoscanError
from pneumoscan.evaluation import figures
from pneumoscan.evaluation.inference import predict_probabilities
from pneumoscan.evaluation.uncertainty import bootstrap_ci, screening_metrics
from pneumoscan.models.bundle import Bundle

REFERENCE_KEYS = ("intensity_mean", "intensity_std", "sharpness", "scores")


def image_statistics(images: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image: mean and standard deviation of its pixels in [0, 1] (exposure, contrast), and the mean
    absolute difference of neighbouring pixels (sharpness: noise raises it, a coarser detector lowers it)."""
    pixels = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    flat = pixels.flatten(1)
    sharpness = (pixels[..., 1:, :] - pixels[..., :-1, :]).abs().flatten(1).mean(1) + (
        pixels[..., :, 1:] - pixels[..., :, :-1]).abs().flatten(1).mean(1)
    return {"intensity_mean": flat.mean(1).numpy(), "intensity_std": flat.std(1).numpy(),
            "sharpness": sharpness.numpy()}


@dataclass(frozen=True)
class Drift:
    """One named drift: an image perturbation or `prevalence:p`."""

    name: str
    strength: float

    @classmethod
    def parse(cls, text: str) -> "Drift":
        name, _, value = text.partition(":")
        if name == "prevalence":
            try:
                strength = float(value)
            except ValueError:
                raise PneumoscanError(f"drift '{text}': prevalence must be a number in (0, 1)") from None
            if not 0.0 < strength < 1.0:
                raise PneumoscanError(f"drift '{text}': prevalence must lie strictly between 0 and 1")
            return cls(name, strength)
        perturbation = Perturbation.parse(text)
        return cls(perturbation.name, perturbation.strength)

    def __str__(self) -> str:
        return f"{self.name}:{self.strength:g}"


def _week_indices(labels: np.ndarray, weeks: int, drifts: Sequence[Drift], drift_from: int,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """Consecutive weeks of a seeded arrival order; drifted weeks resampled to a prevalence if asked."""
    order = rng.permutation(len(labels))
    chunks = np.array_split(order, weeks)
    prevalence = next((d.strength for d in drifts if d.name == "prevalence"), None)
    if prevalence is None:
        return chunks
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if not len(positives) or not len(negatives):
        raise PneumoscanError("drift prevalence:p needs images of both classes")
    resampled = []
    for week, chunk in enumerate(chunks, start=1):
        if week < drift_from:
            resampled.append(chunk)
            continue
        n_positive = int(round(prevalence * len(chunk)))
        resampled.append(np.concatenate([rng.choice(positives, n_positive), rng.choice(negatives,
                                                                                       len(chunk) - n_positive)]))
    return resampled


def simulate(images: torch.Tensor, labels: np.ndarray, score: Callable[[torch.Tensor], np.ndarray], threshold: float,
             reference: dict[str, np.ndarray], *, weeks: int = 8, drifts: Sequence[Drift] = (), drift_from: int = 1,
             alpha: float = 0.01, seed: int = 0, resamples: int = 500) -> dict[str, Any]:
    """Stream `images` (uint8, N x 1 x S x S) as weeks; `score` maps uint8 or [0, 1] float images to P(pneumonia)."""
    if weeks < 1 or weeks > len(labels):
        raise PneumoscanError(f"weeks must be between 1 and the number of images ({len(labels)}), got {weeks}")
    missing = [k for k in REFERENCE_KEYS if k not in reference]
    if missing:
        raise PneumoscanError(f"the drift reference lacks {', '.join(missing)}")
    rng = np.random.default_rng(seed)
    perturbations = [Perturbation(d.name, d.strength) for d in drifts if d.name != "prevalence"]
    rows = []
    for week, index in enumerate(_week_indices(labels, weeks, drifts, drift_from, rng), start=1):
        drifted = bool(drifts) and week >= drift_from
        pixels = images[index].float() / 255.0
        if drifted:
            for number, perturbation in enumerate(perturbations):
                pixels = perturbation(pixels, seed=seed * 1000 + week * 10 + number)
        probabilities = score(pixels)
        week_labels = labels[index]
        statistics = {**image_statistics(pixels), "scores": probabilities}
        tests = {key: ks_2samp(statistics[key], reference[key]) for key in REFERENCE_KEYS}
        p_value = min(1.0, len(tests) * min(float(t.pvalue) for t in tests.values()))
        point = screening_metrics(week_labels, probabilities, threshold)
        ci = bootstrap_ci(week_labels, probabilities, threshold, resamples=resamples, seed=seed + week)
        rows.append({
            "week": week, "drift_injected": drifted, "n_images": len(index),
            "prevalence": float(week_labels.mean()), "mean_probability": float(probabilities.mean()),
            **{name: point[name] for name in ("accuracy", "sensitivity", "specificity")},
            "ci95": {name: ci[name] for name in ("accuracy", "sensitivity", "specificity")},
            "ks_statistic": {key: float(t.statistic) for key, t in tests.items()},
            "drift_p_value": p_value, "flagged": p_value < alpha,
        })
    injected = [r["flagged"] for r in rows if r["drift_injected"]]
    clean = [r["flagged"] for r in rows if not r["drift_injected"]]
    return {
        "drifts": [str(d) for d in drifts], "drift_from_week": drift_from if drifts else None, "alpha": alpha,
        "test": "two-sample Kolmogorov-Smirnov on per-image intensity mean, intensity std, sharpness and model "
                "score against the validation reference; Bonferroni over the four",
        "weeks": rows,
        "drifted_weeks_flagged": f"{sum(injected)} of {len(injected)}",
        "clean_weeks_flagged": f"{sum(clean)} of {len(clean)}",
    }


def run_monitor(bundle: Bundle, data: str, split: str, out_dir: Path, console: Console, *, weeks: int,
                drifts: Sequence[Drift], drift_from: int, alpha: float, seed: int, strict: bool) -> dict[str, Any]:
    """`pneumoscan monitor`: load a split, simulate the weeks, write monitoring.json and monitoring.png."""
    if bundle.reference is None:
        raise PneumoscanError(f"{bundle.path}: this model bundle carries no validation reference to measure drift "
                              "against; retrain it with this version of pneumoscan")
    source = open_source(data)
    split_name, records = source.split(split)
    image_set = load_images(source, records, bundle.preprocess.image_size, strict=strict, console=console,
                            description=f"decoding {split_name}")
    simulation = simulate(image_set.images, image_set.labels.numpy().astype(int),
                          lambda pixels: predict_probabilities(bundle, pixels), bundle.manifest.threshold,
                          bundle.reference, weeks=weeks, drifts=drifts, drift_from=drift_from, alpha=alpha, seed=seed)
    simulation.update({"model": str(bundle.path), "data": {"source": source.name, "split": split_name,
                                                          "images": len(image_set)}})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures.monitoring_figure(simulation, out_dir / "monitoring.png")
    write_json(out_dir / "monitoring.json", simulation)
    return simulation
