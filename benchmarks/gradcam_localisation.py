"""Does Grad-CAM point at the opacity? Measured on synthetic X-rays, whose generator knows where it put it.

Trains `compact` on synthetic data (difficulty 0, 128 px; about a minute on 2 cores), then for every
pneumonia image of the synthetic test split measures the share of the Grad-CAM heat inside the
planted opacity mask, against the mask's share of the image. Prints the mean share, how often
the opacity holds more than twice its area's share of the heat, and how often the heatmap's peak
falls within 8 px of the opacity (the "pointing game"). Usage:

    .venv/bin/python benchmarks/gradcam_localisation.py [--target-layer stages.2]
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from scipy.ndimage import binary_dilation

from pneumoscan.config import TrainConfig
from pneumoscan.data.synthetic import SyntheticSource, SyntheticSpec
from pneumoscan.evaluation.gradcam import GradCam, mass_inside
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.registry import model_spec
from pneumoscan.pipeline.train import run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target-layer", nargs="+", default=[model_spec("compact").explained_layer, "stages.2"],
                        help="layers to compare (default: the declared one and the stage before it)")
    args = parser.parse_args()
    quiet = Console(quiet=True)
    spec = SyntheticSpec(n_per_class=120, size=128, seed=3, difficulty=0.0)
    config = TrainConfig(data="synthetic:n_per_class=120,size=128,seed=3,difficulty=0", arch="compact",
                         image_size=128, epochs=15, val_fraction=0.25, cache=False, precision="fp32")
    with tempfile.TemporaryDirectory() as tmp:
        run_training(config, Path(tmp), quiet)
        bundle = load_bundle(tmp)
    source = SyntheticSource(spec)
    images, masks = zip(*(source.render(r) for r in source.splits["test"] if r.label == 1), strict=True)
    inputs = bundle.preprocess.normalize(torch.from_numpy(np.stack(images))[:, None])
    area = np.array([m.mean() for m in masks])
    near = [binary_dilation(m, iterations=8) for m in masks]
    console = Console(width=140)
    console.print(f"{len(masks)} synthetic pneumonia test images; the opacity covers {area.mean():.3f} of the image "
                  "on average")
    for layer in args.target_layer:
        heatmaps = GradCam(bundle.model, layer)(inputs)
        inside = np.array([mass_inside(h, m) for h, m in zip(heatmaps, masks, strict=True)])
        pointing = np.mean([n[np.unravel_index(h.argmax(), h.shape)] for h, n in zip(heatmaps, near, strict=True)])
        console.print(f"{layer:>10}: heat inside the opacity {inside.mean():.3f} (x{inside.mean() / area.mean():.1f} "
                      f"its area); opacity holds > 2x its area's share in {np.mean(inside > 2 * area):.0%} of images; "
                      f"peak within 8 px of the opacity in {pointing:.0%}")


if __name__ == "__main__":
    main()
