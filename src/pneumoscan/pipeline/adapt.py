"""The `pneumoscan adapt` command: a bundle adapted to one site's own images, without their labels.

The methods themselves (AdaBN, TENT, self-training) are in pneumoscan.training.site_adaptation.

Reads only the images of a folder (class folders, if any, are walked like any other folder: their
names are never used), refuses too few images and refuses a site whose films the model's
out-of-distribution guard finds unlike its training films, then:

1. re-estimates the BatchNorm statistics on the site's images (AdaBN), optionally followed by a
   few TENT passes or by self-training on the site's confident pseudo-labels (`method`;
   training/site_adaptation.py says what each does and why). Self-training aims at the site's pneumonia
   prevalence as EM estimates it from the AdaBN model's outputs, so a site with fewer pneumonias
   than training is not pushed back to the training mix;
1b. checks, without labels, that the stronger method did not make the model read framing: the
   share of site films whose call flips under the framing swaps (zoom in or a pasted marker on the
   films it calls normal, zoom out onto black on those it calls pneumonia), against the model's own
   call on the unswapped film. More flips than the AdaBN-only model by over `max_flip_increase`
   undoes the method (the AdaBN-only model is kept) and says so, in one line and in the record.
   The comparison is with the AdaBN-only model, the one a fallback keeps, not with the unadapted
   one: the unadapted model's calls on drifted films are partly wrong, so its flip share measures
   its drift as much as its framing (on the synthetic contrast drift of tests/test_adapt.py AdaBN
   restores every call and still moves the flip share; see the record's three figures);
2. with `prior`, estimates the site's pneumonia prevalence by EM on the adapted model's outputs
   and moves the decision threshold so the decision is the one the unadapted threshold would
   make on prevalence-corrected probabilities;
3. refits the out-of-distribution guard on the adapted model's features of the site's images
   (pseudo-labels from the adapted model; fitted on one half, its threshold set on the other),
   because the old guard's feature statistics no longer describe the adapted network. The guard
   thus keeps flagging films unusual for this site, and the refusal in the first step keeps a
   paediatric model from being adapted to, say, adults;
4. stores the site's image statistics and scores as the drift reference for `monitor`.

The new bundle records all of this in its manifest (`adaptation`, with the files skipped as unreadable
and why); every tool reads it as usual. The output folder is checked before any image is decoded; a
previous bundle's manifest there is removed before anything is written, and the new one is written
last, so an interrupted rewrite never loads as a bundle.
"""

import copy
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from pneumoscan.atomic import check_output_dir, discard
from pneumoscan.config import AdaptConfig
from pneumoscan.data.cache import ImageCache
from pneumoscan.data.decode import decode_grayscale
from pneumoscan.data.loading import decode_each, load_streamed, streams
from pneumoscan.data.records import SkippedFiles
from pneumoscan.data.sources import UnlabelledFiles
from pneumoscan.data.statistics import image_statistics
from pneumoscan.data.streaming import ImageBatchSource, take
from pneumoscan.errors import PneumoscanError
from pneumoscan.evaluation.prior_shift import adapt_to_prior
from pneumoscan.metrics.thresholds import site_threshold
from pneumoscan.models.bundle import MANIFEST_FILE, AdaptationRecord, Bundle, load_bundle, save_bundle
from pneumoscan.models.inference import predict_probabilities
from pneumoscan.models.ood import OodGuard, fit_guard
from pneumoscan.models.registry import bundle_spec
from pneumoscan.serving.export import report_exported_graph
from pneumoscan.serving.predict import collect_images
from pneumoscan.training.site_adaptation import (
    AdaptationSteps,
    SelfTrainingSettings,
    SelfTrainingSteps,
    adapt_model,
    batchnorm_layers,
    framing_flip_share,
    recalibrate_batchnorm,
    self_train,
    tent,
)


@dataclass
class AdaptResult:
    out_dir: Path
    bundle: Bundle
    record: AdaptationRecord


