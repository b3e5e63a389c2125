"""MODEL_CARD.md (Mitchell et al. 2019), generated from the bundle and one evaluation so it never drifts from them."""

from typing import TYPE_CHECKING

from pneumoscan.data.records import SkippedFiles
from pneumoscan.evaluation.report_html import METRIC_LABELS
from pneumoscan.metrics import METRIC_NAMES
from pneumoscan.models.bundle import Manifest

if TYPE_CHECKING:
    from pneumoscan.evaluation.results import EvaluationResult

KERMANY = ("Kermany D, Zhang K, Goldbaum M (2018). Labeled Optical Coherence Tomography (OCT) and Chest X-Ray "
           "Images for Classification. Mendeley Data, v2. doi:10.17632/rscbjbr9sj.2 (CC BY 4.0)")


def _ci(values: tuple[float, float] | None) -> str:
    return "n/a" if values is None else f"{values[0]:.3f}–{values[1]:.3f}"


def _with_ci(value: float | None, interval: tuple[float, float] | None) -> str:
    return "n/a" if value is None else f"{value:.3f} ({_ci(interval)})"


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _code(text: str) -> str:
    """`text` as a Markdown code span, whatever backticks it holds."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _skipped_lines(skipped: SkippedFiles | None, what: str) -> str:
    """A bullet saying how many files of `what` could not be read and why, then the recorded files."""
    if skipped is None:
        return f"- Files of {what} skipped as unreadable: not recorded.\n"
    if not skipped.count:
        return f"- Files of {what} skipped as unreadable: none.\n"
    kinds = ", ".join(f"{kind} {n}" for kind, n in skipped.by_kind.items())
    listed = "" if len(skipped.files) == skipped.count else f"; the first {len(skipped.files)}"
    return (f"- **Files of {what} skipped as unreadable: {skipped.count}** ({kinds}), left out of its numbers"
            f"{listed}:\n" + "".join(f"  - {_code(f.source)}: {f.kind}, {f.reason}\n" for f in skipped.files))


FOV_WORDS = {"none": "the film as it is", "trim": "padding trimmed (flat or repeated border rows and columns)",
             "lungs": "padding trimmed, then cropped to the lung fields"}


def _field_of_view(manifest: Manifest) -> str:
    """The field of view in words: the bundle's, or each member's for an ensemble (whose own input is the film)."""
    members = manifest.arch_kwargs.get("members") or []
    modes = [str(m["preprocess"].get("fov", "none")) for m in members] or [manifest.preprocess.fov]
    if len(set(modes)) == 1:
        prefix = "of every member " if members else ""
        return f"{prefix}`{modes[0]}` ({FOV_WORDS.get(modes[0], modes[0])})"
    return ", ".join(f"member {i}: `{mode}`" for i, mode in enumerate(modes))


def _framing_lines(result: "EvaluationResult") -> str:
    """The framing-swap proxy on the evaluated films: does the answer move when only the framing moves?"""
    record = result.framing
    if record is None:
        return ""
    rows = "\n".join(f"| `{swap.name}` | {swap.measured} | {swap.clean:.3f} | {swap.swapped:.3f} | "
                     f"{swap.drop:+.3f} ({swap.drop_ci95[0]:+.3f} to {swap.drop_ci95[1]:+.3f}) | {swap.flipped:.3f} |"
                     for swap in record.swaps)
    seen = ", ".join(record.seen_families) or "none"
    return f"""
### Framing swaps (does the answer move when only the framing moves?)
Framing gap **{record.framing_gap:.3f}** ({record.framing_gap_ci95[0]:.3f}-{record.framing_gap_ci95[1]:.3f}): the \
share of these films whose label flips when a normal film is zoomed in or given a large marker, or a pneumonia film \
is zoomed out onto black. Robust balanced accuracy {record.robust_balanced_accuracy:.3f} (as they are: \
{record.clean_balanced_accuracy:.3f}). Swap families its training augmentation produced: {seen}.

