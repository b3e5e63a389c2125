"""Turn a trained model into a run folder that is also a model bundle.

Training only trains (pneumoscan.training.loop); this step makes the decisions that need the
finished model: it scores the validation split, chooses the decision threshold by the config's
policy, fits the out-of-distribution guard at the architecture's declared stages, stores the
validation statistics drift is measured against, and writes the bundle, the config, the exact
split, the per-epoch history, the training figures and run.json (what is needed to repeat the run:
code version, library versions, seeds, a fingerprint of the data, and the files skipped as
unreadable). Every caller (train, study, demo, Python) gets the same folder.

The manifest (model.json) is removed first and written last, so a folder whose packaging was
interrupted never loads as a bundle, and a folder holding a manifest holds a finished run.
"""

import csv
import io
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score
from torch import nn

from pneumoscan import __version__
from pneumoscan.atomic import discard, write_json, write_text
from pneumoscan.config import TrainConfig
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.data.records import DataSummary
from pneumoscan.data.statistics import image_statistics
from pneumoscan.evaluation import figures
from pneumoscan.evaluation.architecture import summarize
from pneumoscan.evaluation.framing import score_framing, seen_families
from pneumoscan.metrics import ThresholdPolicy, screening_metrics
from pneumoscan.models.bundle import (
    MANIFEST_FILE,
    Manifest,
    ShiftRecord,
    TrainingRecord,
    ValidationRecord,
    save_bundle,
)
from pneumoscan.models.inference import predict_with
from pneumoscan.models.ood import fit_guard
from pneumoscan.models.registry import model_spec
from pneumoscan.training.figures import training_curves
from pneumoscan.training.loop import EpochRecord, TrainedModel, validation_loss
from pneumoscan.training.prepare import PreparedData

HISTORY_FIELDS = [f.name for f in fields(EpochRecord)]
RUN_FILE = "run.json"
DATA_HASH_COVERS = ("SHA-256 over the sorted (file, label, patient, split, file size in bytes) rows of split.csv "
                    "(size -1 for sources that are not files); files are not re-read, so an edit that keeps a "
                    "file's size is not seen")


@dataclass(frozen=True)
class Reproducibility:
    """What a run needs to be repeated, and to tell whether a repeat saw the same code and data: the same values
    on the same machine give the same metrics (precision fp32; bf16 kernels differ between CPU models)."""

    code_version: str  # pneumoscan version + git commit (-dirty when the checkout had edits)
    versions: dict[str, str]  # pneumoscan, torch, python, monai (runtime_versions)
    seed: int
    split_seed: int
    precision: str
    device: str  # the device training resolved to
    data_sha256: str | None  # pneumoscan.data.records.data_fingerprint of split.csv's rows
    data_sha256_covers: str = DATA_HASH_COVERS

    @classmethod
    def of(cls, config: TrainConfig, summary: DataSummary, code: str, versions: dict[str, str]) -> "Reproducibility":
        return cls(code_version=code, versions=dict(versions), seed=config.seed, split_seed=config.split_seed,
                   precision=config.precision, device=config.torch_device.type, data_sha256=summary.data_sha256)


def run_record(command: str, reproducibility: Reproducibility, summary: DataSummary,
               validation: ValidationRecord) -> dict[str, Any]:
    """run.json: the command, the reproducibility block, the data with its skipped files per split, and the
    validation metrics (the same numbers as the manifest's)."""
    return {
        "command": command, "reproducibility": asdict(reproducibility),
        "data": {"source": summary.source, "split": summary.split, "validation": summary.validation,
                 "counts": {"train": asdict(summary.train), "val": asdict(summary.val),
                            "held_out": None if summary.held_out is None else asdict(summary.held_out)},
                 "skipped": None if summary.skipped is None else {k: v.to_dict() for k, v in summary.skipped.items()},
                 "skipped_total": None if summary.skipped_total is None else summary.skipped_total.to_dict()},
        "validation": validation.metrics.to_dict(),
    }


@dataclass
class RunResult:
    """A finished run: its folder (a bundle), config, history and validation record."""

    out_dir: Path
    config: TrainConfig
    history: list[EpochRecord]
    best_epoch: int
    seconds_to_best: float
    validation: ValidationRecord

    @property
    def best(self) -> EpochRecord:
        """The restored epoch's record (the last one if no epoch was ever restored)."""
        return next((r for r in self.history if r.epoch == self.best_epoch), self.history[-1])


def code_version() -> str:
    """pneumoscan's version plus, when run from a git checkout, the commit (marked -dirty if edited)."""
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{commit}" if commit else __version__


def write_history(path: Path, history: list[EpochRecord]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in asdict(r).items()} for r in history)
    write_text(path, buffer.getvalue())


def draw_architecture(model: nn.Module, preprocess: Preprocess, title: str, path: Path) -> Path:
    input_shape = (preprocess.channels, preprocess.image_size, preprocess.image_size)
    return figures.architecture_diagram(summarize(model, input_shape), input_shape, title, path)


