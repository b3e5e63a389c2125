"""`pneumoscan audit`: the shortcut audit of a bundle on a labelled folder, written as audit.json, report.html and
its figures (pneumoscan.evaluation.audit computes it).

The output folder is checked before anything is decoded; a previous audit's audit.json is removed before the
first file is written and the new one is written last, so a folder with an audit.json holds a finished audit.
"""

from pathlib import Path

from rich.console import Console

from pneumoscan.atomic import check_output_dir, discard, write_json, write_text
from pneumoscan.config import AuditConfig
from pneumoscan.data.loading import load_split
from pneumoscan.evaluation import figures
from pneumoscan.evaluation.audit import AuditResult, audit_films
from pneumoscan.evaluation.report_html import render_audit_report
from pneumoscan.models.bundle import Bundle
from pneumoscan.models.inference import predict_probabilities

AUDIT_FILE = "audit.json"


def run_audit(bundle: Bundle, data: str, out_dir: Path | str, config: AuditConfig | None = None,
              console: Console | None = None) -> AuditResult:
    config = config or AuditConfig()
    console = console or Console(stderr=True)
    out_dir = check_output_dir(Path(out_dir))
    image_set, summary = load_split(data, config.split, bundle.preprocess.image_size, strict=config.strict,
                                    cache=config.cache, console=console, stream=config.stream)
    probabilities = predict_probabilities(bundle, image_set.images)
    result = audit_films(bundle, image_set.images, list(image_set.records), probabilities, summary,
                         attention_limit=config.attention_films, resamples=config.bootstrap, seed=config.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (AUDIT_FILE, *figures.AUDIT_FIGURES):
        discard(out_dir / stale)
    result.figures = figures.audit_figures(result, out_dir)
    write_text(out_dir / "report.html", render_audit_report(result, bundle.manifest))
    write_json(out_dir / AUDIT_FILE, result.to_dict())  # last: marks a finished audit
    return result
