"""How often a bundle's out-of-distribution guard flags validation films as they are and reframed.

    python studies/framing/guard_under_framing.py --model default [--model OTHER ...]
        [--data runs/default-model/split.csv]

A reframed paediatric film is in scope: the guard should flag it about as often as the film itself (its threshold
is set for 5 % false alarms on the validation films as they are).
"""

import argparse

import numpy as np

from pneumoscan.data.framing_swaps import zoom_in, zoom_out
from pneumoscan.data.loading import load_split
from pneumoscan.models.bundle import load_bundle

parser = argparse.ArgumentParser()
parser.add_argument("--model", action="append", default=[])
parser.add_argument("--data", default="runs/default-model/split.csv")
args = parser.parse_args()
for name in args.model or ["default"]:
    bundle = load_bundle(name)
    films = load_split(args.data, "val", bundle.preprocess.image_size)[0].images
    for label, images in (("as they are", films), ("zoomed out 0.75 onto black", zoom_out(films, 0.75)),
                          ("zoomed in 1.33", zoom_in(films, 1.33))):
        scores = np.asarray(bundle.ood.score(bundle.model, images, bundle.preprocess.normalize))
        print(f"{name}: {label}: {np.mean(scores > bundle.ood.threshold):.3f} flagged of {len(scores)}")
