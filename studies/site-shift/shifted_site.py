"""Write a run's validation films, perturbed as if from another site, as a folder for `adapt` / `evaluate`.

    python studies/site-shift/shifted_site.py runs/default-model/split.csv --drift contrast:0.5 \\
        --drift exposure:0.4 --out runs/site-contrast

The films keep their class folders (NORMAL/, PNEUMONIA/) so `evaluate` can score them; `adapt`
ignores the folder names. Perturbations are pneumoscan.data.drift's, applied in order to the film
at its stored size, written as PNG. Validation films only: nothing the model trained on.
"""

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pneumoscan.data.drift import Perturbation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split", type=Path)
    parser.add_argument("--drift", action="append", default=[], type=Perturbation.parse)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with args.split.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == "val"]
    for index, row in enumerate(rows):
        source = Path(row["file"])
        gray = np.asarray(Image.open(source).convert("L"), dtype=np.float32) / 255.0
        pixels = torch.from_numpy(gray)[None, None]
        for perturbation in args.drift:
            pixels = perturbation(pixels, seed=index)
        target = args.out / row["label"] / f"{source.stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels[0, 0].numpy() * 255.0).round().astype(np.uint8)).save(target)
    print(f"{len(rows)} validation films, {' then '.join(map(str, args.drift)) or 'unperturbed'}, in {args.out}")


if __name__ == "__main__":
    main()
