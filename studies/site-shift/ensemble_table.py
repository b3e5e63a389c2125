"""Ensembles against their members on the leave-series-out proxy.

    python studies/site-shift/ensemble_table.py runs/ensembles-intensity/*

Each argument is an ensemble bundle folder; its members are read from its manifest.
"""

import json
import sys
from pathlib import Path


def row(name: str, manifest: dict) -> str:
    validation = manifest["validation"]
    metrics, shift = validation["metrics"], validation["shift"] or {}
    auc = shift.get("roc_auc")
    return (f"| {name} | {metrics['accuracy']:.3f} | {metrics['roc_auc']:.4f} | "
            f"{shift.get('specificity_at_half', float('nan')):.3f} | {'n/a' if auc is None else f'{auc:.4f}'} |")


def main(folders: list[str]) -> None:
    print("| model | val accuracy (its threshold) | val ROC AUC | held-out specificity @0.5 | held-out AUC |")
    print("|---|---|---|---|---|")
    for folder in map(Path, folders):
        manifest = json.loads((folder / "model.json").read_text())
        print(row(f"**ensemble {folder.name}**", manifest))
        for member in manifest["arch_kwargs"]["members"]:
            source = Path(member["source"])
            print(row(f"member {source.parent.name}/{source.name}",
                      json.loads((source / "model.json").read_text())))


if __name__ == "__main__":
    main(sys.argv[1:])
