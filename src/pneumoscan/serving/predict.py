"""`pneumoscan predict`: probability and label for each image file (or every image in a folder), from whichever
engine scores (pneumoscan.serving.engine). Torch-free: through ONNX Runtime, a prediction never imports torch."""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from pneumoscan.data.decode import IMAGE_SUFFIXES, decode_grayscale
from pneumoscan.data.decode_each import decode_each
from pneumoscan.data.records import printable
from pneumoscan.errors import PneumoscanError


@dataclass(frozen=True)
class Prediction:
    file: str
    probability: float
    label: str
    in_distribution: bool | None = None  # None: the bundle carries no out-of-distribution guard
    ood_score: float | None = None
    engine: str = "torch"  # what answered: onnxruntime, torch or tflite


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


def load_inputs(image_size: int, paths: Iterable[Path], *, strict: bool,
                console: Console) -> tuple[list[Path], np.ndarray]:
    """(the files that decoded, their uint8 images (N, 1, S, S) at the model's `image_size`)."""
    files = collect_images(paths)
    if not files:
        raise PneumoscanError("no image files (.jpeg, .jpg, .png, .dcm, .dicom) found in the given paths")
    decoded = decode_each(files, lambda file: decode_grayscale(file, image_size), strict=strict, console=console)
    if not decoded.kept:
        raise PneumoscanError("none of the given files could be read as an image")
    return list(decoded.kept), np.stack(decoded.arrays)[:, None]


def predict_images(engine: Any, files: list[Path], images: np.ndarray) -> list[Prediction]:
    """Label each image at the bundle's threshold and, where the bundle has a guard, flag inputs unlike its
    training films. `engine`: what scores (pneumoscan.serving.engine.open_engine)."""
    names, threshold = engine.manifest.class_names, engine.manifest.threshold
    scores = engine.score(images)
    name = engine.info.name
    if scores.ood_scores is None or engine.guard is None:
        return [Prediction(printable(f), float(p), names[int(p >= threshold)], engine=name)
                for f, p in zip(files, scores.probabilities, strict=True)]
    guard_threshold = engine.guard.threshold
    return [Prediction(printable(f), float(p), names[int(p >= threshold)], bool(s <= guard_threshold), float(s),
                       engine=name)
            for f, p, s in zip(files, scores.probabilities, scores.ood_scores, strict=True)]