| swap | measured | as they are | swapped | drop (95 % CI) | flipped |
|---|---|---|---|---|---|
{rows}
"""


def _audit_line(result: "EvaluationResult") -> str:
    """One line: the shortcut audit's verdict on these films and each check's answer (issue 20)."""
    if result.audit is None:
        return ""
    failing = [f"{check.name}: {check.finding}" for check in result.audit.checks if check.passed is False]
    detail = f" Failing: {' | '.join(failing)}." if failing else ""
    answers = result.audit.summary_line().split("(", 1)[1].rstrip(")")
    return (f"\n**Shortcut audit: {result.audit.verdict.upper()}** ({answers}; rules in the report's audit section and "
            f"`pneumoscan audit`).{detail}\n")


def _members_and_adaptation(manifest: Manifest) -> str:
    """An ensemble's members and an adapted bundle's adaptation, when the bundle is either."""
    lines = []
    for index, member in enumerate(manifest.arch_kwargs.get("members") or []):
        steps = member["preprocess"]
        lines.append(f"- Member {index}: `{member['arch']}` at {steps['image_size']} px, intensity "
                     f"`{steps.get('intensity', 'none')}`, border crop {steps.get('border_crop', 0.0)}, field of view "
                     f"`{steps.get('fov', 'none')}`, from "
                     f"`{member.get('source', '')}`"
                     + (f", trained with `{member['command']}` (best epoch {member.get('best_epoch')})"
                        if member.get("command") else "")
                     + "; the ensemble averages the members' probabilities.")
    adaptation = manifest.adaptation
    if adaptation is not None:
        lines.append(f"- **Adapted without labels** to {adaptation.images} images of `{adaptation.source}` "
                     f"({', '.join(adaptation.methods)}; {adaptation.created}); threshold "
                     f"{adaptation.threshold_before:.4f} -> {adaptation.threshold_after:.4f}"
                     + (f", site prevalence estimated {adaptation.estimated_prevalence:.3f}"
                        if adaptation.estimated_prevalence is not None else "") + ".")
        lines.append(f"- Out-of-distribution guard: {adaptation.guard}. The training and validation records "
                     "below are those of the unadapted model.")
        lines.append(_skipped_lines(adaptation.skipped_files, "the site's images").rstrip("\n"))
    return "\n".join(lines) + "\n" if lines else ""


def _training_lines(manifest: Manifest) -> str:
    training, validation = manifest.training, manifest.validation
    if training is None:
        extra = ""
        if validation is not None:
            m = validation.metrics
            extra = (f"- Validation ({validation.threshold_policy} threshold): accuracy {_value(m.accuracy)}, "
                     f"sensitivity {_value(m.sensitivity)}, specificity {_value(m.specificity)}, AUC "
                     f"{_value(m.roc_auc)} (the members' shared validation split).\n")
        return _members_and_adaptation(manifest) + (extra or "- No training record in this bundle.\n")
    config, data = training.config, training.data
    augmentation = config.augment + (" with horizontal flips" if config.hflip else "")
    lines = [
        f"- Trained with: `{training.command or 'n/a'}` (code {training.code_version}; optimizer {config.optimizer}, "
        f"learning rate {config.learning_rate:g}, augmentation preset `{augmentation}`, imbalance handling "
        f"`{config.imbalance}`, {config.image_size} px, best epoch {training.best_epoch} of {training.epochs_run}).",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in manifest.versions.items()) or 'not recorded'}.",
        f"- {KERMANY}.",
        "- Paediatric patients aged one to five, Guangzhou Women and Children's Medical Center: a single centre;",
        "  anterior-posterior films. Labels from two expert graders (a third checked the evaluation set).",
        f"- Training split used ({data.source}): {data.train.images} images ({data.train.normal} normal, "
        f"{data.train.pneumonia} pneumonia) from {data.train.patients} patients;",
        f"  validation: {data.validation} ({data.val.images} images).",
    ]
    per_split = ", ".join(f"{name} {part.count}" for name, part in (data.skipped or {}).items())
    lines.append(_skipped_lines(data.skipped_total, f"the training data ({per_split or 'no split recorded'})")
                 .rstrip("\n"))
    if validation is not None:
        m = validation.metrics
        lines.append(f"- Validation at training time: accuracy {_value(m.accuracy)}, sensitivity "
                     f"{_value(m.sensitivity)}, specificity {_value(m.specificity)}, AUC {_value(m.roc_auc)} "
                     "(the split that chose the checkpoint: optimistic).")
    return _members_and_adaptation(manifest) + "\n".join(lines) + "\n"


def render_model_card(manifest: Manifest, result: "EvaluationResult") -> str:
    evaluated, point, ci = result.data, result.metrics.point, result.metrics.ci95
    bootstrap = result.metrics.bootstrap
    rows = "\n".join(f"| {METRIC_LABELS[n]} | {'n/a' if point.value(n) is None else f'{point.value(n):.3f}'} | "
                     f"{_ci(ci[n])} |" for n in METRIC_NAMES)
    subgroups = "\n".join(f"| {r.group} | {r.n_images} | {_with_ci(r.metrics.sensitivity, r.ci95['sensitivity'])} | "
                          f"{_with_ci(r.metrics.specificity, r.ci95['specificity'])} |"
                          for r in result.subgroups or [])
    policy = manifest.validation.threshold_policy if manifest.validation else "not recorded"
    size = manifest.preprocess.image_size
    return f"""# Model card: pneumoscan `{manifest.arch}` ({size} px)

