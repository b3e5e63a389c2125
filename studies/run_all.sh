#!/usr/bin/env bash
# Every study behind studies/README.md, in order, on the real training split (../shared/data/chest_xray)
# with patient-grouped validation. Run from the repo root; about 70 min on 2 cores. Rerunning resumes:
# finished runs are reused. PNEUMOSCAN (default .venv/bin/pneumoscan) may point at another install.
set -euo pipefail
PNEUMOSCAN=${PNEUMOSCAN:-.venv/bin/pneumoscan}

# Findings 1 and 2: augmentation and optimizer, reference CNN, 3 seeds per cell (12 runs).
$PNEUMOSCAN study --config configs/reference-claims.toml --vary optimizer=adam,sgd --vary augment=standard,none \
  --seeds 3 --out runs/studies/reference-claims

# Finding 4: synthetic pre-training, then real training from it or from scratch, all or 10 % of patients.
[ -f runs/studies/synthetic-pretrain/model.json ] || \
  $PNEUMOSCAN train --config configs/synthetic-pretrain.toml --out runs/studies/synthetic-pretrain
$PNEUMOSCAN study --config configs/synthetic-pretraining-study.toml \
  --vary weights=none,runs/studies/synthetic-pretrain/model.safetensors --vary train_fraction=1.0,0.1 \
  --seeds 3 --out runs/studies/synthetic-pretraining
