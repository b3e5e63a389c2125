"""A trained model as one folder: `model.safetensors` + `model.json` (+ `model.onnx`, its exported graph).

The manifest (pneumoscan.models.manifest) carries everything needed to use the weights the way they were
trained, so every tool that loads a bundle preprocesses identically. The weights file also holds the
out-of-distribution guard (`ood.*`) and the validation statistics drift is monitored against
(`reference.*`). safetensors holds only tensors: loading a bundle never executes code.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pneumoscan.atomic import atomic_path, write_json
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.errors import BundleError, PneumoscanError
from pneumoscan.models.manifest import (  # noqa: F401  (re-exported: the manifest's names as they were before)
    EXPORTED_GRAPH_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    REFERENCE_PREFIX,
    SHIPPED_MODELS,
    WEIGHTS_FILE,
    AdaptationRecord,
    ExportRecord,
    Manifest,
    ShiftRecord,
    TrainingRecord,
    ValidationRecord,
    _adaptation_record,
    checked_bundle_folder,
    read_manifest,
    resolve_bundle,
    runtime_versions,
    sha256_file,
)
from pneumoscan.models.ood import TENSOR_PREFIX as OOD_PREFIX
from pneumoscan.models.ood import OodGuard
from pneumoscan.models.registry import create_model


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

    @property
    def input_shape(self) -> tuple[int, int, int]:
        p = self.manifest.preprocess
        return (p.channels, p.image_size, p.image_size)


def build_model(manifest: Manifest) -> nn.Module:
    return create_model(manifest.arch, in_channels=manifest.preprocess.channels,
                        image_size=manifest.preprocess.image_size, **manifest.arch_kwargs)


def save_bundle(folder: Path, model: nn.Module, manifest: Manifest, ood: OodGuard | None = None,
                reference: dict[str, np.ndarray] | None = None) -> Path:
    """Write weights (and the guard's tensors), then the manifest (each atomically). The manifest records
    the weights' hash, so a bundle whose two files do not belong together is refused on load."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if ood is not None:
        state.update(ood.to_tensors())
    manifest.ood = None if ood is None else ood.settings()  # never a guard whose tensors are not in the file
    for name, values in (reference or {}).items():
        state[f"{REFERENCE_PREFIX}{name}"] = torch.as_tensor(np.asarray(values, dtype=np.float32))
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        # one metadata key: safetensors writes its metadata map in a random order, so two keys would give identical
        # weights a different SHA-256 from run to run (the architecture is in the manifest)
        save_file(state, str(tmp), metadata={"format": "pt"})
    manifest.weights_sha256 = sha256_file(folder / WEIGHTS_FILE)
    # an exported graph belongs to the weights it was made from: new weights drop it (make model, ensemble and
    # adapt export again: pneumoscan.serving.export.attach_exported_graph)
    manifest.exported = None
    (folder / EXPORTED_GRAPH_FILE).unlink(missing_ok=True)
    manifest.format_version = FORMAT_VERSION  # the layout to_dict writes, also for a migrated format-1 manifest
    write_json(folder / MANIFEST_FILE, manifest.to_dict())
    return folder


def load_bundle(path: Path | str) -> Bundle:
    """Load a bundle folder (its model.json, or a shipped model's name) into an eval-mode CPU model."""
    folder, manifest = checked_bundle_folder(path)
    weights_path = folder / WEIGHTS_FILE
    try:
        model = build_model(manifest)
    except (KeyError, TypeError, ValueError, RuntimeError, PneumoscanError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BundleError(f"{folder / MANIFEST_FILE}: cannot build architecture '{manifest.arch}' ({reason})") from None
    try:
        tensors = load_file(str(weights_path))
        guard_tensors = {k: tensors.pop(k) for k in list(tensors) if k.startswith(OOD_PREFIX)}
        reference = {k[len(REFERENCE_PREFIX):]: tensors.pop(k).numpy() for k in list(tensors)
                     if k.startswith(REFERENCE_PREFIX)}
        model.load_state_dict(tensors)
    except (SafetensorError, RuntimeError) as error:
        raise BundleError(f"{weights_path}: weights do not fit architecture '{manifest.arch}' ({error})") from None
    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in model.state_dict().values()):
        raise BundleError(f"{weights_path}: the weights hold NaN or infinite values")
    model.eval()
    try:
        guard = OodGuard.from_tensors(manifest.ood, guard_tensors) if manifest.ood else None
    except (KeyError, ValueError, RuntimeError) as error:
        raise BundleError(f"{weights_path}: the out-of-distribution guard's tensors are missing or broken "
                          f"({type(error).__name__}: {error})") from None
    return Bundle(model=model, manifest=manifest, path=folder, ood=guard, reference=reference or None)
