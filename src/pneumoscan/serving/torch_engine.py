"""The PyTorch engine (`--engine torch`, and the fallback where a bundle cannot be exported), and a bundle answered by
a TFLite file: the same `score` as pneumoscan.serving.engine.OnnxEngine, so a command does not care which runs."""

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumoscan.models.bundle import Bundle, load_bundle
from pneumoscan.models.inference import predict_probabilities
from pneumoscan.serving.runtime import EngineInfo, Scores


class TorchEngine:
    """A loaded bundle scored in PyTorch: P(pneumonia) and the guard's score from one forward pass (with `tta`, the
    probability averaged over the test-time views and the guard on the film as it is)."""

    def __init__(self, bundle: Bundle, tta: bool = False, note: str | None = None) -> None:
        self.bundle, self.tta = bundle, tta
        self.folder, self.manifest, self.guard = bundle.path, bundle.manifest, bundle.ood
        self.info = EngineInfo("torch", "pytorch", None, torch.get_num_threads(), note)

    def torch_bundle(self) -> Bundle:
        return self.bundle

    def score(self, images: Any) -> Scores:
        films = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
        bundle, guard = self.bundle, self.bundle.ood
        if guard is not None and not self.tta:
            probabilities, scores = guard.score_and_predict(bundle.model, films, bundle.preprocess.normalize)
            return Scores(probabilities, scores)
        probabilities = predict_probabilities(bundle, films, tta=self.tta)
        return Scores(probabilities, None if guard is None
                      else guard.score(bundle.model, films, bundle.preprocess.normalize))


class BackendEngine:
    """A bundle's probabilities from an exported file's runtime (TFLite), its guard in PyTorch."""

    def __init__(self, bundle: Bundle, backend: Any, name: str) -> None:
        self.bundle, self.backend = bundle, backend
        self.folder, self.manifest, self.guard = bundle.path, bundle.manifest, bundle.ood
        self.info = EngineInfo(name, "--exported", str(backend.path), None, None)

    def torch_bundle(self) -> Bundle:
        return self.bundle

    def score(self, images: Any) -> Scores:
        films = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
        bundle, guard = self.bundle, self.bundle.ood
        return Scores(self.backend.probabilities(films), None if guard is None
                      else guard.score(bundle.model, films, bundle.preprocess.normalize))


def torch_engine(model: Path | str | Bundle, tta: bool = False, note: str | None = None) -> TorchEngine:
    return TorchEngine(model if isinstance(model, Bundle) else load_bundle(model), tta=tta, note=note)


def backend_engine(model: Path | str | Bundle, exported: Path) -> BackendEngine:
    from pneumoscan.serving.export import TfliteBackend

    bundle = model if isinstance(model, Bundle) else load_bundle(model)
    return BackendEngine(bundle, TfliteBackend(exported), "tflite")
