"""ONNX Runtime behind the engines, without torch: the session and its threads, the guard's numbers read with
safetensors' numpy reader, the engine that scores a bundle through its graph, and where graphs are found (the
bundle's own, the cache). Which engine a command gets is pneumoscan.serving.engine's choice."""

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pneumoscan.errors import BundleError, PneumoscanError
from pneumoscan.launch import local_world_size
from pneumoscan.models.manifest import (
    EXPORTED_GRAPH_FILE,
    WEIGHTS_FILE,
    Manifest,
    sha256_file,
)
from pneumoscan.models.ood_statistics import TENSOR_PREFIX, GuardStatistics

ENGINES = ("auto", "onnx", "torch", "tflite")
INPUT_NAME, OUTPUT_NAME, GUARD_PREFIX = "pixels", "probability", "guard_"
OPSET = 18
PARITY_MAX_ABS_DIFF = 1e-4  # an fp32 graph within this of PyTorch on every sample film, with every label equal
THREADS_VARIABLE = "PNEUMOSCAN_ONNX_THREADS"
CACHE_VARIABLE = "PNEUMOSCAN_CACHE_DIR"


@dataclass(frozen=True)
class Scores:
    """P(pneumonia) per film and, where the bundle has a guard, its out-of-distribution score (else None)."""

    probabilities: np.ndarray
    ood_scores: np.ndarray | None


@dataclass(frozen=True)
class EngineInfo:
    """Which engine answers and from what: reported by /health, /v1/model and each `predict --format json` row."""

    name: str  # "onnxruntime", "torch" or "tflite"
    source: str  # "bundle" (its model.onnx), "cache", "--exported" or "pytorch" (the bundle's weights)
    file: str | None = None  # the graph that answers (None: PyTorch)
    threads: int | None = None  # ONNX Runtime's intra-op threads
    note: str | None = None  # why this engine and not the default, when it is not

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Engine(Protocol):
    """Scores uint8 films (N, 1, S, S) at the bundle's size; knows its bundle's manifest and guard."""

    info: EngineInfo
    folder: Path
    manifest: Manifest
    guard: GuardStatistics | None

    def score(self, images: np.ndarray) -> Scores: ...

    def torch_bundle(self) -> Any: ...


def onnx_threads() -> int:
    """Intra-op threads: PNEUMOSCAN_ONNX_THREADS, else the CPUs this process may run on shared by the processes
    torchrun started on this machine (LOCAL_WORLD_SIZE), so ranks scoring side by side do not oversubscribe it."""
    value = os.environ.get(THREADS_VARIABLE, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise PneumoscanError(f"{THREADS_VARIABLE}={value!r}: give a whole number of threads, at least 1")
        return int(value)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // local_world_size())


def _as_pixels(images: Any) -> np.ndarray:
    """uint8 films (a numpy array or a torch tensor) -> the graph's input, float32 in [0, 1]."""
    array = images.numpy() if hasattr(images, "numpy") else np.asarray(images)
    return np.ascontiguousarray(array, dtype=np.float32) / np.float32(255.0)


class OnnxBackend:
    """An exported file in an ONNX Runtime session, fed like the bundle it came from (probabilities, and the guard's
    statistics when the file carries them)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise PneumoscanError(f"{path}: no exported model here (run `pneumoscan export` first)")
        self.threads = threads or onnx_threads()
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:
            raise PneumoscanError(f"{path}: onnxruntime cannot load this file ({type(error).__name__})") from None
        self.path = path
        self.guard_outputs = sorted((o.name for o in self.session.get_outputs() if o.name.startswith(GUARD_PREFIX)),
                                    key=lambda name: int(name[len(GUARD_PREFIX):]))

    def probabilities(self, images: Any, batch_size: int = 64) -> np.ndarray:
        """uint8 images (N, 1, S, S) at the bundle's size -> P(pneumonia), shape (N,)."""
        chunks = [self.session.run([OUTPUT_NAME], {INPUT_NAME: _as_pixels(images[i : i + batch_size])})[0]
                  for i in range(0, len(images), batch_size)]
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, dtype=np.float32)

    def probabilities_and_guard(self, images: Any, batch_size: int = 64) -> tuple[np.ndarray, list[np.ndarray]]:
        """P(pneumonia) (N,) and the guard's per-layer statistics from one call per batch (the file must carry
        them: `guard_outputs` is not empty)."""
        names = [OUTPUT_NAME, *self.guard_outputs]
        runs = [self.session.run(names, {INPUT_NAME: _as_pixels(images[i : i + batch_size])})
                for i in range(0, len(images), batch_size)]
        if not runs:
            return np.zeros(0, dtype=np.float32), []
        return (np.concatenate([r[0] for r in runs]).astype(np.float32),
                [np.concatenate([r[i] for r in runs]) for i in range(1, len(names))])


