"""Mean ± sd over seeds and the paired comparison of two study cells.

Cells of a study share the split and, per seed, the initial weights, so seed k of one cell and seed
k of another are a matched pair: the paired t-test on their differences removes the seed-to-seed
spread that an unpaired comparison would have to overcome.
"""

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class PairedComparison:
    """`cell` minus `reference` on one metric, over matched seeds."""

    metric: str
    reference: str
    cell: str
    n_pairs: int
    mean_difference: float
    ci95: tuple[float, float] | None  # t interval of the mean difference; None with fewer than two pairs
    p_value: float | None  # two-sided paired t-test; None with fewer than two pairs or no spread

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < 0.05


@dataclass(frozen=True)
class MeanSd:
    mean: float
    sd: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "MeanSd":
        finite = [v for v in values if v is not None and math.isfinite(v)]
        if not finite:
            return cls(float("nan"), float("nan"), 0)
        return cls(statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0, len(finite))

    def __str__(self) -> str:
        """As tables print it: mean ± sd, three decimals; n/a when nothing was measured."""
        return "n/a" if self.n == 0 else f"{self.mean:.3f} ± {self.sd:.3f}"


def paired_comparison(metric: str, reference: str, cell: str, reference_values: Sequence[float],
                      cell_values: Sequence[float]) -> PairedComparison:
    pairs = [(a, b) for a, b in zip(reference_values, cell_values, strict=True)
             if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    differences = [b - a for a, b in pairs]
    n = len(differences)
    if n == 0:
        return PairedComparison(metric, reference, cell, 0, float("nan"), None, None)
    mean = statistics.fmean(differences)
    if n < 2:
        return PairedComparison(metric, reference, cell, n, mean, None, None)
    sd = statistics.stdev(differences)
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    p_value = None if sd == 0 else float(stats.ttest_rel([b for _, b in pairs], [a for a, _ in pairs]).pvalue)
    return PairedComparison(metric, reference, cell, n, mean, (mean - half, mean + half), p_value)
