"""MODEL_CARD.md (Mitchell et al. 2019), generated from the bundle and one evaluation so it never drifts from them."""

from collections.abc import Mapping
from typing import Any

from pneumoscan.evaluation.report_html import METRIC_LABELS
from pneumoscan.evaluation.uncertainty import METRIC_NAMES

KERMANY = ("Kermany D, Zhang K, Goldbaum M (2018). Labeled Optical Coherence Tomography (OCT) and Chest X-Ray "
           "Images for Classification. Mendeley Data, v2. doi:10.17632/rscbjbr9sj.2 (CC BY 4.0)")


def _ci(values: Any) -> str:
    return "n/a" if values is None else f"{values[0]:.3f}–{values[1]:.3f}"


def _with_ci(value: float | None, interval: Any) -> str:
    return "n/a" if value is None else f"{value:.3f} ({_ci(interval)})"


def render_model_card(manifest: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    training = manifest.get("training", {})
    config = training.get("config", {})
    data = training.get("data", {})
    validation = manifest.get("validation_metrics", {})
    evaluated = metrics["data"]
    point, ci = metrics, metrics["ci95"]
    rows = "\n".join(f"| {METRIC_LABELS[n]} | {'n/a' if point[n] is None else f'{point[n]:.3f}'} | {_ci(ci[n])} |"
                     for n in METRIC_NAMES)
    train_counts = data.get("train", {})
    subgroups = "\n".join(f"| {r['group']} | {r['n_images']} | "
                          f"{_with_ci(r['sensitivity'], r['ci95']['sensitivity'])} | "
                          f"{_with_ci(r['specificity'], r['ci95']['specificity'])} |"
                          for r in metrics.get("subgroups") or [])
    return f"""# Model card: pneumoscan `{manifest.get('arch')}` ({manifest.get('input_size')} px)

## Intended use
- Research and education: studying pneumonia classification on chest X-rays, teaching, and benchmarking.
- **Not a medical device. Not for diagnosis, triage or any clinical decision.** Its outputs have not been
  validated prospectively or on any population other than the data listed here.

## Model
- Architecture `{manifest.get('arch')}`; input {manifest.get('input_size')} x {manifest.get('input_size')} \
grayscale, normalization {manifest.get('normalization')}.
- Output: P(pneumonia) from one sigmoid logit; classes {manifest.get('class_names')}.
- Decision threshold **{manifest.get('threshold', 0.5):.4f}**, \
policy `{validation.get('threshold_policy', 'fixed:0.5')}`, set at training time from the
  training data / validation split, never on evaluation data.
- Trained with: `{training.get('command') or 'n/a'}` (code {training.get('code_version', 'n/a')}; optimizer \
{config.get('optimizer')}, augmentation {'shift-robust' if config.get('augment', {}).get('gamma') else 'standard'}, \
imbalance handling {config.get('imbalance', 'none')}).

## Training data
- {KERMANY}.
- Paediatric patients aged one to five, Guangzhou Women and Children's Medical Center: a single centre;
  anterior-posterior films. Labels from two expert graders (a third checked the evaluation set).
- Training split used: {train_counts.get('images', 'n/a')} images ({train_counts.get('normal', 'n/a')} normal, \
{train_counts.get('pneumonia', 'n/a')} pneumonia) from {train_counts.get('patients', 'n/a')} patients;
  validation: {data.get('validation', 'n/a')} ({data.get('val', {}).get('images', 'n/a')} images).
- Validation at training time: accuracy {validation.get('accuracy', float('nan')):.4f}, sensitivity \
{validation.get('sensitivity', float('nan')):.4f}, specificity {validation.get('specificity', float('nan')):.4f}, AUC \
{validation.get('roc_auc', float('nan')):.4f} (the split that chose the checkpoint: optimistic).

## Evaluation (this card's data)
Measured on **{evaluated['source']} [{evaluated['split']}]**: {evaluated['normal'] + evaluated['pneumonia']} images \
({evaluated['normal']} normal, {evaluated['pneumonia']} pneumonia, {evaluated['patients']} patients), at threshold \
{metrics['threshold']:.4f}. 95 % CIs: {metrics['bootstrap']['method']}, \
{metrics['bootstrap']['resamples']} resamples.

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
- **Site shift.** Trained on one paediatric centre. On films from other hospitals, machines or adult
  patients expect lower accuracy; the usual failure is NORMAL films called PNEUMONIA (specificity falls
  first). Exposure, contrast and noise changes push scores up: see the README's shift study.
- **Prevalence.** Probabilities are calibrated to the training share of pneumonia; PPV and NPV depend
  on the prevalence where it is used. `pneumoscan evaluate --adapt-prior` re-estimates it without labels.
- **Not a general image classifier.** A photo, a blank or a non-chest X-ray gets a score too; check the
  out-of-distribution flag where the bundle carries one.
- **No lateral views, no DICOM windowing presets beyond the file's own, no paediatric age check.**
- Grad-CAM maps are coarse (the last feature map is 1/32 of the input) and show where the model's
  evidence was, not a segmentation of the opacity.
"""