def series_specificity(data: PreparedData, probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """Specificity on the validation normals of each acquisition series: a shift that hits one series shows."""
    by_series: dict[str, list[bool]] = {}
    for record, probability in zip(data.val.records, probabilities, strict=True):
        if record.label == 0 and record.series:
            by_series.setdefault(record.series, []).append(bool(probability < threshold))
    return {series: round(float(np.mean(correct)), 6) for series, correct in sorted(by_series.items())}


def shift_record(model: nn.Module, preprocess: Preprocess, data: PreparedData, series: str,
                 val_probabilities: np.ndarray, threshold: float) -> ShiftRecord | None:
    """The leave-series-out proxy: the held-out normals scored, and ranked against validation pneumonia."""
    if data.held_out is None or series.lower() == "none":
        return None
    held = predict_with(model, preprocess.normalize, data.held_out.images)
    pneumonia = val_probabilities[data.val.labels.numpy() == 1]
    auc = (round(float(roc_auc_score(np.r_[np.zeros(len(held)), np.ones(len(pneumonia))], np.r_[held, pneumonia])),
                 6) if len(pneumonia) else None)
    return ShiftRecord(series=series.upper(), images=len(held),
                       specificity=round(float(np.mean(held < threshold)), 6),
                       specificity_at_half=round(float(np.mean(held < 0.5)), 6), roc_auc=auc,
                       mean_probability=round(float(np.mean(held)), 6))


def validation_record(model: nn.Module, preprocess: Preprocess, data: PreparedData, probabilities: np.ndarray,
                      threshold: float, threshold_policy: str, hold_out_series: str,
                      seen: Sequence[str]) -> ValidationRecord:
    """The validation split scored at the chosen threshold: metrics, loss, specificity per series, the
    leave-series-out proxy and the framing swaps (`seen`: the swap families training augmented with)."""
    labels = data.val.labels.numpy()
    return ValidationRecord(metrics=screening_metrics(labels, probabilities, threshold),
                            loss=validation_loss(probabilities, data.val.labels),
                            threshold_policy=threshold_policy,
                            series_specificity=series_specificity(data, probabilities, threshold),
                            shift=shift_record(model, preprocess, data, hold_out_series, probabilities, threshold),
                            framing=score_framing(model, preprocess.normalize, data.val.images, labels,
                                                  probabilities, threshold, seen=list(seen)))


def package(trained: TrainedModel, data: PreparedData, config: TrainConfig, out_dir: Path,
            command: str = "", label: str = "") -> RunResult:
    """Score validation, choose the threshold, fit the guard and write the run folder; the manifest goes last."""
    out_dir = Path(out_dir)
    discard(out_dir / MANIFEST_FILE)  # a previous run's manifest must not vouch for this run's half-written files
    model, preprocess = trained.model, trained.preprocess
    labels = data.val.labels.numpy()
    probabilities = predict_with(model, preprocess.normalize, data.val.images)
    code = code_version()
    record = TrainingRecord(
        command=command, code_version=code, config=config, data=data.summary,
        best_epoch=trained.best_epoch, epochs_run=len(trained.history), seconds=trained.seconds,
        seconds_to_best=trained.seconds_to_best, train_images_per_second=trained.train_images_per_second)
    threshold = ThresholdPolicy.parse(config.threshold_policy).choose(labels, probabilities, record.calibrated_prior)
    validation = validation_record(model, preprocess, data, probabilities, threshold, config.threshold_policy,
                                   config.hold_out_series, seen_families(config.augmentation))
    manifest = Manifest(arch=config.arch, preprocess=preprocess, threshold=threshold, training=record,
                        validation=validation)
    guard = fit_guard(model, model_spec(config.arch).feature_stages, preprocess.normalize,
                      data.train.images, data.train.labels.numpy(), data.val.images)
    reference: dict[str, np.ndarray] = {**image_statistics(data.val.images), "scores": probabilities}
    write_json(out_dir / "config.json", {"command": command, **config.to_dict()})
    write_history(out_dir / "metrics.csv", trained.history)
    data.write_split_csv(out_dir / "split.csv")
    training_curves({label or f"{config.arch}/{config.optimizer}": [trained.history]},
                            out_dir / "training_curves.png")
    draw_architecture(model, preprocess, config.arch, out_dir / "architecture.png")
    reproducibility = Reproducibility.of(config, data.summary, code, manifest.versions)
    write_json(out_dir / RUN_FILE, run_record(command, reproducibility, data.summary, validation))
    save_bundle(out_dir, model, manifest, ood=guard, reference=reference)  # last: its manifest marks a finished run
    return RunResult(out_dir=out_dir, config=config, history=trained.history, best_epoch=trained.best_epoch,
                     seconds_to_best=trained.seconds_to_best, validation=validation)
