"""The framing-swap proxy in numbers: how much a model's answers move when only the framing moves (issue 19).

Given a model's probabilities on labelled films as they are and on the same films swapped
(pneumoscan.data.framing_swaps: normals zoomed in or given a big marker, pneumonias zoomed out onto black),
at the model's stored threshold:

- per swap: the measured class's specificity (normal-side swaps) or sensitivity (pneumonia-side) before and
  after, the drop with a paired-bootstrap 95 % CI, the share of those films whose label flips, and the ROC
  AUC of the swapped films against the other class as it is;
- the framing gap: the share of all films whose label flips under any swap, with its bootstrap CI;
- the worst specificity drop and the worst sensitivity drop (over swaps), with paired-bootstrap CIs;
- the robust balanced accuracy: the lowest balanced accuracy over the films as they are and each swap
  (one class swapped, the other as it is). This is the number recipes are chosen on (studies/framing);
- the same gap and robust balanced accuracy over the swap families that training augmentation never
  produced (`unseen`): a proxy that training has seen measures the augmentation, not the model.

The bootstrap of a drop resamples films within the swapped class, the same draw for the clean and the swapped
scores (paired), so a drop's interval is not widened by which films were drawn; the framing gap's interval
resamples all films together. Films, not patients, are resampled.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NORMAL, PNEUMONIA = 0, 1


@dataclass(frozen=True)
class SwappedScores:
    """A swap's probabilities for the films of its target class, in the order of those films."""

    name: str
    family: str
    target: int  # NORMAL or PNEUMONIA
    probabilities: np.ndarray


@dataclass(frozen=True)
class SwapResult:
    name: str
    family: str
    measured: str  # "specificity" (normal films swapped) or "sensitivity" (pneumonia films swapped)
    clean: float
    swapped: float
    drop: float  # clean - swapped
    drop_ci95: tuple[float, float]
    flipped: float  # share of the swapped films whose label changed
    roc_auc: float | None  # swapped target films against the other class as it is
    balanced_accuracy: float  # with the other class as it is


@dataclass(frozen=True)
class FramingRecord:
    """The framing-swap proxy of one model on one labelled set (stored in the bundle's validation record)."""

    images: int
    threshold: float
    swaps: list[SwapResult]
    framing_gap: float  # share of all films whose label flips under any swap
    framing_gap_ci95: tuple[float, float]
    worst_specificity_drop: float
    worst_specificity_drop_ci95: tuple[float, float]
    worst_sensitivity_drop: float
    worst_sensitivity_drop_ci95: tuple[float, float]
    clean_balanced_accuracy: float
    robust_balanced_accuracy: float  # min over clean and every swap: the selection score
    seen_families: list[str] = field(default_factory=list)  # families the model's training augmentation produced
    unseen_framing_gap: float | None = None  # over the families training never produced (None: none unseen)
    unseen_robust_balanced_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "FramingRecord":
        values = dict(payload)
        values["swaps"] = [SwapResult(**{**swap, "drop_ci95": tuple(swap["drop_ci95"])}) for swap in payload["swaps"]]
        for key in ("framing_gap_ci95", "worst_specificity_drop_ci95", "worst_sensitivity_drop_ci95"):
            values[key] = tuple(payload[key])
        values["seen_families"] = list(payload.get("seen_families") or [])
        return cls(**values)

    def summary(self) -> dict[str, float | None]:
        """The few numbers a study table shows."""
        by_name = {swap.name: swap for swap in self.swaps}
        return {"robust_bal_acc": self.robust_balanced_accuracy, "framing_gap": self.framing_gap,
                "worst_spec_drop": self.worst_specificity_drop, "worst_sens_drop": self.worst_sensitivity_drop,
                "unseen_gap": self.unseen_framing_gap,
                **{f"{name}_{'spec' if swap.measured == 'specificity' else 'sens'}": swap.swapped
                   for name, swap in by_name.items()}}


def _round(value: float) -> float:
    return round(float(value), 6)


