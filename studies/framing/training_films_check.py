"""The framing-swap proxy of a bundle on films drawn from the training folder (issue 19's own check).

    python studies/framing/training_films_check.py --model default --per-class 250

Draws `per-class` films of each class at random (seed 0) from ../shared/data/chest_xray/train, scores them
as they are and under every framing swap, and prints the proxy. For the shipped default these are films it
trained on: the check shows the shortcut, it is not a measure of accuracy.
"""

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch

from pneumoscan.data.decode import decode_grayscale
from pneumoscan.evaluation.framing import score_framing
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.inference import predict_probabilities

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="default")
parser.add_argument("--data", default="../shared/data/chest_xray/train")
parser.add_argument("--per-class", type=int, default=250)
args = parser.parse_args()
bundle = load_bundle(args.model)
size = bundle.preprocess.image_size
random.seed(0)
files, labels = [], []
for label, name in enumerate(("NORMAL", "PNEUMONIA")):
    chosen = random.sample(sorted((Path(args.data) / name).iterdir()), args.per_class)
    files += chosen
    labels += [label] * len(chosen)
images = torch.from_numpy(np.stack([decode_grayscale(f, size) for f in files]))[:, None]
labels = np.array(labels)
probabilities = predict_probabilities(bundle, images)
record = score_framing(bundle.model, bundle.preprocess.normalize, images, labels, probabilities,
                       bundle.manifest.threshold)
print(json.dumps(record.summary(), indent=1))
for swap in record.swaps:
    print(f"{swap.name:14s} {swap.measured} {swap.clean:.3f} -> {swap.swapped:.3f}  AUC {swap.roc_auc}  "
          f"flipped {swap.flipped:.3f}")
