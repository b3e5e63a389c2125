"""The `pneumoscan ensemble` command: trained bundles combined into one ensemble bundle, validated like a run.

The ensemble model itself (EnsembleModel) is in pneumoscan.models.ensemble.

The members must have been validated on the same split (same data and split settings), so the
ensemble can be scored on that split: its threshold is chosen by the first member's policy on the
ensemble's own validation probabilities, its out-of-distribution guard is fitted at the first
member's stages inside the ensemble, and its drift reference is the validation split. The
validation record and the leave-series-out proxy (if the members held a series out) are computed
exactly as for a trained run, so an ensemble enters the recipe tables on equal terms.

The output folder is checked before the split is decoded. A previous bundle's manifest there is
removed before anything is written and the new manifest is written last, so an interrupted
rewrite never loads as a bundle (nor as a mix of the old bundle and new files).
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rich.console import Console

from pneumoscan.atomic import check_output_dir, discard, write_json
from pneumoscan.data.statistics import image_statistics
from pneumoscan.errors import PneumoscanError
from pneumoscan.evaluation.framing import seen_families
from pneumoscan.metrics import ThresholdPolicy
from pneumoscan.models.bundle import MANIFEST_FILE, Bundle, Manifest, ValidationRecord, load_bundle, save_bundle
from pneumoscan.models.ensemble import ENSEMBLE_ARCH, EnsembleModel, MemberSpec, ensemble_preprocess
from pneumoscan.models.inference import predict_with
from pneumoscan.models.ood import fit_guard
from pneumoscan.models.registry import bundle_spec
from pneumoscan.pipeline.packaging import validation_record
from pneumoscan.serving.export import report_exported_graph
from pneumoscan.training.prepare import DATA_KEYS, prepare_data

SPLIT_KEYS = tuple(key for key in DATA_KEYS if key not in ("image_size", "strict", "cache"))


@dataclass
class EnsembleResult:
    out_dir: Path
    bundle: Bundle
    members: list[MemberSpec]
    validation: ValidationRecord


def _member_spec(bundle: Bundle, source: str) -> MemberSpec:
    training = bundle.manifest.training
    return MemberSpec(arch=bundle.manifest.arch, preprocess=bundle.preprocess, arch_kwargs=bundle.manifest.arch_kwargs,
                      threshold=bundle.manifest.threshold, source=source,
                      weights_sha256=bundle.manifest.weights_sha256,
                      calibrated_prior=None if training is None else round(training.calibrated_prior, 6),
                      command="" if training is None else training.command,
                      config=None if training is None else training.config.to_dict(),
                      best_epoch=None if training is None else training.best_epoch,
                      seconds=None if training is None else training.seconds)


def build_ensemble(member_paths: Sequence[Path | str], out_dir: Path | str, console: Console | None = None,
                   command: str = "") -> EnsembleResult:
    console = console or Console(stderr=True)
    if len(member_paths) < 2:
        raise PneumoscanError("an ensemble needs at least two member bundles")
    bundles = [load_bundle(path) for path in member_paths]
    if any(Path(out_dir).resolve() == bundle.path.resolve() for bundle in bundles):
        raise PneumoscanError(f"{out_dir}: write the ensemble to a new folder, not over one of its members")
    for path, bundle in zip(member_paths, bundles, strict=True):
        if bundle.manifest.arch == ENSEMBLE_ARCH or bundle.manifest.adaptation is not None:
            raise PneumoscanError(f"{path}: members must be trained models (not ensembles or adapted bundles)")
        if bundle.manifest.training is None:
            raise PneumoscanError(f"{path}: the bundle has no training record, so its validation split is unknown")
    configs = [bundle.manifest.training.config for bundle in bundles]  # type: ignore[union-attr]
    for path, config in zip(member_paths[1:], configs[1:], strict=True):
        differing = [key for key in SPLIT_KEYS if getattr(config, key) != getattr(configs[0], key)]
        if differing:
            raise PneumoscanError(f"{path}: validated on another split than {member_paths[0]} (differs in "
                                  f"{', '.join(differing)}); ensemble members must share one split")
    check_output_dir(out_dir)
    specs = [_member_spec(bundle, str(path)) for path, bundle in zip(member_paths, bundles, strict=True)]
    model = EnsembleModel([bundle.model for bundle in bundles], specs).eval()
    preprocess = ensemble_preprocess(specs)
    data = prepare_data(replace(configs[0], image_size=preprocess.image_size), console)

    labels = data.val.labels.numpy()
    probabilities = predict_with(model, preprocess.normalize, data.val.images)
    priors = [spec.calibrated_prior for spec in specs if spec.calibrated_prior is not None]
    prior = float(np.mean(priors)) if priors else float(labels.mean())
    threshold = ThresholdPolicy.parse(configs[0].threshold_policy).choose(labels, probabilities, prior)
    seen = sorted({family for config in configs for family in seen_families(config.augmentation)})
    validation = validation_record(model, preprocess, data, probabilities, threshold, configs[0].threshold_policy,
                                   configs[0].hold_out_series, seen)
    arch_kwargs = {"members": [spec.to_dict() for spec in specs]}
    manifest = Manifest(arch=ENSEMBLE_ARCH, preprocess=preprocess, threshold=threshold, arch_kwargs=arch_kwargs,
                        validation=validation)
    guard = fit_guard(model, bundle_spec(ENSEMBLE_ARCH, arch_kwargs).feature_stages, preprocess.normalize,
                      data.train.images, data.train.labels.numpy(), data.val.images)
    out_dir = Path(out_dir)
    discard(out_dir / MANIFEST_FILE)
    skipped = data.summary.skipped or {}
    write_json(out_dir / "ensemble.json", {"command": command, "members": [str(p) for p in member_paths],
                                           "data": configs[0].data, "validation_summary": data.summary.validation,
                                           "skipped": {name: part.to_dict() for name, part in skipped.items()}})
    data.write_split_csv(out_dir / "split.csv")
    save_bundle(out_dir, model, manifest, ood=guard,  # last: its manifest marks a finished bundle
                reference={**image_statistics(data.val.images), "scores": probabilities})
    console.print(f"ensemble of {len(specs)} members written to {out_dir}", highlight=False)
    report_exported_graph(out_dir, console)
    return EnsembleResult(out_dir=out_dir, bundle=load_bundle(out_dir), members=specs, validation=validation)