def _interval(samples: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return _round(low), _round(high)


def _auc(negatives: np.ndarray, positives: np.ndarray) -> float | None:
    if not len(negatives) or not len(positives):
        return None
    labels = np.r_[np.zeros(len(negatives)), np.ones(len(positives))]
    from sklearn.metrics import roc_auc_score  # scipy/sklearn imported where used: config and the CLI load without them
    return _round(roc_auc_score(labels, np.r_[negatives, positives]))


BOOTSTRAP_CELLS = 2_000_000  # resampled draws held at once (8 bytes each): the proxy's memory does not grow with N


def _rate(hits: np.ndarray, draw: np.ndarray, size: int) -> np.ndarray:
    return hits[draw].mean(axis=1) if len(hits) else np.full(size, np.nan)


def _bootstrap(correct: dict[int, np.ndarray], swaps: Sequence[tuple[int, np.ndarray]], flipped_any: np.ndarray,
               resamples: int, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """Each swap's paired bootstrap of (clean rate - swapped rate) on its class, and of the framing gap: resampled
    a block of rows at a time (BOOTSTRAP_CELLS draws), so 10,000 films need no more memory than 1,000."""
    films = max(len(flipped_any), 1)
    block = max(1, min(resamples, BOOTSTRAP_CELLS // films))
    drops: list[list[np.ndarray]] = [[] for _ in swaps]
    gaps = []
    for start in range(0, resamples, block):
        size = min(block, resamples - start)
        draws = {c: rng.integers(0, max(len(hits), 1), size=(size, len(hits))) for c, hits in correct.items()}
        clean = {c: _rate(correct[c], draws[c], size) for c in correct}
        for index, (target, hits) in enumerate(swaps):
            drops[index].append(clean[target] - _rate(hits, draws[target], size))
        gap_draw = rng.integers(0, films, size=(size, len(flipped_any)))
        gaps.append(flipped_any[gap_draw].mean(axis=1) if len(flipped_any) else np.zeros(size))
    return [np.concatenate(parts) for parts in drops], np.concatenate(gaps)


def framing_record(labels: np.ndarray, probabilities: np.ndarray, swapped: Sequence[SwappedScores],
                   threshold: float, seen_families: Sequence[str] = (), resamples: int = 1000,
                   seed: int = 0) -> FramingRecord:
    """The proxy from clean probabilities (aligned with `labels`) and each swap's probabilities on its class."""
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    positive = probabilities >= threshold
    by_class = {c: np.flatnonzero(labels == c) for c in (NORMAL, PNEUMONIA)}
    correct = {NORMAL: ~positive[by_class[NORMAL]], PNEUMONIA: positive[by_class[PNEUMONIA]]}
    clean_rate = {c: float(correct[c].mean()) if len(correct[c]) else float("nan") for c in correct}
    flipped_any = np.zeros(len(labels), dtype=bool)
    unseen_flips, unseen_balanced, balanced = np.zeros(len(labels), dtype=bool), [], []
    swap_hits, rows = [], []
    for swap in swapped:
        target, other = swap.target, 1 - swap.target
        swapped_positive = np.asarray(swap.probabilities) >= threshold
        hits = ~swapped_positive if target == NORMAL else swapped_positive
        flips = swapped_positive != positive[by_class[target]]
        flipped_any[by_class[target]] |= flips
        swap_hits.append((target, hits))
        swapped_rate = float(hits.mean()) if len(hits) else float("nan")
        balance = (swapped_rate + clean_rate[other]) / 2
        balanced.append(balance)
        if swap.family not in seen_families:
            unseen_flips[by_class[target]] |= flips
            unseen_balanced.append(balance)
        rows.append((swap, target, swapped_rate, flips, balance))
    drops, gap_samples = _bootstrap(correct, swap_hits, flipped_any, resamples, np.random.default_rng(seed))
    results, drops_boot = [], {NORMAL: [], PNEUMONIA: []}
    for (swap, target, swapped_rate, flips, balance), drop_samples in zip(rows, drops, strict=True):
        drops_boot[target].append(drop_samples)
        negatives = swap.probabilities if target == NORMAL else probabilities[by_class[NORMAL]]
        positives = probabilities[by_class[PNEUMONIA]] if target == NORMAL else swap.probabilities
        results.append(SwapResult(
            name=swap.name, family=swap.family, measured="specificity" if target == NORMAL else "sensitivity",
            clean=_round(clean_rate[target]), swapped=_round(swapped_rate),
            drop=_round(clean_rate[target] - swapped_rate), drop_ci95=_interval(drop_samples),
            flipped=_round(flips.mean() if len(flips) else 0.0), roc_auc=_auc(np.asarray(negatives), positives),
            balanced_accuracy=_round(balance)))
    clean_balanced = (clean_rate[NORMAL] + clean_rate[PNEUMONIA]) / 2

    def worst(target: int) -> tuple[float, tuple[float, float]]:
        point = [r.drop for r in results if r.measured == ("specificity" if target == NORMAL else "sensitivity")]
        if not point:
            return 0.0, (0.0, 0.0)
        return _round(max(point)), _interval(np.max(np.stack(drops_boot[target]), axis=0))

    spec_drop, spec_ci = worst(NORMAL)
    sens_drop, sens_ci = worst(PNEUMONIA)
    unseen = [swap for swap in swapped if swap.family not in seen_families]
    return FramingRecord(
        images=len(labels), threshold=_round(threshold), swaps=results,
        framing_gap=_round(flipped_any.mean() if len(labels) else 0.0),
        framing_gap_ci95=_interval(gap_samples) if len(labels) else (0.0, 0.0),
        worst_specificity_drop=spec_drop, worst_specificity_drop_ci95=spec_ci,
        worst_sensitivity_drop=sens_drop, worst_sensitivity_drop_ci95=sens_ci,
        clean_balanced_accuracy=_round(clean_balanced),
        robust_balanced_accuracy=_round(min([clean_balanced, *balanced])),
        seen_families=sorted(set(seen_families)),
        unseen_framing_gap=_round(unseen_flips.mean()) if unseen and len(labels) else None,
        unseen_robust_balanced_accuracy=_round(min([clean_balanced, *unseen_balanced])) if unseen else None)
