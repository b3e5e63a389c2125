"""Framing changes that no recipe of the search trains on, scored on validation films: a check made after the
search, reported beside the decision and never used for it.

    python studies/framing/unseen_checks.py RUN [RUN ...]

The `framing` augmentation pads zoomed-out films with black, mid-grey or the replicated edge and zooms about
the centre (with small shifts), so the proxy's zoom families are partly seen in training. These are not:
pneumonia films shrunk onto a white border, and normal films zoomed into an off-centre corner (the top left
or the bottom right 75 %). Prints specificity / sensitivity under each, at the run's threshold.
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pneumoscan.data.framing_swaps import zoom_out
from pneumoscan.data.loading import load_split
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.inference import predict_probabilities


def corner_zoom(images: torch.Tensor, factor: float, corner: str) -> torch.Tensor:
    side = images.shape[-1]
    kept = round(side / factor)
    start = 0 if corner == "top_left" else side - kept
    crop = images[..., start:start + kept, start:start + kept]
    resized = F.interpolate(crop.float(), size=(side, side), mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


def main(runs: list[str]) -> None:
    for run in runs:
        bundle = load_bundle(run)
        split = Path(run) / "split.csv"
        images, _ = load_split(str(split), "val", bundle.preprocess.image_size)
        labels = images.labels.numpy().astype(int)
        threshold = bundle.manifest.threshold
        normals, pneumonias = images.images[labels == 0], images.images[labels == 1]

        def positive(films: torch.Tensor, bundle=bundle, threshold=threshold) -> float:  # type: ignore[no-untyped-def]
            return float(np.mean(predict_probabilities(bundle, films) >= threshold))

        def specificity(films: torch.Tensor) -> float:
            return 1.0 - positive(films)

        sensitivity = positive
        results = {
            "specificity": specificity(normals), "sensitivity": sensitivity(pneumonias),
            "sens_white_border_0.75": sensitivity(zoom_out(pneumonias, 0.75, fill=255)),
            "spec_corner_zoom_top_left_1.33": specificity(corner_zoom(normals, 1.33, "top_left")),
            "spec_corner_zoom_bottom_right_1.33": specificity(corner_zoom(normals, 1.33, "bottom_right")),
        }
        print(run, " ".join(f"{name} {value:.3f}" for name, value in results.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
