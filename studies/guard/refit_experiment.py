"""Experiment (issue 20): refit the shipped model's guard on its training films plus reframed copies, threshold
at the highest of the per-variant 95th percentiles over validation films as they are and reframed; how often are
in-scope films flagged (calibration variants and others), and non-X-rays?

    .venv/bin/python studies/guard/refit_experiment.py > studies/guard/refit_experiment.log
"""

import numpy as np
import torch
from rich.console import Console
from sklearn.covariance import LedoitWolf

from pneumoscan.config import TrainConfig
from pneumoscan.data.augment import RandomFraming
from pneumoscan.data.framing_swaps import zoom_in, zoom_out
from pneumoscan.evaluation.ood_probes import probe_images
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.ood import OodGuard, _narrowed, stage_features
from pneumoscan.settings import resolve
from pneumoscan.training.prepare import prepare_data

CALIBRATE = {"as they are": lambda x: x, "zoom in 1.25": lambda x: zoom_in(x, 1.25),
             "zoom in 1.5": lambda x: zoom_in(x, 1.5),
             "zoom out 0.75": lambda x: zoom_out(x, 0.75)}
CHECK = {"zoom in 1.15": lambda x: zoom_in(x, 1.15), "zoom in 1.33": lambda x: zoom_in(x, 1.33),
         "zoom in 1.4": lambda x: zoom_in(x, 1.4), "zoom out 0.85": lambda x: zoom_out(x, 0.85),
         "zoom out 0.6": lambda x: zoom_out(x, 0.6), "zoom out 0.75 grey": lambda x: zoom_out(x, 0.75, 128)}


def fit(features, labels):
    means, precisions = [], []
    for feature in features:
        class_means = np.stack([feature[labels == c].mean(0) for c in (0, 1)])
        centered = feature - class_means[labels]
        precisions.append(LedoitWolf(assume_centered=True).fit(centered).precision_.astype(np.float32))
        means.append(class_means.astype(np.float32))
    guard = OodGuard([], means, precisions, np.zeros(len(means)), np.ones(len(means)), 0.0, 0.05)
    distances = guard._distances(features)
    low, guard.centers, high = np.percentile(distances, [25, 50, 75], axis=0)
    guard.scales = np.maximum(high - low, 1e-6)
    return guard


def main() -> None:
    bundle = load_bundle("src/pneumoscan/weights/default")
    data = prepare_data(resolve(TrainConfig, "configs/default-model.toml"), Console(stderr=True))
    model, layers, normalize = _narrowed(bundle.model, bundle.ood.layers, bundle.preprocess.normalize)
    feats = lambda images: stage_features(model, layers, images, normalize)  # noqa: E731
    train, val = data.train.images[:], data.val.images[:]
    labels = data.train.labels.numpy().astype(int)
    torch.manual_seed(0)
    framing = RandomFraming(zoom=(0.7, 1.6), aspect=0.0, rotation_deg=0.0, shift=0.03)
    reframed = (framing(train.float() / 255.0) * 255).round().clamp(0, 255).to(torch.uint8)
    clean_f, framed_f = feats(train), feats(reframed)
    val_f = {name: feats(t(val)) for name, t in {**CALIBRATE, **CHECK}.items()}
    probes = {k: feats(torch.from_numpy(v)[:, None]) for k, v in probe_images(val[:, 0].numpy(), 40, 0).items()}
    for name, features, fit_labels, calibrate in (
            ("clean fit, clean threshold", clean_f, labels, ["as they are"]),
            ("clean fit, max-variant threshold", clean_f, labels, list(CALIBRATE)),
            ("clean+reframed fit, clean threshold", [np.concatenate(p) for p in zip(clean_f, framed_f, strict=True)],
             np.concatenate([labels, labels]), ["as they are"]),
            ("clean+reframed fit, max-variant threshold",
             [np.concatenate(p) for p in zip(clean_f, framed_f, strict=True)],
             np.concatenate([labels, labels]), list(CALIBRATE))):
        guard = fit(features, fit_labels)
        guard.threshold = max(float(np.quantile(guard.score_features(val_f[c]), 0.95, method="higher"))
                              for c in calibrate)
        print(f"\n== {name}: threshold {guard.threshold:.3f}")
        for variant, f in val_f.items():
            print(f"  {variant:22s} {np.mean(guard.score_features(f) > guard.threshold):.3f}")
        rates = {k: np.mean(guard.score_features(f) > guard.threshold) for k, f in probes.items()}
        print("  probes: " + ", ".join(f"{k} {v:.2f}" for k, v in rates.items()), flush=True)


if __name__ == "__main__":
    main()
