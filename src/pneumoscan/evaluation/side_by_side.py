"""Several bundles evaluated on the same labelled split, reported side by side.

Its first use: a model and its `pneumoscan adapt`-ed version on a site's films, so the effect of
label-free adaptation is read off one table (each model also gets its own full evaluation folder).
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from pneumoscan.atomic import check_output_dir, discard, write_json, write_text
from pneumoscan.config import EvalConfig
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.evaluation.results import EvaluationResult
from pneumoscan.metrics import METRIC_NAMES
from pneumoscan.models.bundle import Bundle


@dataclass
class SideBySide:
    names: list[str]  # one per bundle, also its evaluation folder's name
    results: list[EvaluationResult]
    adaptations: list[str]  # per bundle: "unadapted", or what adapt did and on how many images

    def to_dict(self) -> dict[str, Any]:
        return {"models": [{"name": name, "model": result.model, "adaptation": adaptation,
                            **result.metrics.to_dict()}
                           for name, result, adaptation in zip(self.names, self.results, self.adaptations,
                                                               strict=True)]}


def _names(bundles: Sequence[Bundle]) -> list[str]:
    names: list[str] = []
    for index, bundle in enumerate(bundles):
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", bundle.path.name) or f"model{index}"
        names.append(name if name not in names else f"{name}-{index}")
    return names


def _adaptation(bundle: Bundle) -> str:
    record = bundle.manifest.adaptation
    if record is None:
        return "unadapted"
    return f"adapted ({', '.join(record.methods)}) on {record.images} images of {record.source}"


def markdown(side: SideBySide) -> str:
    lines = [f"| metric | {' | '.join(side.names)} |", "|---|" + "---|" * len(side.names)]
    for metric in (*METRIC_NAMES, "threshold"):
        cells = []
        for result in side.results:
            value = result.metrics.point.threshold if metric == "threshold" else result.metrics.point.value(metric)
            interval = result.metrics.ci95.get(metric)
            cells.append("n/a" if value is None else f"{value:.4f}" + (
                f" ({interval[0]:.3f}–{interval[1]:.3f})" if interval else ""))
        lines.append(f"| {metric} | {' | '.join(cells)} |")
    lines += ["", *(f"- {name}: {adaptation}" for name, adaptation in zip(side.names, side.adaptations, strict=True))]
    return "\n".join(lines) + "\n"


def evaluate_side_by_side(bundles: Sequence[Bundle], data: str, out_dir: Path, config: EvalConfig | None = None,
                          console: Console | None = None, engines: Sequence[Any] | None = None) -> SideBySide:
    """Evaluate each bundle into out_dir/<name>/ and write comparison.json and comparison.md in out_dir; `engines`
    (one per bundle) score the films, else PyTorch."""
    out_dir = check_output_dir(out_dir)
    discard(out_dir / "comparison.json")  # a previous comparison's marker: written again last, so an interrupted
    discard(out_dir / "comparison.md")  # rerun never leaves an old comparison beside new evaluations
    names = _names(bundles)
    engines = list(engines) if engines is not None else [None] * len(bundles)
    results = [evaluate(bundle, data, out_dir / name, config, console, engine)
               for name, bundle, engine in zip(names, bundles, engines, strict=True)]
    side = SideBySide(names, results, [_adaptation(bundle) for bundle in bundles])
    write_text(out_dir / "comparison.md", markdown(side))
    write_json(out_dir / "comparison.json", side.to_dict())
    return side
