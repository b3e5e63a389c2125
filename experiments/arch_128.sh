#!/usr/bin/env bash
# Issue 3 architecture table, budget runs: the MONAI backbones at 128 px, at most 6 epochs each
# (a full run of DenseNet-121 does not fit a session on 2 cores). Same split as every other run.
set -euo pipefail
DATA=${DATA:-../shared/data/chest_xray}
for arch in efficientnet_b0 densenet121; do
  out=runs/arch-128/$arch
  [ -f "$out/model.json" ] && continue
  .venv/bin/pneumoscan train --data "$DATA" --arch "$arch" --optimizer adam --image-size 128 --epochs 6 --out "$out"
done
