"""`pneumoscan explain`, `predict --explain` and the service's `explain=true`: Grad-CAM evidence per image."""

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pneumoscan.evaluation import figures
from pneumoscan.evaluation.gradcam import GradCam, default_layer, explained_boxes, explained_preprocess, to_image_frame
from pneumoscan.models.bundle import Bundle
from pneumoscan.serving.predict import Prediction


def _unique_names(files: Sequence[str]) -> list[str]:
    """`<stem>.gradcam.png`, numbered when two inputs share a stem (same name in different folders)."""
    seen: dict[str, int] = {}
    names = []
    for file in files:
        stem = Path(file).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.gradcam.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.gradcam.png")
    return names


def write_explanations(bundle: Bundle, predictions: Sequence[Prediction], images: torch.Tensor, out_dir: Path,
                       target_layer: str | None = None, batch_size: int = 16) -> list[Path]:
    """One figure per image (X-ray, heatmap overlay, probability) in `out_dir`; returns their paths."""
    preprocess = bundle.preprocess
    cam = GradCam(bundle.model, default_layer(bundle.manifest.arch, target_layer, bundle.manifest.arch_kwargs))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    names = _unique_names([p.file for p in predictions])
    for start in range(0, len(predictions), batch_size):
        films = images[start : start + batch_size]
        heatmaps = to_image_frame(cam(preprocess.normalize(films)),
                                  explained_boxes(explained_preprocess(bundle.manifest), films))
        for offset, heatmap in enumerate(heatmaps):
            index = start + offset
            prediction = predictions[index]
            written.append(figures.gradcam_figure(
                images[index, 0].numpy(), np.asarray(heatmap), prediction.probability, prediction.label,
                bundle.manifest.threshold, Path(prediction.file).name, out_dir / names[index]))
    return written


def heatmaps_for(bundle: Bundle, images: torch.Tensor, target_layer: str | None = None) -> np.ndarray:
    """Grad-CAM maps (N, S, S) in [0, 1] in the frame of the uint8 images (N, 1, S, S) given."""
    cam = GradCam(bundle.model, default_layer(bundle.manifest.arch, target_layer, bundle.manifest.arch_kwargs))
    return np.asarray(to_image_frame(cam(bundle.preprocess.normalize(images)),
                                     explained_boxes(explained_preprocess(bundle.manifest), images)))


def overlay_png(image: np.ndarray, heatmap: np.ndarray, opacity: float = 0.45) -> bytes:
    """The film (S, S) uint8 with its heatmap blended in (jet colours where the evidence is), as PNG bytes."""
    from matplotlib import colormaps
    from PIL import Image

    gray = np.repeat(image[..., None].astype(np.float32) / 255.0, 3, axis=-1)
    colours = colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3]
    weight = opacity * np.clip(heatmap, 0.0, 1.0)[..., None]
    blended = (1.0 - weight) * gray + weight * colours
    buffer = io.BytesIO()
    Image.fromarray(np.round(blended * 255.0).astype(np.uint8), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()
