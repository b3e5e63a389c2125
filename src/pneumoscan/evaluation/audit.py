"""A shortcut audit: does a model read the lungs, or the film around them? (issue 20)

In the Kermany training films the framing carries the label (tight pneumonia films with large markers,
wide normal films), and a model can score 0.998 AUC on patient-grouped validation by reading it. The audit
asks the questions a reviewer of a medical model asks first, on any labelled films, each with a rule
stated in advance (AUDIT_RULES) and a pass or fail:

1. **Framing swaps**: normals zoomed in, pneumonias zoomed out onto black (pneumoscan.data.framing_swaps).
   Fails when a swap costs the measured class more than SWAP_TOLERANCE of specificity or sensitivity and
   the drop's paired-bootstrap 95 % CI lies above zero.
2. **Marker swap**: normals given a large "R"/"L" marker and burnt-in text; the same rule.
3. **Subgroups**: sensitivity and specificity per acquisition series, per pneumonia subtype (bacterial,
   viral) and per framing quartile (how much of the film the lung box fills). Fails when a group of at least
   MIN_GROUP_FILMS films of the measured class scores more than SUBGROUP_TOLERANCE below the whole set and the
   group's CI lies below the whole set's value. A model that reads the framing misses the pneumonias of the
   loosely framed quartile.
4. **Lung attention**: the share of the Grad-CAM mass of the pneumonia logit that falls on the lung fields
   (pneumoscan.data.field_of_view.lung_region: the classical lung mask, filled and mirrored so opacities
   count), over up to `attention_films` pneumonia films the model calls pneumonia, judged on the films whose
   lung fields were found (how many is stated); only when none were, on the lung box, which also holds the
   mediastinum and proves little. Fails when the mass on the lungs is under ATTENTION_LIFT times the
   lungs' share of the film: an explanation must sit on the lungs at least as densely as on the rest of the film
   (one spread evenly scores a lift of 1; one on the borders, markers or the abdomen scores less).

Everything is computed from the films and the model's scores, nothing is written here; pneumoscan.pipeline
writes audit.json, the figures and the report.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pneumoscan.data.field_of_view import lung_box, lung_region
from pneumoscan.data.framing_swaps import FRAMING_SWAPS
from pneumoscan.data.records import Record, SplitSummary
from pneumoscan.data.streaming import ImageBatchSource, iter_chunks
from pneumoscan.evaluation.framing import bundle_seen_families, score_framing
from pneumoscan.evaluation.gradcam import GradCam, default_layer, explained_boxes, explained_preprocess, to_image_frame
from pneumoscan.evaluation.subgroups import SubgroupResult, subgroup_metrics
from pneumoscan.metrics import screening_metrics
from pneumoscan.metrics.framing import FramingRecord
from pneumoscan.models.inference import predict_with

if TYPE_CHECKING:
    from pneumoscan.models.bundle import Bundle

SWAP_TOLERANCE = 0.05  # a framing or marker swap may cost at most this much specificity / sensitivity ...
SUBGROUP_TOLERANCE = 0.10  # ... a subgroup may score at most this much below the whole set ...
MIN_GROUP_FILMS = 10  # ... when it holds at least this many films of the measured class
ATTENTION_LIFT = 1.0  # Grad-CAM mass on the lungs at least the lungs' share of the film: denser there than elsewhere
ATTENTION_FILMS = 100  # pneumonia films explained (Grad-CAM is a backward pass per film)
FRAMING_QUARTILES = 4
AUDIT_RULES = {
    "framing swaps": f"fails if zooming normals in or pneumonias out onto black costs more than {SWAP_TOLERANCE:.2f} "
                     "of specificity or sensitivity with the drop's 95 % CI above 0",
    "marker swap": f"fails if a large marker and burnt-in text on normals cost more than {SWAP_TOLERANCE:.2f} of "
                   "specificity with the drop's 95 % CI above 0",
    "subgroups": f"fails if a series, subtype or framing quartile with at least {MIN_GROUP_FILMS} films of a class "
                 f"scores more than {SUBGROUP_TOLERANCE:.2f} below the whole set (sensitivity or specificity) with "
                 "its 95 % CI below the whole set's value",
    "lung attention": f"fails if the Grad-CAM mass on the lung fields is under {ATTENTION_LIFT:g} times the lung "
                      "fields' share of the film, i.e. the explanation is less dense on the lungs than elsewhere "
                      "(mean over the pneumonia films the model calls pneumonia whose lung fields were found)",
}


EXAMPLE_SWAPS = ("zoom_in_1.33", "zoom_out_0.75", "marker")  # shown before/after in the report
EXAMPLES_PER_SWAP = 3


@dataclass(frozen=True)
class SwapExample:
    """A few films of one swap before and after, with the model's probability on each (for the report)."""

    swap: str
    before: np.ndarray  # uint8 (n, S, S)
    after: np.ndarray
    probability_before: np.ndarray
    probability_after: np.ndarray


