"""A trained model as one folder: `model.safetensors` + `model.json`.

The manifest carries everything needed to use the weights the way they were trained
(architecture, input size, normalization, threshold, class names) plus where they came from
(the fully resolved training config, data summary, validation metrics, library versions), so
every tool that loads a bundle preprocesses identically. The weights file also holds the
out-of-distribution guard (`ood.*`) and the validation statistics drift is monitored against
(`reference.*`). safetensors holds only tensors: loading a bundle never executes code.
"""

import hashlib
import json
import math
import platform
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pneumoscan import CLASS_NAMES, __version__
from pneumoscan.atomic import atomic_path, write_json
from pneumoscan.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, TrainConfig
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.data.records import DataSummary, SkippedFiles, SplitCounts
from pneumoscan.errors import BundleError, PneumoscanError
from pneumoscan.metrics import ScreeningMetrics, calibrated_prior
from pneumoscan.metrics.framing import FramingRecord
from pneumoscan.models.ood import TENSOR_PREFIX as OOD_PREFIX
from pneumoscan.models.ood import OodGuard, OodSettings
from pneumoscan.models.registry import create_model

WEIGHTS_FILE = "model.safetensors"
REFERENCE_PREFIX = "reference."
MANIFEST_FILE = "model.json"
FORMAT_VERSION = 4  # 4: field of view, framing-swap proxy; 3: preprocessing steps, site-shift proxy;
# 2: typed training record, preset names, versions;
# older formats are read (1 is migrated); an older reader refuses a newer format instead of preprocessing wrongly


