"""Re-test the reference project's claim 3 ("the network looks at the lung opacities") with `pneumoscan audit`,
for the issue 9 default (four-member ensemble, commit 23a07a0) and the current default, on the patient-grouped
validation carve of the training split (745 films; the same carve both were validated on, never trained on).

    git archive 23a07a0 src/pneumoscan/weights/default | tar -x -C /tmp/issue9
    .venv/bin/python studies/audit/claim3.py --old /tmp/issue9/src/pneumoscan/weights/default \
        --new src/pneumoscan/weights/default --out studies/audit/claim3

Writes one audit folder per model (audit.json, report.html, figures) and claim3.md, the table the study README
quotes.
"""

import argparse
import json
from pathlib import Path

from rich.console import Console

from pneumoscan.atomic import write_text
from pneumoscan.config import AuditConfig, TrainConfig
from pneumoscan.models.bundle import load_bundle
from pneumoscan.pipeline.audit import run_audit
from pneumoscan.settings import resolve
from pneumoscan.training.prepare import prepare_data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", type=Path, required=True)
    parser.add_argument("--new", type=Path, required=True)
    parser.add_argument("--recipe", default="configs/default-model.toml")
    parser.add_argument("--out", type=Path, default=Path("studies/audit/claim3"))
    parser.add_argument("--attention-films", type=int, default=200)
    args = parser.parse_args()
    console = Console(stderr=True)
    args.out.mkdir(parents=True, exist_ok=True)
    prepared = prepare_data(resolve(TrainConfig, args.recipe), console)
    split_csv = args.out / "split.csv"  # file paths and labels of the carve (no images)
    write_text(split_csv, prepared.split_csv())
    rows = []
    for name, path in (("issue 9 default (23a07a0)", args.old), ("current default", args.new)):
        folder = args.out / ("old" if path == args.old else "new")
        result = run_audit(load_bundle(path), str(split_csv), folder,
                           AuditConfig(split="val", attention_films=args.attention_films), console)
        checks = {check.name: check for check in result.checks}
        rows.append(f"| {name} | **{result.verdict}** | " + " | ".join(
            f"{'n/a' if c.passed is None else 'pass' if c.passed else 'FAIL'}: {c.finding}" for c in checks.values())
            + " |")
        print(json.dumps({"model": name, "summary": result.summary_line()}), flush=True)
    header = ("| model | verdict | framing swaps | marker swap | subgroups | lung attention |\n"
              "|---|---|---|---|---|---|\n")
    write_text(args.out / "claim3.md", header + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
