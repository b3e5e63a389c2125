"""`pneumoscan predict`: probability and label for each image file (or every image in a folder)."""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from pneumoscan.data.decode import IMAGE_SUFFIXES, decode_grayscale
from pneumoscan.data.loading import decode_each
from pneumoscan.data.records import printable
from pneumoscan.errors import PneumoscanError
from pneumoscan.models.bundle import Bundle
from pneumoscan.models.inference import predict_probabilities


@dataclass(frozen=True)
class Prediction:
    file: str
    probability: float
    label: str
    in_distribution: bool | None = None  # None: the bundle carries no out-of-distribution guard
    ood_score: float | None = None



def collect_images(paths: Iterable[Path]) -> list[Path]:
    """Files as given (any suffix: the decoder judges them); folders searched recursively for images. A FIFO,
    device or broken link named like an image is kept, so the decoder reports it (skipped, with the reason)
    instead of it vanishing from the count."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if not p.is_dir() and p.suffix.lower() in IMAGE_SUFFIXES
                                and not p.name.startswith(".")))
        elif path.exists() or path.is_symlink():
            found.append(path)
        else:
            raise PneumoscanError(f"{path}: no such file or folder")
    return found


def load_inputs(bundle: Bundle, paths: Iterable[Path], *, strict: bool,
                console: Console) -> tuple[list[Path], torch.Tensor]:
    """(the files that decoded, their uint8 images (N, 1, S, S) at the bundle's size)."""
    files = collect_images(paths)
    if not files:
        raise PneumoscanError("no image files (.jpeg, .jpg, .png, .dcm, .dicom) found in the given paths")
    size = bundle.preprocess.image_size
    decoded = decode_each(files, lambda file: decode_grayscale(file, size), strict=strict, console=console)
    kept, arrays = decoded.kept, decoded.arrays
    if not kept:
        raise PneumoscanError("none of the given files could be read as an image")
    return list(kept), torch.from_numpy(np.stack(arrays)).unsqueeze(1)


def score_images(bundle: Bundle, images: torch.Tensor, backend: Any = None,
                 tta: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """P(pneumonia) and, where the bundle has a guard, its out-of-distribution scores (else None), each computed
    once and the cheapest way: one PyTorch pass for both; or both from an exported file that carries the guard's
    statistics; else the backend's probabilities and the guard in PyTorch. `backend`: an exported file's runtime
    (pneumoscan.serving.export), or None for PyTorch."""
    guard = bundle.ood
    if guard is not None and backend is None and not tta:
        return guard.score_and_predict(bundle.model, images, bundle.preprocess.normalize)
    if guard is not None and getattr(backend, "guard_outputs", None):
        probabilities, statistics = backend.probabilities_and_guard(images)
        return probabilities, guard.score_features(statistics)
    probabilities = predict_probabilities(bundle, images, tta=tta) if backend is None else backend.probabilities(images)
    return probabilities, None if guard is None else guard.score(bundle.model, images, bundle.preprocess.normalize)


def predict_images(bundle: Bundle, files: list[Path], images: torch.Tensor, tta: bool = False,
                   backend: Any = None) -> list[Prediction]:
    """Label each image at the bundle's threshold and, where the bundle has a guard, flag inputs unlike its
    training films. `backend` (an exported file's runtime) scores instead of PyTorch."""
    names, threshold = bundle.manifest.class_names, bundle.manifest.threshold
    probabilities, scores = score_images(bundle, images, backend, tta)
    if scores is None or bundle.ood is None:
        return [Prediction(printable(f), float(p), names[int(p >= threshold)])
                for f, p in zip(files, probabilities, strict=True)]
    guard_threshold = bundle.ood.threshold
    return [Prediction(printable(f), float(p), names[int(p >= threshold)], bool(s <= guard_threshold), float(s))
            for f, p, s in zip(files, probabilities, scores, strict=True)]