## Intended use
- Research and education: studying pneumonia classification on chest X-rays, teaching, and benchmarking.
- **Not a medical device. Not for diagnosis, triage or any clinical decision.** Its outputs have not been
  validated prospectively or on any population other than the data listed here.

## Model
- Architecture `{manifest.arch}`; input {size} x {size} grayscale, normalization mean \
{manifest.preprocess.mean}, std {manifest.preprocess.std}, intensity step `{manifest.preprocess.intensity}`, \
border crop {manifest.preprocess.border_crop}, field of view {_field_of_view(manifest)}.
- Output: P(pneumonia) from one sigmoid logit; classes {manifest.class_names}.
- Decision threshold **{manifest.threshold:.4f}**, policy `{policy}`, set at training time from the
  training data / validation split, never on evaluation data.

## Training data and training
{_training_lines(manifest)}
## Evaluation (this card's data)
Measured on **{evaluated.source} [{evaluated.split}]**: {evaluated.counts.images} images \
({evaluated.counts.normal} normal, {evaluated.counts.pneumonia} pneumonia, {evaluated.counts.patients} patients), at \
threshold {point.threshold:.4f}. 95 % CIs: {bootstrap.method}, {bootstrap.resamples} resamples.

{_skipped_lines(evaluated.skipped, "this evaluation")}
{_audit_line(result)}
{_framing_lines(result)}
| metric | value | 95 % CI |
|---|---|---|
{rows}
""" + (f"""
### Subgroups
| group | images | sensitivity (95 % CI) | specificity (95 % CI) |
|---|---|---|---|
{subgroups}
""" if subgroups else "") + """
## Known limits and failure modes
- **Framing.** In the training films the framing carried the label (tight pneumonia films, wide normal
  films). Check the framing-swap table above: a large framing gap means the model reads the framing.
- **Site shift.** Trained on one paediatric centre. On films from other hospitals, machines or adult
  patients expect lower accuracy; the usual failure is NORMAL films called PNEUMONIA (specificity falls
  first). Exposure, contrast and noise changes push scores up: see the shift study in the documentation
  (docs/results.md, "Choosing the default recipe").
- **Prevalence.** Probabilities are calibrated to the training share of pneumonia; PPV and NPV depend
  on the prevalence where it is used. `pneumoscan evaluate --adapt-prior` re-estimates it without labels.
- **Not a general image classifier.** A photo, a blank or a non-chest X-ray gets a score too; check the
  out-of-distribution flag where the bundle carries one (`model.json` → `ood.views`: the framings its false-alarm
  rate holds for; a guard without views was fitted on films as they are and flags tightly framed films more often).
- **Adults are out of scope.** Trained on children aged 1-5; an adult film's label means nothing. The guard is
  meant to refuse them, but how often it does can only be measured on adult films, which this card's data lack.
- **No lateral views, no DICOM windowing presets beyond the file's own, no paediatric age check.**
- Grad-CAM maps are coarse (the last feature map is 1/32 of the input) and show where the model's
  evidence was, not a segmentation of the opacity.
"""
