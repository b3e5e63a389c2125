"""A trained model as one folder: `model.safetensors` + `model.json`.

The manifest carries everything needed to use the weights the way they were trained
(architecture, input size, normalization, threshold, class names) plus where they came from
(data summary, validation metrics, versions), so every tool that loads a bundle preprocesses
identically. The weights file also holds the out-of-distribution guard (`ood.*`) and the
validation statistics drift is monitored against (`reference.*`). safetensors holds only
tensors: loading a bundle never executes code.
"""

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pneumoscan import CLASS_NAMES, __version__
from pneumoscan.atomic import atomic_path, write_json
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.errors import BundleError
from pneumoscan.models.ood import TENSOR_PREFIX as OOD_PREFIX
from pneumoscan.models.ood import OodGuard
from pneumoscan.models.registry import create_model

WEIGHTS_FILE = "model.safetensors"
REFERENCE_PREFIX = "reference."
MANIFEST_FILE = "model.json"
FORMAT_VERSION = 1


@dataclass
class Manifest:
    arch: str
    arch_kwargs: dict[str, Any]
    preprocess: Preprocess
    threshold: float = 0.5
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    training: dict[str, Any] = field(default_factory=dict)
    validation_metrics: dict[str, Any] = field(default_factory=dict)
    pneumoscan_version: str = __version__
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    weights_sha256: str = ""
    format_version: int = FORMAT_VERSION
    ood: dict[str, Any] | None = None  # the out-of-distribution guard's settings; its tensors sit in the weights file

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["input_size"] = self.preprocess.image_size
        payload["channels"] = self.preprocess.channels
        payload["normalization"] = {"mean": self.preprocess.mean, "std": self.preprocess.std}
        del payload["preprocess"]
        return payload

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "Manifest":
        data = dict(payload)
        normalization = data.pop("normalization")
        data["preprocess"] = Preprocess(
            image_size=int(data.pop("input_size")),
            channels=int(data.pop("channels")),
            mean=float(normalization["mean"]),
            std=float(normalization["std"]),
        )
        return cls(**data)


@dataclass
class Bundle:
    model: nn.Module
    manifest: Manifest
    path: Path
    ood: OodGuard | None = None
    reference: dict[str, np.ndarray] | None = None  # validation statistics that drift is measured against

    @property
    def preprocess(self) -> Preprocess:
        return self.manifest.preprocess


def build_model(manifest: Manifest) -> nn.Module:
    return create_model(
        manifest.arch,
        in_channels=manifest.preprocess.channels,
        image_size=manifest.preprocess.image_size,
        **manifest.arch_kwargs,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_bundle(folder: Path, model: nn.Module, manifest: Manifest, ood: OodGuard | None = None,
                reference: dict[str, np.ndarray] | None = None) -> Path:
    """Write weights (and the guard's tensors), then the manifest (each atomically). The manifest records
    the weights' hash, so a bundle whose two files do not belong together is refused on load."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if ood is not None:
        state.update(ood.to_tensors())
        manifest.ood = ood.describe()
    for name, values in (reference or {}).items():
        state[f"{REFERENCE_PREFIX}{name}"] = torch.as_tensor(np.asarray(values, dtype=np.float32))
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "arch": manifest.arch})
    manifest.weights_sha256 = _sha256(folder / WEIGHTS_FILE)
    write_json(folder / MANIFEST_FILE, manifest.to_dict())
    return folder


SHIPPED_MODELS = ("default",)


def resolve_bundle(path: Path | str) -> Path:
    """A bundle folder from a path, or from the name of a model shipped inside the package."""
    if str(path) in SHIPPED_MODELS and not Path(path).exists():
        return Path(str(resources.files("pneumoscan") / "weights" / str(path)))
    return Path(path)


def load_bundle(path: Path | str) -> Bundle:
    """Load a bundle folder (its model.json, or a shipped model's name) into an eval-mode CPU model."""
    folder = resolve_bundle(path)
    if folder.name == MANIFEST_FILE:
        folder = folder.parent
    manifest_path, weights_path = folder / MANIFEST_FILE, folder / WEIGHTS_FILE
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such model folder (a bundle holds {MANIFEST_FILE} and {WEIGHTS_FILE})")
    for required in (manifest_path, weights_path):
        if not required.is_file():
            raise BundleError(f"{folder}: not a model bundle, {required.name} is missing")
    try:
        manifest = Manifest.from_dict(json.loads(manifest_path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise BundleError(f"{manifest_path}: unreadable manifest ({error})") from None
    if manifest.format_version > FORMAT_VERSION:
        raise BundleError(f"{manifest_path}: bundle format {manifest.format_version} is newer than this "
                          f"pneumoscan ({__version__}) reads")
    if manifest.weights_sha256 and manifest.weights_sha256 != _sha256(weights_path):
        raise BundleError(f"{weights_path}: weights do not match the manifest's checksum")
    model = build_model(manifest)
    try:
        tensors = load_file(str(weights_path))
        guard_tensors = {k: tensors.pop(k) for k in list(tensors) if k.startswith(OOD_PREFIX)}
        reference = {k[len(REFERENCE_PREFIX):]: tensors.pop(k).numpy() for k in list(tensors)
                     if k.startswith(REFERENCE_PREFIX)}
        model.load_state_dict(tensors)
    except (SafetensorError, RuntimeError) as error:
        raise BundleError(f"{weights_path}: weights do not fit architecture '{manifest.arch}' ({error})") from None
    model.eval()
    guard = OodGuard.from_tensors(manifest.ood, guard_tensors) if manifest.ood else None
    return Bundle(model=model, manifest=manifest, path=folder, ood=guard, reference=reference or None)
