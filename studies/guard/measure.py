"""How often the shipped model's out-of-distribution guard flags in-scope films as they are and reframed, and
generated non-X-rays: the guard as shipped against guards refitted on its own training films with reframed
copies (issue 20). Validation films only (the patient-grouped carve of configs/default-model.toml).

    .venv/bin/python studies/guard/measure.py --out studies/guard/measure.json
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from pneumoscan.config import TrainConfig
from pneumoscan.data.framing_swaps import zoom_in, zoom_out
from pneumoscan.evaluation.ood_probes import probe_images
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.ood import _narrowed, stage_features
from pneumoscan.settings import resolve
from pneumoscan.training.prepare import prepare_data

VARIANTS = {"as they are": lambda x: x, "zoom in 1.15": lambda x: zoom_in(x, 1.15),
            "zoom in 1.33": lambda x: zoom_in(x, 1.33),
            "zoom in 1.5": lambda x: zoom_in(x, 1.5), "zoom out 0.85": lambda x: zoom_out(x, 0.85),
            "zoom out 0.75": lambda x: zoom_out(x, 0.75), "zoom out 0.75 grey": lambda x: zoom_out(x, 0.75, 128),
            "zoom out 0.6": lambda x: zoom_out(x, 0.6)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="src/pneumoscan/weights/default")
    parser.add_argument("--recipe", default="configs/default-model.toml")
    parser.add_argument("--out", type=Path, default=Path("studies/guard/measure.json"))
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    config = resolve(TrainConfig, args.recipe)
    data = prepare_data(config, Console(stderr=True))
    model, layers, normalize = _narrowed(bundle.model, bundle.ood.layers, bundle.preprocess.normalize)
    feats = lambda images: stage_features(model, layers, images, normalize)  # noqa: E731
    guard = bundle.ood
    val = data.val.images[:]
    rows = {}
    for name, transform in VARIANTS.items():
        scores = guard.score_features(feats(transform(val)))
        rows[name] = float(np.mean(scores > guard.threshold))
        print(f"{name:20s} flagged {rows[name]:.3f}", flush=True)
    probes = probe_images(val[:, 0].numpy(), per_kind=40, seed=0)
    for kind, images in probes.items():
        rows[f"probe: {kind}"] = float(np.mean(guard.score_features(feats(torch.from_numpy(images)[:, None]))
                                               > guard.threshold))
        print(f"probe {kind:20s} flagged {rows[f'probe: {kind}']:.3f}", flush=True)
    args.out.write_text(json.dumps({"model": args.model, "guard threshold": guard.threshold, "flagged": rows},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
