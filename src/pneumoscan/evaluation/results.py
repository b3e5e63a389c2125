"""What an evaluation computes, as typed results: pneumoscan.evaluation.evaluate fills them, and metrics.json, the
report and the model card are all written from them (kept here, apart from the code that drives the work, so the
writers import the types without importing the evaluation)."""

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan.config import EvalConfig
from pneumoscan.data.records import SplitSummary
from pneumoscan.evaluation.audit import AuditResult
from pneumoscan.evaluation.monitoring import MonitoringResult
from pneumoscan.evaluation.subgroups import SubgroupResult
from pneumoscan.metrics import MetricsWithCI, ScreeningMetrics
from pneumoscan.metrics.framing import FramingRecord
from pneumoscan.models.ood import OodSettings

PRIOR_NOTE = ("label-shift adaptation (Saerens et al. 2002) on this evaluation batch; it used no labels, only the "
              "model's outputs; reported apart from the fixed-threshold result")


@dataclass(frozen=True)
class PriorAdapted:
    training_prior: float
    estimated_prevalence: float
    metrics: ScreeningMetrics
    note: str = PRIOR_NOTE


@dataclass(frozen=True)
class OodSummary:
    settings: OodSettings
    n_images: int
    flagged: int
    probe_detection: dict[str, float]
    probes_per_kind: int

    @property
    def probe_detection_overall(self) -> float:
        return float(np.mean(list(self.probe_detection.values())))


@dataclass
class EvaluationResult:
    model: str
    arch: str
    data: SplitSummary
    config: EvalConfig
    metrics: MetricsWithCI
    temporal: MonitoringResult  # the evaluated images as weeks, with the drift test where the bundle has a reference
    subgroups: list[SubgroupResult] | None = None
    prior_adapted: PriorAdapted | None = None
    ood: OodSummary | None = None
    framing: FramingRecord | None = None  # the framing-swap proxy on these films (issue 19)
    audit: AuditResult | None = None  # the shortcut audit on these films (issue 20)
    figures: dict[str, Path] = field(default_factory=dict)
    engine: str = "torch"  # what scored the films (onnxruntime or torch); the audit's Grad-CAM always runs in PyTorch

    @property
    def threshold(self) -> float:
        return self.metrics.point.threshold

    def to_dict(self) -> dict[str, Any]:
        """The metrics.json layout: point estimates at the top level, then everything else by name."""
        return {
            **self.metrics.to_dict(), "model": self.model, "arch": self.arch, "data": self.data.to_dict(),
            "evaluation": asdict(self.config), "temporal": self.temporal.to_dict(),
            "subgroups": None if self.subgroups is None else [asdict(s) for s in self.subgroups],
            "prior_adapted": None if self.prior_adapted is None else asdict(self.prior_adapted),
            "ood": None if self.ood is None else {**asdict(self.ood),
                                                  "probe_detection_overall": self.ood.probe_detection_overall},
            "framing": None if self.framing is None else self.framing.to_dict(),
            "audit": None if self.audit is None else self.audit.to_dict(), "engine": self.engine,
        }


