"""`report.html`: one self-contained page per evaluation (figures embedded, no network, no scripts).

A reader gets the data, every metric with its interval, the figures, the Grad-CAM cases, the
subgroups, the out-of-distribution summary, the monitoring view and the exact model manifest
on one page that can be mailed or archived as it is.
"""

import base64
import html
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumoscan.data.records import SkippedFiles
from pneumoscan.metrics import CALIBRATION_BINS, METRIC_NAMES
from pneumoscan.models.bundle import Manifest

if TYPE_CHECKING:
    from pneumoscan.evaluation.audit import AuditResult
    from pneumoscan.evaluation.results import EvaluationResult, OodSummary
    from pneumoscan.evaluation.subgroups import SubgroupResult
    from pneumoscan.metrics.framing import FramingRecord

SECTIONS = ("data", "metrics", "figures", "gradcam", "calibration", "subgroups", "framing", "audit", "ood",
            "monitoring", "config")
AUDIT_SECTIONS = ("audit", "framing", "config")
METRIC_LABELS = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "sensitivity": "Sensitivity",
                 "specificity": "Specificity", "ppv": "PPV (precision)", "npv": "NPV", "f1": "F1",
                 "roc_auc": "ROC AUC", "pr_auc": "PR AUC (average precision)", "brier": "Brier score (lower is better)",
                 "ece": "Expected calibration error (lower is better)"}

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ccc; padding: .3em .7em; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: .5em; vertical-align: top; } img { max-width: 100%; }
figcaption { font-size: .9em; color: #555; }
.note { background: #fff8e1; padding: .6em 1em; border-left: 4px solid #f0b400; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: .85em; }
"""


def _number(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _interval(ci: Sequence[float] | None) -> str:
    return "n/a" if ci is None else f"{ci[0]:.4f} – {ci[1]:.4f}"


def _image(path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{html.escape(c)}</td>' if i >= numeric_from else f"<td>{html.escape(c)}</td>"
                         for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{html.escape(title)}</h2>{body}</section>'


def render_report(result: "EvaluationResult", manifest: Manifest) -> str:
    """The page as a string; figures missing from `result.figures` are simply not shown."""
    data, point, ci, bootstrap = result.data, result.metrics.point, result.metrics.ci95, result.metrics.bootstrap
    counts = data.counts
    drawn = result.figures
    shown = lambda *keys: "".join(_image(drawn[k], caption) for k, caption in keys if k in drawn)  # noqa: E731
    parts = [
        _section("data", "Data", _table(
            ["source", "split", "images", "normal", "pneumonia", "patients"],
            [[data.source, data.split, str(counts.images), str(counts.normal), str(counts.pneumonia),
              str(counts.patients)]], numeric_from=2)
            + f"<p>Share of pneumonia: {counts.prevalence:.3f}.</p>" + _skipped_files(data.skipped)),
        _section("metrics", "Metrics with 95 % confidence intervals", _table(
            ["metric", "value", "95 % CI"],
            [[METRIC_LABELS[name], _number(point.value(name)), _interval(ci[name])] for name in METRIC_NAMES])
            + f"<p>Threshold {point.threshold:.4f} (stored in the model, chosen at training time, not on this "
              f"data). Intervals: {bootstrap.method}, {bootstrap.resamples} resamples, seed "
              f"{bootstrap.seed}.</p>"),
        _section("figures", "Figures", shown(("confusion_matrix", "Confusion matrix"), ("roc_curve", "ROC curve"),
                                             ("pr_curve", "Precision-recall curve"),
                                             ("threshold_curve", "Metrics against the threshold"),
                                             ("sample_predictions", "Sample predictions"),
                                             ("architecture", "Network architecture"))),
        _section("gradcam", "Grad-CAM: correct and wrong cases",
                 shown(("gradcam_grid", "Grad-CAM overlays (errors in red)"))
                 or "<p>No Grad-CAM grid for this evaluation.</p>"),
        _section("calibration", "Calibration", shown(("reliability", "Reliability diagram"))
                 + f"<p>Brier score {_number(point.brier)}, expected calibration error {_number(point.ece)} "
                   f"({CALIBRATION_BINS} equal-width bins, the bins of the diagram).</p>"),
        _section("subgroups", "Subgroups", _subgroup_table(result.subgroups)),
        _section("framing", "Framing swaps", _framing_summary(result.framing)),
        _section("audit", "Shortcut audit", audit_section(result.audit)),
        _section("ood", "Out-of-distribution guard", _ood_summary(result.ood)),
        _section("monitoring", "Deployment monitoring (simulated weeks)",
                 shown(("temporal_performance", "Per-week performance"),
                       ("monitoring", "Monitoring with drift score"))),
        _section("config", "Model manifest and evaluation settings",
                 f"<pre>{html.escape(json.dumps(manifest.to_dict(), indent=2, default=str))}</pre>"
                 f"<pre>{html.escape(json.dumps(asdict(result.config), indent=2, default=str))}</pre>"),
    ]
    title = f"pneumoscan evaluation: {manifest.arch} on {data.source} [{data.split}]"
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class=\"note\">Research and education only: not a medical device, "
            "not for diagnosis.</p>" + "".join(parts) + "</body></html>")


def audit_section(result: "AuditResult | None") -> str:
    """The audit's verdict, each check with its rule and finding, the subgroup tables and the before/after films."""
    if result is None:
        return "<p>No shortcut audit for this evaluation (<code>--no-audit</code>, or one class only).</p>"
    answer = {True: "pass", False: "FAIL", None: "not measurable"}
    rows = [[check.name, answer[check.passed], check.finding, check.rule] for check in result.checks]
    subgroups = "".join(f"<h3>By {html.escape(s.grouping)}</h3>" + _subgroup_table(s.groups) for s in result.subgroups)
    figures = "".join(_image(result.figures[key], caption) for key, caption in (
        ("audit_swaps", "The same films before and after a framing swap"),
        ("audit_attention", "Grad-CAM with the lung region it is measured against")) if key in result.figures)
    return (f"<p>Does the model read the lungs or the film around them? Verdict: <strong>{answer[result.passed]}"
            f"</strong> on {result.images} films at threshold {result.threshold:.4f}.</p>"
            + _table(["check", "answer", "finding", "rule"], rows, numeric_from=4) + figures + subgroups)


def render_audit_report(result: "AuditResult", manifest: Manifest) -> str:
    """The page `pneumoscan audit` writes: the audit, the framing-swap table and the model's manifest."""
    parts = [_section("audit", "Shortcut audit", audit_section(result)),
             _section("framing", "Framing swaps", _framing_summary(result.framing)),
             _section("config", "Model manifest",
                      f"<pre>{html.escape(json.dumps(manifest.to_dict(), indent=2, default=str))}</pre>")]
    title = f"pneumoscan shortcut audit: {manifest.arch} on {result.data.source} [{result.data.split}]"
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class=\"note\">Research and education only: not a medical device, "
            "not for diagnosis.</p>" + "".join(parts) + "</body></html>")


def _skipped_files(skipped: SkippedFiles | None) -> str:
    """The files of the split that could not be read: every number on the page is computed without them."""
    if skipped is None:
        return "<p>Files skipped as unreadable: not recorded.</p>"
    if not skipped.count:
        return "<p>Files skipped as unreadable: none (every file of the split was read).</p>"
    kinds = ", ".join(f"{kind} {n}" for kind, n in skipped.by_kind.items())
    listed = "" if len(skipped.files) == skipped.count else f"; the first {len(skipped.files)} are listed"
    return (f"<p><strong>Files skipped as unreadable: {skipped.count}</strong> ({html.escape(kinds)}), left out of "
            f"every number on this page{listed}:</p>"
            + _table(["file", "kind", "reason"], [[f.source, f.kind, f.reason] for f in skipped.files],
                     numeric_from=3))


def _subgroup_table(rows: Sequence["SubgroupResult"] | None) -> str:
    if not rows:
        return "<p>No subgroups: the records carry no pneumonia subtype and no --groups file was given.</p>"
    return _table(["group", "images", "pneumonia", "sensitivity (95 % CI)", "specificity (95 % CI)"], [
        [r.group, str(r.n_images), str(r.pneumonia),
         f"{_number(r.metrics.sensitivity)} ({_interval(r.ci95['sensitivity'])})",
         f"{_number(r.metrics.specificity)} ({_interval(r.ci95['specificity'])})"] for r in rows])


def _framing_summary(record: "FramingRecord | None") -> str:
    if record is None:
        return "<p>Not scored (both classes are needed, and <code>--no-framing</code> switches it off).</p>"
    rows = [[html.escape(swap.name), swap.measured, f"{swap.clean:.3f}", f"{swap.swapped:.3f}",
             f"{swap.drop:+.3f} {_interval(swap.drop_ci95)}", f"{swap.flipped:.3f}"] for swap in record.swaps]
    return (f"<p>Does the answer move when only the framing moves? Normal films zoomed in or given a large marker, "
            f"pneumonia films zoomed out onto black, scored at the model's threshold. Framing gap (films whose label "
            f"flips under any swap) <strong>{record.framing_gap:.3f}</strong> {_interval(record.framing_gap_ci95)}; "
            f"robust balanced accuracy {record.robust_balanced_accuracy:.3f} (as they are "
            f"{record.clean_balanced_accuracy:.3f}). Swap families training produced: "
            f"{html.escape(', '.join(record.seen_families) or 'none')}.</p>"
            + _table(["swap", "measured", "as they are", "swapped", "drop (95 % CI)", "flipped"], rows, 2))


def _ood_summary(ood: "OodSummary | None") -> str:
    if ood is None:
        return "<p>This model bundle carries no out-of-distribution guard.</p>"
    rows = [[kind, f"{rate:.3f}"] for kind, rate in ood.probe_detection.items()]
    rows.append(["all generated inputs", f"{ood.probe_detection_overall:.3f}"])
    return (f"<p>{ood.flagged} of {ood.n_images} evaluated images were flagged as not looking like the "
            f"training X-rays (score above {ood.settings.threshold:.3f}, set for {ood.settings.false_alarm_rate:.0%} "
            f"false alarms on the validation X-rays). Method: {html.escape(ood.settings.method)}.</p>"
            f"<p>Generated non-X-ray inputs ({ood.probes_per_kind} per kind, inverted and rotated ones made from "
            "the evaluated images) and the share the guard flags:</p>"
            + _table(["input", "flagged"], rows))