def adapt_bundle(model_path: Path | str, data: Path | str, out_dir: Path | str, config: AdaptConfig | None = None,
                 console: Console | None = None) -> AdaptResult:
    config = config or AdaptConfig()
    console = console or Console(stderr=True)
    bundle = load_bundle(model_path)
    if bundle.manifest.adaptation is not None:
        console.print(f"{bundle.path}: already adapted (to {bundle.manifest.adaptation.source}); adapting again",
                      highlight=False)
    out_dir = Path(out_dir)
    if out_dir.resolve() == bundle.path.resolve():
        raise PneumoscanError(f"{out_dir}: write the adapted model to a new folder, not over the one it adapts")
    check_output_dir(out_dir)
    images, skipped = _site_images(bundle, Path(data), config, console)

    ood_share = None
    if bundle.ood is not None:
        flagged = bundle.ood.score(bundle.model, images, bundle.preprocess.normalize) > bundle.ood.threshold
        ood_share = round(float(flagged.mean()), 6)
        if ood_share > config.max_ood_share:
            raise PneumoscanError(
                f"{data}: the model's out-of-distribution guard flags {ood_share:.0%} of these {len(images)} images "
                f"(at most {config.max_ood_share:.0%} allowed): they look unlike the films it was trained on, and "
                "adapting to them would hide that rather than fix it")

    if not batchnorm_layers(bundle.model):
        raise PneumoscanError(f"{bundle.path}: architecture '{bundle.manifest.arch}' has no BatchNorm layer, so "
                              "there are no statistics to re-estimate")
    # a bundle adapted before keeps the threshold it was trained with as the starting point
    original = bundle.manifest.adaptation.threshold_before if bundle.manifest.adaptation else bundle.manifest.threshold
    training_prevalence = bundle.manifest.calibrated_prior
    weights = _adapt_weights(bundle, images, config, original, console)
    probabilities = predict_probabilities(bundle, images)
    methods = list(weights.methods)
    threshold, estimated = original, None
    if config.prior:
        policy = bundle.manifest.threshold_policy
        if training_prevalence is None or policy is None:
            raise PneumoscanError(f"{bundle.path}: the bundle does not record the prevalence its probabilities are "
                                  "calibrated to, or its threshold policy; adapt without --prior")
        estimated, _ = adapt_to_prior(probabilities, training_prevalence)
        threshold = site_threshold(policy, original, training_prevalence, estimated)
        methods.append("prior")
        estimated = round(float(estimated), 6)

    guard, guard_note = _refit_guard(bundle, images, probabilities, threshold, config.seed)
    steps, trained = weights.steps, weights.self_training
    record = AdaptationRecord(
        source=str(data), images=len(images), skipped=skipped.count, methods=methods,
        batchnorm_layers=steps.batchnorm_layers,
        tent_steps=steps.tent_steps, tent_entropy_before=steps.tent_entropy_before,
        tent_entropy_after=steps.tent_entropy_after,
        training_prevalence=None if training_prevalence is None else round(training_prevalence, 6),
        estimated_prevalence=estimated, threshold_before=original,
        threshold_after=round(threshold, 6), ood_share_before=ood_share, guard=guard_note,
        adapted_from=bundle.manifest.weights_sha256,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), skipped_files=skipped,
        method=config.resolved_method, site_prevalence=weights.site_prevalence,
        self_training_epochs=0 if trained is None else trained.epochs,
        self_training_loss_first=None if trained is None else trained.loss_first,
        self_training_loss_last=None if trained is None else trained.loss_last,
        pseudo_labels=None if trained is None else {"NORMAL": trained.pseudo_normal,
                                                    "PNEUMONIA": trained.pseudo_pneumonia},
        framing_flips_before=weights.flips_before, framing_flips_batchnorm=weights.flips_batchnorm,
        framing_flips_after=weights.flips_after,
        fallback=weights.fallback)
    manifest = replace(bundle.manifest, threshold=round(threshold, 6), adaptation=record)
    reference = {**image_statistics(images), "scores": probabilities}
    discard(out_dir / MANIFEST_FILE)  # before the weights: old manifest + new weights must never look like a bundle
    save_bundle(out_dir, bundle.model, manifest, ood=guard, reference=reference)
    console.print(f"adapted {bundle.path} to {len(images)} images of {data} ({', '.join(methods)}); "
                  f"wrote {out_dir}", highlight=False, soft_wrap=True)
    report_exported_graph(out_dir, console)
    return AdaptResult(out_dir=out_dir, bundle=load_bundle(out_dir), record=record)


@dataclass(frozen=True)
class WeightsAdaptation:
    """What the adaptation of the weights did: the methods the stored model holds, AdaBN/TENT's steps,
    self-training's (None when it did not run or was undone), the prevalence it aimed at, the framing-flip shares
    of the unadapted and the stored model, and why the asked method was undone (None: kept)."""

    methods: list[str]
    steps: AdaptationSteps
    self_training: SelfTrainingSteps | None
    site_prevalence: float | None
    flips_before: float
    flips_batchnorm: float
    flips_after: float
    fallback: str | None