@dataclass(frozen=True)
class AuditCheck:
    """One question of the audit: its rule, what was measured, and the answer (None: not measurable here)."""

    name: str
    passed: bool | None
    rule: str
    finding: str


@dataclass(frozen=True)
class SubgroupSet:
    """Metrics per group of one grouping (series, subtype or framing quartile)."""

    grouping: str
    groups: list[SubgroupResult]


@dataclass(frozen=True)
class LungAttention:
    """Where the Grad-CAM of the pneumonia logit sits relative to the lung fields. The rule is judged on the films
    whose lung fields were found (`region` "lung fields"); only when none were found, on the lung box of all
    films (`region` "lung box": it holds the mediastinum too, and on a film where no lungs were found it is
    nearly the whole film, so it proves little)."""

    films: int  # pneumonia films explained
    lung_mask_films: int  # of them, films whose lung fields were found
    layer: str
    region: str  # what the figures below were measured on: "lung fields" or "lung box"
    mass_on_lungs: float  # mean share of each heatmap's mass on the region
    mass_on_lungs_ci95: tuple[float, float]
    lung_share: float  # mean share of the film the region covers
    lift: float  # mass_on_lungs / lung_share: 1 is an explanation spread evenly over the film


@dataclass
class AuditResult:
    model: str
    data: SplitSummary
    threshold: float
    images: int
    framing: FramingRecord | None
    subgroups: list[SubgroupSet]
    attention: LungAttention | None
    checks: list[AuditCheck]
    swap_examples: list[SwapExample] = field(default_factory=list)  # for the figures; not in audit.json
    attention_examples: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # films, heatmaps, lung regions
    figures: dict[str, Path] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        """False if any check failed; None if the framing swaps could not be measured (one class only: a pass on
        the other checks alone would claim more than was tested); else True."""
        if any(check.passed is False for check in self.checks):
            return False
        swaps = next((check for check in self.checks if check.name == "framing swaps"), None)
        return None if swaps is None or swaps.passed is None else True

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "fail", None: "not measurable"}[self.passed]

    def summary_line(self) -> str:
        """One line: the verdict and each check's answer (the model card's line)."""
        parts = [f"{check.name} {'n/a' if check.passed is None else 'pass' if check.passed else 'FAIL'}"
                 for check in self.checks]
        return f"shortcut audit: {self.verdict.upper()} ({'; '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "summary": self.summary_line(), "model": self.model,
                "data": self.data.to_dict(), "threshold": self.threshold, "images": self.images,
                "checks": [asdict(check) for check in self.checks], "rules": dict(AUDIT_RULES),
                "framing": None if self.framing is None else self.framing.to_dict(),
                "subgroups": [{"grouping": s.grouping, "groups": [asdict(g) for g in s.groups]}
                              for s in self.subgroups],
                "attention": None if self.attention is None else asdict(self.attention),
                "figures": {name: path.name for name, path in self.figures.items()}}


def lung_box_share(images: ImageBatchSource, chunk: int = 256) -> np.ndarray:
    """(N,) share of each uint8 film (N, 1, S, S) its lung box covers: how tightly the lungs fill the film."""
    shares = []
    for batch in iter_chunks(images, chunk):
        box = lung_box(batch.float() / 255.0)
        shares.append(((box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])).numpy())
    return np.concatenate(shares) if shares else np.zeros(0)


def framing_quartiles(shares: np.ndarray) -> list[str]:
    """Each film's framing quartile by its lung-box share, named with the share's range ("Q1 (lungs fill
    0.31-0.52)"): Q1 the loosest framing, Q4 the tightest."""
    edges = np.quantile(shares, np.linspace(0, 1, FRAMING_QUARTILES + 1))
    index = np.clip(np.searchsorted(edges[1:-1], shares, side="right"), 0, FRAMING_QUARTILES - 1)
    return [f"Q{i + 1} (lungs fill {edges[i]:.2f}-{edges[i + 1]:.2f})" for i in index]


def subgroup_sets(records: list[Record], labels: np.ndarray, probabilities: np.ndarray, threshold: float,
                  shares: np.ndarray, resamples: int, seed: int) -> list[SubgroupSet]:
    """Series, subtype and framing quartile; a grouping is left out when every film falls in one group."""
    groupings = {
        "series": [r.series or "unknown" for r in records],
        "subtype": [r.subgroup or ("normal" if r.label == 0 else "pneumonia, subtype unknown") for r in records],
        "framing quartile": framing_quartiles(shares) if len(shares) >= 2 * FRAMING_QUARTILES else [],
    }
    return [SubgroupSet(name, subgroup_metrics(groups, labels, probabilities, threshold, resamples=resamples,
                                               seed=seed))
            for name, groups in groupings.items() if len(set(groups)) > 1]


