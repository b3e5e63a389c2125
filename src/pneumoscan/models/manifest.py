"""What a bundle says about its model, read without torch: the manifest (`model.json`) and where a bundle lives.

The manifest carries everything needed to use the weights the way they were trained (architecture, input
size, normalization, threshold, class names) plus where they came from (the fully resolved training config,
data summary, validation metrics, library versions) and, where the bundle holds one, its exported ONNX graph
(`exported`). It is apart from pneumoscan.models.bundle, which builds the network, so that the ONNX Runtime
engine (pneumoscan.serving.engine) can read a bundle and answer without importing torch.
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

from pneumoscan import CLASS_NAMES, __version__
from pneumoscan.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, TrainConfig
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.data.records import DataSummary, SkippedFiles, SplitCounts
from pneumoscan.errors import BundleError, PneumoscanError
from pneumoscan.metrics import ScreeningMetrics, calibrated_prior
from pneumoscan.metrics.framing import FramingRecord
from pneumoscan.models.ood_statistics import OodSettings

WEIGHTS_FILE = "model.safetensors"
REFERENCE_PREFIX = "reference."
MANIFEST_FILE = "model.json"
EXPORTED_GRAPH_FILE = "model.onnx"  # the bundle's own ONNX graph (make model, ensemble, adapt write it)
FORMAT_VERSION = 4  # 4: field of view, framing-swap proxy; 3: preprocessing steps, site-shift proxy;
# 2: typed training record, preset names, versions;
# older formats are read (1 is migrated); an older reader refuses a newer format instead of preprocessing wrongly


def runtime_versions() -> dict[str, str]:
    """The versions a bundle was made with: results can differ between releases of these."""
    import torch  # only where a bundle is made, and so torch is there

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


@dataclass(frozen=True)
class ExportRecord:
    """The bundle's own exported ONNX graph (`model.onnx`): which weights it was made from, its own checksum, and
    how it answered against PyTorch when it was made (pneumoscan.serving.export.ParityReport's figures)."""

    file: str  # inside the bundle folder
    sha256: str  # of the graph file: a graph that does not match is not used
    weights_sha256: str  # the weights it was exported from: a graph of other weights is not used
    opset: int
    max_abs_diff: float  # largest |P_onnx - P_torch| on the parity sample
    label_agreement: float
    guard_max_abs_diff: float | None
    n_images: int
    sample: str  # what the parity sample was (built-in synthetic films: numerics, not accuracy)


_EXPORT_FIELDS = {item.name for item in fields(ExportRecord)}  # fields a later pneumoscan adds are ignored


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
    exported: ExportRecord | None = None  # the bundle's own ONNX graph, if it holds one (older readers ignore it)

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
            "exported": None if self.exported is None else asdict(self.exported),
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
            exported=None if not data.get("exported") else ExportRecord(**{k: v for k, v in data["exported"].items()
                                                                          if k in _EXPORT_FIELDS}),
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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def check_inside(folder: Path, file: Path) -> None:
    """A bundle is one self-contained folder: its checksum vouches for the weights' bytes, not for where a link
    leads, and a link out of the folder (to another user's file, a device, a file swapped later) is refused."""
    if file.is_symlink() and not file.resolve().is_relative_to(folder.resolve()):
        raise BundleError(f"{file}: a link to {file.resolve()}, outside the bundle folder; copy the file into the "
                          "bundle instead")


def checked_bundle_folder(path: Path | str) -> tuple[Path, Manifest]:
    """(folder, manifest) of a bundle whose manifest is valid and whose weights match its checksum: what every
    engine checks before it answers (the weights are hashed, not loaded)."""
    folder = resolve_bundle(path)
    if folder.name == MANIFEST_FILE:
        folder = folder.parent
    weights_path = folder / WEIGHTS_FILE
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such model folder (a bundle holds {MANIFEST_FILE} and {WEIGHTS_FILE})")
    for required in (folder / MANIFEST_FILE, weights_path):
        if not required.is_file():
            raise BundleError(f"{folder}: not a model bundle, {required.name} is missing")
        check_inside(folder, required)
    manifest = read_manifest(folder)
    if not re.fullmatch(r"[0-9a-f]{64}", manifest.weights_sha256):
        raise BundleError(f"{folder / MANIFEST_FILE}: no valid weights_sha256, so the weights cannot be verified; "
                          "refusing to load them")
    if manifest.weights_sha256 != sha256_file(weights_path):
        raise BundleError(f"{weights_path}: weights do not match the manifest's checksum")
    return folder, manifest