def _adapt_weights(bundle: Bundle, images: torch.Tensor, config: AdaptConfig, threshold: float,
                   console: Console) -> WeightsAdaptation:
    """AdaBN, then the asked method, then the label-free framing check that may undo it (in place on the
    bundle's model)."""
    model, preprocess, method = bundle.model, bundle.preprocess, config.resolved_method
    flips_before = round(framing_flip_share(model, images, preprocess, threshold, config.seed), 6)
    steps = adapt_model(model, images, preprocess, seed=config.seed)
    flips_batchnorm = round(framing_flip_share(model, images, preprocess, threshold, config.seed), 6)
    if method == "batchnorm":
        return WeightsAdaptation(["batchnorm"], steps, None, None, flips_before, flips_batchnorm, flips_batchnorm,
                                 None)
    batchnorm_only = copy.deepcopy(model.state_dict())
    site_prevalence, trained = None, None
    if method == "tent":
        before, after = tent(model, images, preprocess, config.tent_steps, lr=config.tent_lr, seed=config.seed)
        steps = replace(steps, tent_steps=config.tent_steps, tent_entropy_before=round(before, 6),
                        tent_entropy_after=round(after, 6))
    else:
        site_prevalence = _site_prevalence(bundle, images, threshold)
        trained = self_train(model, images, preprocess, bundle.manifest.calibrated_prior or site_prevalence,
                             site_prevalence, _self_training_settings(config), seed=config.seed)
    recalibrate_batchnorm(model, images, preprocess, seed=config.seed)
    flips = round(framing_flip_share(model, images, preprocess, threshold, config.seed), 6)
    if flips <= flips_batchnorm + config.max_flip_increase:
        return WeightsAdaptation(["batchnorm", method], steps, trained, site_prevalence, flips_before,
                                 flips_batchnorm, flips, None)
    model.load_state_dict(batchnorm_only)
    fallback = (f"{method} undone: its calls flip under the framing swaps in {flips:.1%} of the swapped site films, "
                f"the AdaBN-only model's in {flips_batchnorm:.1%} (at most {config.max_flip_increase:.1%} more "
                "allowed); kept the BatchNorm re-estimation only")
    console.print(fallback, highlight=False, soft_wrap=True)
    return WeightsAdaptation(["batchnorm"], replace(steps, tent_steps=0, tent_entropy_before=None,
                                                    tent_entropy_after=None),
                             None, site_prevalence, flips_before, flips_batchnorm, flips_batchnorm, fallback)


def _site_prevalence(bundle: Bundle, images: torch.Tensor, threshold: float) -> float:
    """The site's pneumonia prevalence, without labels: EM (Saerens et al. 2002) on the AdaBN model's outputs when
    the bundle records the prevalence they are calibrated to, else the share of films it calls pneumonia."""
    probabilities = predict_probabilities(bundle, images)
    training_prevalence = bundle.manifest.calibrated_prior
    if training_prevalence is None:
        return round(float(np.mean(probabilities >= threshold)), 6)
    estimated, _ = adapt_to_prior(probabilities, training_prevalence)
    return round(float(estimated), 6)


def _self_training_settings(config: AdaptConfig) -> SelfTrainingSettings:
    return SelfTrainingSettings(epochs=config.self_training_epochs, lr=config.self_training_lr,
                                confident_share=config.confident_share, diversity_weight=config.diversity_weight,
                                augment=config.self_training_augment)


def _site_images(bundle: Bundle, data: Path, config: AdaptConfig,
                 console: Console) -> tuple[ImageBatchSource, SkippedFiles]:
    """(the folder's readable images at the bundle's size, the files skipped and why); labels never read. A large
    folder (AdaptConfig.stream) is decoded once into the decoded-image cache and read a batch at a time."""
    if not data.is_dir():
        raise PneumoscanError(f"{data}: not a folder of images")
    splits = {child.name.lower() for child in data.iterdir() if child.is_dir()}
    if {"train", "test"} <= splits:
        raise PneumoscanError(f"{data}: a dataset root with train/ and test/; give the folder of the site's images "
                              f"to adapt to (e.g. {data / 'test'}), so no training film is mixed in")
    found = collect_images([data])
    size = bundle.preprocess.image_size
    if streams(config.stream, len(found), size):
        source = UnlabelledFiles(found, str(data), cache=ImageCache())
        try:
            streamed = load_streamed(source, source.splits["all"], size, strict=config.strict, console=console,
                                     description="caching site images")
        except PneumoscanError:  # none readable: the count below says it
            streamed = None
        kept, images, skipped = ((0, None, ()) if streamed is None
                                 else (len(streamed), streamed.images, streamed.skipped))
    else:
        decoded = decode_each(found, lambda file: decode_grayscale(file, size), strict=config.strict,
                              console=console, description="decoding site images")
        kept, skipped = len(decoded.kept), decoded.skipped
        images = torch.from_numpy(np.stack(decoded.arrays)).unsqueeze(1) if decoded.kept else None
    if kept < config.min_images:
        raise PneumoscanError(f"{data}: {kept} readable images; adapting needs at least "
                              f"{config.min_images} (statistics from a handful of films are noise; --min-images sets "
                              "the floor)")
    return images, SkippedFiles.of(skipped)  # type: ignore[return-value]


def _refit_guard(bundle: Bundle, images: torch.Tensor, probabilities: np.ndarray, threshold: float,
                 seed: int) -> tuple[OodGuard | None, str]:
    if bundle.ood is None:
        return None, "none: the adapted bundle had no out-of-distribution guard"
    order = np.random.default_rng(seed).permutation(len(images))
    fit, hold = order[: len(order) // 2], order[len(order) // 2 :]
    pseudo = (probabilities >= threshold).astype(int)
    layers = bundle.ood.layers or bundle_spec(bundle.manifest.arch, bundle.manifest.arch_kwargs).feature_stages
    guard = fit_guard(bundle.model, layers, bundle.preprocess.normalize, take(images, fit), pseudo[fit],
                      take(images, hold), false_alarm_rate=bundle.ood.false_alarm_rate)
    note = (f"refit on the adapted model's features of {len(fit)} site images (pseudo-labels from the adapted "
            f"model), threshold at {1 - guard.false_alarm_rate:.0%} of the other {len(hold)}")
    return guard, note