def _bootstrap_mean(values: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return round(float(low), 6), round(float(high), 6)


def explain_films(bundle: "Bundle", films: torch.Tensor) -> tuple[np.ndarray, str]:
    """(Grad-CAM heatmaps (N, H, W) in each film's own frame, the layer explained) for uint8 films."""
    layer = default_layer(bundle.manifest.arch, arch_kwargs=bundle.manifest.arch_kwargs)
    cam = GradCam(bundle.model, layer)
    maps = [cam(bundle.preprocess.normalize(batch)) for batch in iter_chunks(films, 32)]
    heatmaps = np.concatenate(maps) if maps else np.zeros((0, *films.shape[-2:]), dtype=np.float32)
    return to_image_frame(heatmaps, explained_boxes(explained_preprocess(bundle.manifest), films)), layer


def attention_films(labels: np.ndarray, probabilities: np.ndarray, threshold: float, limit: int,
                    seed: int) -> np.ndarray:
    """Indices of up to `limit` pneumonia films the model calls pneumonia (a seeded pick, in order)."""
    hits = np.flatnonzero((labels == 1) & (probabilities >= threshold))
    return np.sort(np.random.default_rng(seed).permutation(hits)[:limit])


def lung_attention(heatmaps: np.ndarray, regions: np.ndarray, found: np.ndarray, layer: str, resamples: int,
                   seed: int) -> LungAttention | None:
    """The share of each heatmap's mass on its film's lung region, summarised over the films whose lung fields
    were found (over all films, on their lung boxes, when none were); None without films."""
    if len(heatmaps) == 0:
        return None
    found = np.asarray(found, dtype=bool)
    chosen = found if found.any() else np.ones(len(heatmaps), dtype=bool)
    maps, masks = heatmaps[chosen], regions[chosen]
    totals = maps.reshape(len(maps), -1).sum(1)
    inside = (maps * masks).reshape(len(maps), -1).sum(1)
    mass = np.where(totals > 0, inside / np.maximum(totals, 1e-12), 0.0)
    lung_share = float(masks.reshape(len(masks), -1).mean(1).mean())
    return LungAttention(films=len(heatmaps), lung_mask_films=int(found.sum()), layer=layer,
                         region="lung fields" if found.any() else "lung box",
                         mass_on_lungs=round(float(mass.mean()), 6),
                         mass_on_lungs_ci95=_bootstrap_mean(mass, resamples, seed),
                         lung_share=round(lung_share, 6), lift=round(float(mass.mean()) / max(lung_share, 1e-9), 6))


def _swap_check(name: str, framing: FramingRecord | None, families: tuple[str, ...]) -> AuditCheck:
    rule = AUDIT_RULES[name]
    swaps = [] if framing is None else [s for s in framing.swaps if s.family in families]
    if not swaps:
        return AuditCheck(name, None, rule, "not measured: both classes are needed")
    failing = [s for s in swaps if s.drop > SWAP_TOLERANCE and s.drop_ci95[0] > 0]
    worst = max(swaps, key=lambda s: s.drop)
    finding = (f"worst: {worst.name} {worst.measured} {worst.clean:.3f} -> {worst.swapped:.3f} "
               f"(drop {worst.drop:+.3f}, "
               f"95 % CI {worst.drop_ci95[0]:+.3f} to {worst.drop_ci95[1]:+.3f})")
    if failing:
        finding += f"; failing: {', '.join(s.name for s in failing)}"
    return AuditCheck(name, not failing, rule, finding)


def _subgroup_check(sets: list[SubgroupSet], overall: dict[str, float | None]) -> AuditCheck:
    rule = AUDIT_RULES["subgroups"]
    failing, compared = [], 0
    for subgroup_set in sets:
        for group in subgroup_set.groups:
            for metric, count in (("sensitivity", group.pneumonia), ("specificity", group.n_images - group.pneumonia)):
                value, whole, ci = getattr(group.metrics, metric), overall[metric], group.ci95[metric]
                if value is None or whole is None or ci is None or count < MIN_GROUP_FILMS:
                    continue
                compared += 1
                if value < whole - SUBGROUP_TOLERANCE and ci[1] < whole:
                    failing.append(f"{subgroup_set.grouping} {group.group}: {metric} {value:.3f} (whole set "
                                   f"{whole:.3f})")
    if not compared:
        return AuditCheck("subgroups", None, rule, f"no group holds {MIN_GROUP_FILMS} films of a class")
    finding = f"{compared} group metrics compared; " + ("failing: " + "; ".join(failing) if failing else "none failing")
    return AuditCheck("subgroups", not failing, rule, finding)


def _attention_check(attention: LungAttention | None) -> AuditCheck:
    rule = AUDIT_RULES["lung attention"]
    if attention is None:
        return AuditCheck("lung attention", None, rule, "not measured: no pneumonia film called pneumonia")
    region = (f"measured on the {attention.lung_mask_films} of {attention.films} films whose lung fields were found"
              if attention.region == "lung fields" else
              f"no lung fields found on any of {attention.films} films: measured on the lung box, which holds the "
              "mediastinum too (weak evidence)")
    finding = (f"{attention.mass_on_lungs:.3f} of the mass on the lungs (95 % CI {attention.mass_on_lungs_ci95[0]:.3f}-"
               f"{attention.mass_on_lungs_ci95[1]:.3f}), which cover {attention.lung_share:.3f} of the film: lift "
               f"{attention.lift:.2f}; {region}")
    return AuditCheck("lung attention", attention.lift >= ATTENTION_LIFT, rule, finding)


def audit_films(bundle: "Bundle", images: ImageBatchSource, records: list[Record], probabilities: np.ndarray,
                summary: SplitSummary, framing: FramingRecord | None = None, attention_limit: int = ATTENTION_FILMS,
                resamples: int = 1000, seed: int = 0) -> AuditResult:
    """The audit of `bundle` on labelled uint8 films (N, 1, S, S) whose probabilities are known. `framing`: the
    framing-swap record when the caller has scored it already (evaluate), else it is scored here."""
    labels = np.asarray([r.label for r in records], dtype=int)
    threshold = bundle.manifest.threshold
    if framing is None:
        framing = score_framing(bundle.model, bundle.preprocess.normalize, images, labels, probabilities, threshold,
                                seen=bundle_seen_families(bundle.manifest), resamples=resamples, seed=seed)
    shares = lung_box_share(images)
    sets = subgroup_sets(records, labels, probabilities, threshold, shares, resamples, seed)
    chosen = attention_films(labels, probabilities, threshold, attention_limit, seed)
    films = images[torch.from_numpy(chosen)] if len(chosen) else torch.zeros(0, *images.shape[1:], dtype=torch.uint8)
    heatmaps, layer = explain_films(bundle, films) if len(chosen) else (np.zeros((0, *images.shape[-2:])), "")
    regions, found = lung_region(films.float() / 255.0) if len(chosen) else (torch.zeros(0), torch.zeros(0))
    attention = lung_attention(heatmaps, regions.numpy(), found.numpy(), layer, resamples, seed)
    whole = screening_metrics(labels, probabilities, threshold)
    checks = [_swap_check("framing swaps", framing, ("zoom_in", "zoom_out")),
              _swap_check("marker swap", framing, ("marker",)),
              _subgroup_check(sets, {"sensitivity": whole.sensitivity, "specificity": whole.specificity}),
              _attention_check(attention)]
    shown = (films[:8, 0].numpy(), heatmaps[:8], regions[:8].numpy()) if len(chosen) else None
    return AuditResult(model=str(bundle.path), data=summary, threshold=threshold, images=len(labels), framing=framing,
                       subgroups=sets, attention=attention, checks=checks,
                       swap_examples=swap_examples(bundle, images, labels, probabilities, seed),
                       attention_examples=shown)


def swap_examples(bundle: "Bundle", images: ImageBatchSource, labels: np.ndarray, probabilities: np.ndarray,
                  seed: int) -> list[SwapExample]:
    """EXAMPLES_PER_SWAP films of each swap in EXAMPLE_SWAPS, those whose probability moves most first (the films
    a reader should see), before and after."""
    examples = []
    for swap in (s for s in FRAMING_SWAPS if s.name in EXAMPLE_SWAPS):
        targets = np.flatnonzero(labels == swap.target)
        if not len(targets):
            continue
        pick = np.sort(np.random.default_rng(seed).permutation(targets)[:64])
        before = images[torch.from_numpy(pick)]
        after = swap.apply(before, seed=seed)
        moved = predict_with(bundle.model, bundle.preprocess.normalize, after)
        order = np.argsort(-np.abs(moved - probabilities[pick]), kind="stable")[:EXAMPLES_PER_SWAP]
        examples.append(SwapExample(swap.name, before[order, 0].numpy(), after[order, 0].numpy(),
                                    probabilities[pick][order], moved[order]))
    return examples
