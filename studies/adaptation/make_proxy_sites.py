"""Two proxy sites for comparing adaptation methods without the test split (issue 20), from the patient-grouped
validation carve of configs/default-model.toml (the films the default model was validated on, never trained on):

- `val-62`: every validation normal and a seeded subset of its pneumonias, so 62 % are pneumonia (the official
  test split's share; training has 74 %): a prevalence shift alone.
- `val-62-shifted`: the same films, each reframed (zoomed in 1.0-1.4 or shrunk to 0.75-1.0 onto black, drawn per
  film) and with its exposure and contrast changed (gamma 1.25, contrast pulled 20 % towards the mean): a
  prevalence, framing and intensity shift together.

    .venv/bin/python studies/adaptation/make_proxy_sites.py --split studies/audit/claim3/split.csv --out /tmp/sites

Images are written outside the repository (never commit them); labels sit in the folder names, which `adapt`
never reads.
"""

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pneumoscan.data.framing_swaps import zoom_in, zoom_out

SHARE = 0.62


def shifted(film: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pixels = torch.from_numpy(film.copy())[None, None]
    pixels = zoom_in(pixels, float(rng.uniform(1.0, 1.4))) if rng.random() < 0.5 else zoom_out(
        pixels, float(rng.uniform(0.75, 1.0)))
    x = pixels[0, 0].numpy().astype(np.float64) / 255.0
    x = x ** 1.25
    x = x.mean() + (x - x.mean()) * 0.8
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", type=Path, required=True, help="a run's split.csv (rows with split=val are used)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = [r for r in csv.DictReader(args.split.open()) if r["split"] == "val"]
    normals = [r for r in rows if r["label"] == "NORMAL"]
    pneumonias = [r for r in rows if r["label"] == "PNEUMONIA"]
    rng = np.random.default_rng(args.seed)
    keep = round(len(normals) * SHARE / (1 - SHARE))
    chosen = normals + [pneumonias[i] for i in np.sort(rng.choice(len(pneumonias), keep, replace=False))]
    for row in chosen:
        film = np.asarray(Image.open(row["file"]).convert("L"))
        for site, image in (("val-62", film), ("val-62-shifted", shifted(film, rng))):
            target = args.out / site / row["label"] / (Path(row["file"]).stem + ".png")
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(target)
    print(f"{len(chosen)} films per site ({len(normals)} normal, {keep} pneumonia) in {args.out}")


if __name__ == "__main__":
    main()