def load_guard(folder: Path, manifest: Manifest) -> GuardStatistics | None:
    """The guard's numbers from the weights file with safetensors' numpy reader (only the `ood.*` entries)."""
    if manifest.ood is None:
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(folder / WEIGHTS_FILE), framework="numpy") as weights:
            arrays = {key: weights.get_tensor(key) for key in weights.keys() if key.startswith(TENSOR_PREFIX)}
    except (SafetensorError, OSError) as error:
        raise BundleError(f"{folder / WEIGHTS_FILE}: unreadable ({error})") from None
    try:
        return GuardStatistics.from_tensors(manifest.ood, arrays)
    except PneumoscanError as error:
        raise BundleError(f"{folder / WEIGHTS_FILE}: {error}") from None


class OnnxEngine:
    """A bundle answered by ONNX Runtime: its graph (bundle, cache or --exported) and its guard's numbers. Where the
    graph does not return the guard's statistics (an INT8 file), the guard runs in PyTorch."""

    def __init__(self, folder: Path, manifest: Manifest, graph: Path, source: str, note: str | None = None) -> None:
        self.folder, self.manifest = folder, manifest
        self.guard = load_guard(folder, manifest)
        self.backend = OnnxBackend(graph)
        self.info = EngineInfo("onnxruntime", source, str(graph), self.backend.threads, note)
        self._bundle: Any = None

    def score(self, images: np.ndarray) -> Scores:
        if self.guard is None:
            return Scores(self.backend.probabilities(images), None)
        if self.backend.guard_outputs:
            probabilities, statistics = self.backend.probabilities_and_guard(images)
            return Scores(probabilities, self.guard.score_features(statistics))
        return Scores(self.backend.probabilities(images), self._guard_in_torch(images))

    def torch_bundle(self) -> Any:
        """The bundle's network in PyTorch, loaded once on first need (Grad-CAM; the guard behind an INT8 file)."""
        if self._bundle is None:
            from pneumoscan.models.bundle import load_bundle

            self._bundle = load_bundle(self.folder)
        return self._bundle

    def _guard_in_torch(self, images: np.ndarray) -> np.ndarray:
        import torch

        bundle = self.torch_bundle()
        return bundle.ood.score(bundle.model, torch.from_numpy(np.asarray(images)), bundle.preprocess.normalize)


def graph_key(manifest: Manifest, tta: bool = False) -> str:
    """The cache's name for a bundle's graph: its weights' SHA-256, and a short hash of what else the graph holds
    (architecture, preprocessing, the guard's layers, the opset, test-time views), so an edited manifest never
    meets a graph made for another."""
    settings = {"arch": manifest.arch, "arch_kwargs": manifest.arch_kwargs, "preprocess": asdict(manifest.preprocess),
                "guard": None if manifest.ood is None else list(manifest.ood.layers), "opset": OPSET, "tta": tta}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{manifest.weights_sha256}-{digest}{'-tta' if tta else ''}"


def cache_dir() -> Path:
    """Where graphs exported on first use are kept (see the module docstring)."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pneumoscan"


def cached_graph_path(manifest: Manifest, tta: bool = False) -> Path:
    return cache_dir() / "onnx" / f"{graph_key(manifest, tta)}.onnx"


def passed_parity(record: dict[str, Any]) -> bool:
    """An fp32 graph's parity as `pneumoscan export` judges it: max |Δp| within PARITY_MAX_ABS_DIFF (so a label can
    differ only for a film within that distance of the threshold)."""
    try:
        return float(record["max_abs_diff"]) <= PARITY_MAX_ABS_DIFF
    except (KeyError, TypeError, ValueError):
        return False


def bundled_graph(folder: Path, manifest: Manifest) -> Path | None:
    """The bundle's own model.onnx, if the manifest vouches for it (these weights, this file, parity passed)."""
    record = manifest.exported
    path = folder / EXPORTED_GRAPH_FILE
    if record is None or not path.is_file() or record.weights_sha256 != manifest.weights_sha256:
        return None
    if not passed_parity(asdict(record)) or sha256_file(path) != record.sha256:
        return None
    return path


def cached_graph(manifest: Manifest, tta: bool = False) -> Path | None:
    """A graph exported on first use, if its sidecar says it belongs to these weights and passed parity."""
    path = cached_graph_path(manifest, tta)
    sidecar = path.with_name(path.name + ".json")
    if not path.is_file() or not sidecar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("bundle_weights_sha256") != manifest.weights_sha256 or not passed_parity(record.get("parity") or {}):
        return None
    if record.get("sha256") and sha256_file(path) != record["sha256"]:
        return None
    return path
