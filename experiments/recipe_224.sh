#!/usr/bin/env bash
# Issue 3 recipe study: compact at 224 px, standard vs shift augmentation, two seeds each.
# Same patient-grouped split (split seed 0) for all. Run from the repo root; ~7 min per run.
set -euo pipefail
DATA=${DATA:-../shared/data/chest_xray}
for augment in standard shift; do
  for seed in 0 1; do
    out=runs/recipe-224/$augment-s$seed
    [ -f "$out/model.json" ] && continue
    .venv/bin/pneumoscan train --data "$DATA" --arch compact --optimizer adam --image-size 224 --epochs 25 \
      --augment "$augment" --seed "$seed" --out "$out"
  done
done