def runtime_versions() -> dict[str, str]:
    """The versions a bundle was made with: results can differ between releases of these."""
    versions = {"pneumoscan": __version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        versions["monai"] = metadata.version("monai")
    except metadata.PackageNotFoundError:  # pragma: no cover - monai is a dependency
        versions["monai"] = "not installed"
    return versions


@dataclass(frozen=True)
class TrainingRecord:
    """How the weights were made: the command, the resolved config, the data and the run's timings."""

    command: str
    code_version: str
    config: TrainConfig
    data: DataSummary
    best_epoch: int
    epochs_run: int
    seconds: float
    seconds_to_best: float
    train_images_per_second: float

    @property
    def calibrated_prior(self) -> float:
        """The pneumonia share the model's probabilities are calibrated to; label smoothing by eps pulls
        every target, and so the mean output, to eps/2 + (1 - eps) * prior."""
        prior = calibrated_prior(self.config.imbalance, self.data.train.images, self.data.train.pneumonia)
        return self.config.label_smoothing / 2 + (1.0 - self.config.label_smoothing) * prior


@dataclass(frozen=True)
class ShiftRecord:
    """The leave-series-out proxy: normal films of one acquisition series kept out of training and
    validation entirely, scored at the stored threshold (see TrainConfig.hold_out_series)."""

    series: str
    images: int
    specificity: float  # at the stored threshold
    specificity_at_half: float
    roc_auc: float | None  # held-out normals against the validation pneumonia films (None without any)
    mean_probability: float


@dataclass
class ValidationRecord:
    """The validation split's metrics at the stored threshold (the split that chose the checkpoint)."""

    metrics: ScreeningMetrics
    loss: float
    threshold_policy: str
    series_specificity: dict[str, float] = field(default_factory=dict)  # per acquisition series of the normals
    shift: ShiftRecord | None = None
    framing: FramingRecord | None = None  # the framing-swap proxy (issue 19; pneumoscan.metrics.framing)


@dataclass(frozen=True)
class AdaptationRecord:
    """What `pneumoscan adapt` did to a bundle, on which images (never their labels)."""

    source: str  # the folder of site images, as given
    images: int  # images the statistics were estimated on
    skipped: int  # files that could not be read
    methods: list[str]  # "batchnorm", "tent", "self-training", "prior": what the adapted bundle holds
    batchnorm_layers: int
    tent_steps: int
    tent_entropy_before: float | None
    tent_entropy_after: float | None
    training_prevalence: float | None  # the pneumonia share the unadapted model is calibrated to, if recorded
    estimated_prevalence: float | None  # EM estimate at the site (when "prior" is among the methods)
    threshold_before: float
    threshold_after: float
    ood_share_before: float | None  # share of site images the unadapted model's guard flagged
    guard: str  # what happened to the out-of-distribution guard, in words
    adapted_from: str  # weights_sha256 of the bundle that was adapted
    created: str
    skipped_files: SkippedFiles | None = None  # which files were skipped and why (None: not recorded)
    # issue 20 (older manifests lack these and read as the defaults): the method asked for, self-training's figures,
    # the label-free framing check and, when the asked method was undone, why
    method: str = "batchnorm"
    site_prevalence: float | None = None  # the prevalence self-training aimed at (EM on the AdaBN model's outputs)
    self_training_epochs: int = 0
    self_training_loss_first: float | None = None
    self_training_loss_last: float | None = None
    pseudo_labels: dict[str, int] | None = None  # films pseudo-labelled per pass, per class
    framing_flips_before: float | None = None  # share of (film, framing swap) pairs whose call flips: unadapted
    framing_flips_batchnorm: float | None = None  # the same after AdaBN alone (what a fallback keeps)
    framing_flips_after: float | None = None  # the same for the adapted model as stored
    fallback: str | None = None  # why the asked method was undone (None: it was kept)


@dataclass
class Manifest:
    arch: str
    preprocess: Preprocess
    threshold: float = 0.5
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    training: TrainingRecord | None = None
    validation: ValidationRecord | None = None
    versions: dict[str, str] = field(default_factory=runtime_versions)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    weights_sha256: str = ""
    format_version: int = FORMAT_VERSION
    ood: OodSettings | None = None  # the out-of-distribution guard's settings; its tensors sit in the weights file
    adaptation: AdaptationRecord | None = None  # set by `pneumoscan adapt`

    @property
    def calibrated_prior(self) -> float | None:
        """The prevalence the probabilities are calibrated to: the training record's, or for an ensemble the
        mean of its members'; None when neither is recorded."""
        if self.training is not None:
            return self.training.calibrated_prior
        priors = [m["calibrated_prior"] for m in self.arch_kwargs.get("members") or []
                  if m.get("calibrated_prior") is not None]
        return float(np.mean(priors)) if priors else None

    @property
    def threshold_policy(self) -> str | None:
        if self.training is not None:
            return self.training.config.threshold_policy
        return None if self.validation is None else self.validation.threshold_policy

    def to_dict(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "format_version": self.format_version, "arch": self.arch, "arch_kwargs": self.arch_kwargs,
            "input_size": self.preprocess.image_size, "channels": self.preprocess.channels,
            "normalization": {"mean": self.preprocess.mean, "std": self.preprocess.std},
            "preprocessing": {"intensity": self.preprocess.intensity, "border_crop": self.preprocess.border_crop,
                              "fov": self.preprocess.fov},
            "threshold": self.threshold, "class_names": self.class_names,
            "training": None, "validation": None if self.validation is None else asdict(self.validation),
            "versions": self.versions, "created": self.created, "weights_sha256": self.weights_sha256,
            "ood": None if self.ood is None else asdict(self.ood),
            "adaptation": None if self.adaptation is None else asdict(self.adaptation),
        }
        if self.training is not None:
            payload["training"] = {**asdict(self.training), "config": self.training.config.to_dict()}
        return payload

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "Manifest":
        data = _migrate_format_1(payload) if int(payload.get("format_version", 1)) == 1 else dict(payload)
        normalization, steps = data["normalization"], dict(data.get("preprocessing") or {})
        training, validation, ood = data.get("training"), data.get("validation"), data.get("ood")
        return cls(
            arch=str(data["arch"]),
            preprocess=Preprocess(image_size=int(data["input_size"]), channels=int(data["channels"]),
                                  mean=float(normalization["mean"]), std=float(normalization["std"]),
                                  intensity=str(steps.get("intensity", "none")),
                                  border_crop=float(steps.get("border_crop", 0.0)),
                                  fov=str(steps.get("fov", "none"))),
            threshold=float(data["threshold"]),
            arch_kwargs=dict(data.get("arch_kwargs") or {}),
            class_names=list(data.get("class_names") or CLASS_NAMES),
            training=None if not training else TrainingRecord(
                command=str(training["command"]), code_version=str(training["code_version"]),
                config=TrainConfig.from_dict(training["config"]), data=_data_summary(training["data"]),
                best_epoch=int(training["best_epoch"]), epochs_run=int(training["epochs_run"]),
                seconds=float(training["seconds"]), seconds_to_best=float(training["seconds_to_best"]),
                train_images_per_second=float(training["train_images_per_second"])),
            validation=None if not validation else ValidationRecord(
                metrics=ScreeningMetrics.from_dict(validation["metrics"]), loss=float(validation["loss"]),
                threshold_policy=str(validation["threshold_policy"]),
                series_specificity={str(k): float(v) for k, v in (validation.get("series_specificity") or {}).items()},
                shift=None if not validation.get("shift") else ShiftRecord(**validation["shift"]),
                framing=None if not validation.get("framing") else FramingRecord.from_dict(validation["framing"])),
            versions=dict(data.get("versions") or {}),
            created=str(data.get("created", "")),
            weights_sha256=str(data.get("weights_sha256", "")),
            format_version=int(data.get("format_version", FORMAT_VERSION)),
            ood=None if not ood else OodSettings(layers=list(ood["layers"]), threshold=float(ood["threshold"]),
                                                 false_alarm_rate=float(ood["false_alarm_rate"]),
                                                 method=str(ood.get("method", OodSettings.method)),
                                                 views=list(ood.get("views", []))),
            adaptation=None if not data.get("adaptation") else _adaptation_record(data["adaptation"]),
        )


def _data_summary(payload: dict[str, Any]) -> DataSummary:
    return DataSummary(source=str(payload["source"]), split=str(payload["split"]),
                       validation=str(payload["validation"]), train=SplitCounts(**payload["train"]),
                       val=SplitCounts(**payload["val"]),
                       held_out=SplitCounts(**payload["held_out"]) if payload.get("held_out") else None,
                       skipped=None if payload.get("skipped") is None else
                       {str(k): SkippedFiles.from_dict(v) for k, v in payload["skipped"].items()},
                       data_sha256=None if payload.get("data_sha256") is None else str(payload["data_sha256"]))


def _adaptation_record(payload: dict[str, Any]) -> AdaptationRecord:
    """An older manifest lacks the later fields (skipped_files: None, i.e. not recorded; issue 20's: their
    defaults); fields a later pneumoscan added are ignored, as they change no preprocessing."""
    known = {item.name for item in fields(AdaptationRecord)}
    skipped = payload.get("skipped_files")
    return AdaptationRecord(**{**{k: v for k, v in payload.items() if k in known},
                               "skipped_files": None if skipped is None else SkippedFiles.from_dict(skipped)})


def _migrate_format_1(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 1 kept validation metrics as a loose dict (with `precision` for PPV) and no versions."""
    data = dict(payload)
    old = data.pop("validation_metrics", None) or {}
    if old:
        confusion = old["confusion_matrix"]
        tn, fp, fn, tp = (int(confusion[k]) for k in ("tn", "fp", "fn", "tp"))
        sensitivity, specificity = old.get("sensitivity"), old.get("specificity")
        metrics = {
            "threshold": old["threshold"], "n_images": old["n_images"], "confusion": confusion,
            "accuracy": old.get("accuracy"), "sensitivity": sensitivity, "specificity": specificity,
            "balanced_accuracy": (None if sensitivity is None or specificity is None
                                  else (sensitivity + specificity) / 2),
            "ppv": old.get("precision"), "npv": tn / (tn + fn) if tn + fn else None, "f1": old.get("f1"),
            "roc_auc": old.get("roc_auc"), "pr_auc": None, "brier": None, "ece": None,
        }
        data["validation"] = {"metrics": metrics, "loss": old.get("loss", float("nan")),
                              "threshold_policy": old.get("threshold_policy", "fixed:0.5")}
    data["versions"] = {"pneumoscan": str(data.pop("pneumoscan_version", "unknown")),
                        "note": "format 1 bundle: torch and MONAI versions were not recorded"}
    data["format_version"] = 1
    return data


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
    manifest.ood = None if ood is None else ood.settings()  # never a guard whose tensors are not in the file
    for name, values in (reference or {}).items():
        state[f"{REFERENCE_PREFIX}{name}"] = torch.as_tensor(np.asarray(values, dtype=np.float32))
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        # one metadata key: safetensors writes its metadata map in a random order, so two keys would give identical
        # weights a different SHA-256 from run to run (the architecture is in the manifest)
        save_file(state, str(tmp), metadata={"format": "pt"})
    manifest.weights_sha256 = _sha256(folder / WEIGHTS_FILE)
    manifest.format_version = FORMAT_VERSION  # the layout to_dict writes, also for a migrated format-1 manifest
    write_json(folder / MANIFEST_FILE, manifest.to_dict())
    return folder


SHIPPED_MODELS = ("default",)


def resolve_bundle(path: Path | str) -> Path:
    """A bundle folder from a path, or from the name of a model shipped inside the package."""
    if str(path) in SHIPPED_MODELS and not Path(path).exists():
        return Path(str(resources.files("pneumoscan") / "weights" / str(path)))
    return Path(path)


def read_manifest(folder: Path) -> Manifest:
    manifest_path = folder / MANIFEST_FILE
    try:
        manifest = Manifest.from_dict(json.loads(manifest_path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, RecursionError,
            PneumoscanError) as error:  # RecursionError: JSON nested deeper than Python's stack
        reason = str(error) if isinstance(error, PneumoscanError) else f"{type(error).__name__}: {error}"
        raise BundleError(f"{manifest_path}: unreadable manifest ({reason})") from None
    if manifest.format_version > FORMAT_VERSION:
        raise BundleError(f"{manifest_path}: bundle format {manifest.format_version} is newer than this "
                          f"pneumoscan ({__version__}) reads")
    _check_manifest(manifest, manifest_path)
    return manifest


def _check_manifest(manifest: Manifest, manifest_path: Path) -> None:
    """Refuse values that would make every answer quietly wrong (a NaN threshold labels everything NORMAL)."""
    problems = []
    if not (math.isfinite(manifest.threshold) and 0.0 <= manifest.threshold <= 1.0):
        problems.append(f"threshold {manifest.threshold} is not a probability")
    steps = manifest.preprocess
    if not (math.isfinite(steps.mean) and math.isfinite(steps.std) and steps.std > 0):
        problems.append(f"normalisation mean {steps.mean} / std {steps.std} is not usable (std must be > 0)")
    if steps.image_size < MIN_IMAGE_SIZE:  # the minimum training accepts: no pneumoscan command writes a smaller one
        problems.append(f"image_size {steps.image_size} is too small (at least {MIN_IMAGE_SIZE} px)")
    if steps.image_size > MAX_IMAGE_SIZE or steps.channels < 1:  # would allocate terabytes, or cannot exist
        problems.append(f"input {steps.channels} x {steps.image_size} px is not a model input (at most "
                        f"{MAX_IMAGE_SIZE} px, at least 1 channel)")
    names = manifest.class_names
    if len(names) != 2 or not all(isinstance(name, str) and name for name in names) or names[0] == names[1]:
        problems.append(f"class_names {manifest.class_names} are not two distinct names")
    if manifest.format_version < 1:
        problems.append(f"format_version {manifest.format_version} does not exist")
    if manifest.ood is not None and not math.isfinite(manifest.ood.threshold):
        problems.append("the out-of-distribution guard's threshold is not a number")
    if problems:
        raise BundleError(f"{manifest_path}: invalid manifest: {'; '.join(problems)}")


def _check_inside(folder: Path, file: Path) -> None:
    """A bundle is one self-contained folder: its checksum vouches for the weights' bytes, not for where a link
    leads, and a link out of the folder (to another user's file, a device, a file swapped later) is refused."""
    if file.is_symlink() and not file.resolve().is_relative_to(folder.resolve()):
        raise BundleError(f"{file}: a link to {file.resolve()}, outside the bundle folder; copy the file into the "
                          "bundle instead")


def load_bundle(path: Path | str) -> Bundle:
    """Load a bundle folder (its model.json, or a shipped model's name) into an eval-mode CPU model."""
    folder = resolve_bundle(path)
    if folder.name == MANIFEST_FILE:
        folder = folder.parent
    weights_path = folder / WEIGHTS_FILE
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such model folder (a bundle holds {MANIFEST_FILE} and {WEIGHTS_FILE})")
    for required in (folder / MANIFEST_FILE, weights_path):
        if not required.is_file():
            raise BundleError(f"{folder}: not a model bundle, {required.name} is missing")
        _check_inside(folder, required)
    manifest = read_manifest(folder)
    if not re.fullmatch(r"[0-9a-f]{64}", manifest.weights_sha256):
        raise BundleError(f"{folder / MANIFEST_FILE}: no valid weights_sha256, so the weights cannot be verified; "
                          "refusing to load them")
    if manifest.weights_sha256 != _sha256(weights_path):
        raise BundleError(f"{weights_path}: weights do not match the manifest's checksum")
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
